"""The trained U-Net as an MLflow pyfunc model, so ``mlflow models serve`` can inpaint.

Input: a pandas DataFrame, one row per image, with columns

* ``image``: the image as a base64-encoded image file (PNG, JPEG, TIFF; any size, grayscale
  and RGBA converted), and
* ``mask``: the mask as a base64-encoded PNG of the same size (white = keep, black = fill).

Output: a DataFrame with one column ``inpainted``: the results as base64-encoded PNGs (RGBA
when the image had an alpha channel).

Rows go through :func:`aerial_inpainting.inference.inpaint_image`, the code path of
``aerial-inpaint`` and the ``inpaint`` pipeline: EXIF orientation applied, transparent pixels
are holes, every hole pixel filled. The network's weights are a safetensors artifact read
without running code from it.

Optional inference parameters (``params=`` / the ``"params"`` key of a REST request):
``invert_mask`` (bool, False), ``threshold`` (int 1-255, 128: grey masks are binarized there,
with a warning), ``tile_size`` (int, 0 = automatic), ``overlap`` (int, 64).

The model is logged the MLflow 3 way (models from code): the logged code file is
:mod:`aerial_inpainting.mlflow_model_code`, which builds :class:`PConvInpaintingModel` and
hands it to ``mlflow.models.set_model``; nothing is pickled. The package's code travels with
the model (``code_paths``), with a signature and an input example (a 32 px image and mask).
The signature declares both columns as strings, so through
``mlflow.pyfunc.load_model(...).predict`` and the REST server images travel as base64.
The Python object itself (``loaded.unwrap_python_model().predict(None, df)``) also accepts
raw bytes and numpy arrays (uint8 (H, W, 3) images, (H, W) masks with 1/255 = valid).

This module is also a model "flavor" for kedro-mlflow's ``MlflowModelTrackingDataset``
(``flavor: aerial_inpainting.mlflow_model``): :func:`log_model` and :func:`load_model`, so
the catalog entry ``mlflow_model`` logs the trained model when the training node returns it.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

CHECKPOINT_ARTIFACT = "checkpoint"
MODEL_CODE_FILE = Path(__file__).with_name("mlflow_model_code.py")  # models from code
DEFAULT_PARAMS: dict[str, Any] = {
    "invert_mask": False,
    "threshold": 128,
    "tile_size": 0,
    "overlap": 64,
}


def encode_png(image: np.ndarray) -> str:
    """uint8 (H, W[, 3]) array -> base64 PNG string (what the model returns)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_image_bytes(value: Any, what: str) -> Any:
    """base64 string / bytes / numpy array -> PIL image or numpy array; ValueError if unreadable."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"{what}: not valid base64 ({exc})") from exc
    if not isinstance(value, bytes | bytearray):
        raise ValueError(f"{what}: expected base64 PNG text, bytes or an array, got {type(value)}")
    try:
        image = Image.open(io.BytesIO(value))
        image.load()
    except Image.DecompressionBombError as exc:
        from aerial_inpainting.imaging.io import too_large_reason

        raise ValueError(f"{what}: {too_large_reason(exc)}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"{what}: not a readable image ({exc})") from exc
    return image


class PConvInpaintingModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: loads the checkpoint artifact, inpaints each (image, mask) row.

    ``device`` (``auto``: CUDA, then MPS, then CPU) comes from the logged model's
    ``model_config`` when MLflow loads it, else from the constructor.
    """

    def __init__(self, device: str = "auto") -> None:
        self.device = device
        self.model = None

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from aerial_inpainting.pconv.checkpoint import load_model
        from aerial_inpainting.pconv.devices import resolve_device

        self.device = str((context.model_config or {}).get("device", self.device))
        device = resolve_device(self.device)
        self.model = load_model(context.artifacts[CHECKPOINT_ARTIFACT], map_location=device)

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """Inpaint every row of ``model_input`` (columns ``image``, ``mask``)."""
        from aerial_inpainting.inference import inpaint_image
        from aerial_inpainting.pconv.devices import resolve_device

        if self.model is None:  # used without load_context (unwrapped, unit tests)
            raise RuntimeError("model not loaded: load it with mlflow.pyfunc.load_model")
        settings = {**DEFAULT_PARAMS, **(params or {})}
        frame = pd.DataFrame(model_input)
        missing = {"image", "mask"} - set(frame.columns)
        if missing:
            raise ValueError(
                f"input must have columns 'image' and 'mask'; missing {sorted(missing)}"
            )
        tile = int(settings["tile_size"] or 0) or None
        device = resolve_device(self.device)
        results = []
        for row, (image, mask) in enumerate(zip(frame["image"], frame["mask"], strict=True)):
            result = inpaint_image(
                self.model,
                decode_image_bytes(image, f"row {row} image"),
                decode_image_bytes(mask, f"row {row} mask"),
                device=device,
                tile_size=tile,
                overlap=int(settings["overlap"]),
                threshold=settings["threshold"],
                invert_mask=bool(settings["invert_mask"]),
                name=f"row {row}",
            )
            results.append(encode_png(result))
        return pd.DataFrame({"inpainted": results})


def model_signature():
    """Two base64-string columns in, one out; the optional parameters with their defaults."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "image"), ColSpec("string", "mask")]),
        outputs=Schema([ColSpec("string", "inpainted")]),
        params=ParamSchema(
            [
                ParamSpec("invert_mask", "boolean", False),
                ParamSpec("threshold", "long", 128),
                ParamSpec("tile_size", "long", 0),
                ParamSpec("overlap", "long", 64),
            ]
        ),
    )


def _pip_requirements() -> list[str]:
    import PIL
    import safetensors
    import torch

    return [
        f"mlflow=={mlflow.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
        f"numpy=={np.__version__}",
        f"pandas=={pd.__version__}",
        f"pillow=={PIL.__version__}",
        f"safetensors=={safetensors.__version__}",
        "tqdm",
    ]


def input_example() -> pd.DataFrame:
    """One 32x32 row (a smooth gradient image, a square hole in its mask), base64 PNGs: what
    MLflow stores next to the signature and replays to check that the logged model serves."""
    ramp = np.linspace(0, 255, 32, dtype=np.float64)
    image = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 128.0), axis=-1)
    mask = np.full((32, 32), 255, dtype=np.uint8)
    mask[8:20, 10:24] = 0
    return pd.DataFrame({"image": [encode_png(image.astype(np.uint8))], "mask": [encode_png(mask)]})


def log_pyfunc_model(
    checkpoint: str | Path | Any,
    name: str = "model",
    registered_model_name: str | None = None,
    device: str = "auto",
):
    """Log the model to the active MLflow run as a pyfunc model; returns MLflow's ModelInfo.

    ``checkpoint`` is a model file written by ``pconv.checkpoint.save_model``, a
    :class:`PConvUNet` (saved to a temporary file first), or ``"pretrained"``: the model
    shipped with the package (its file, checksum verified; ``MODEL_CARD.md``). Logged from
    code (:mod:`aerial_inpainting.mlflow_model_code`), with the package's own code bundled
    (``code_paths``), so the model loads where ``aerial_inpainting`` is not installed.
    Load it back with ``mlflow.pyfunc.load_model(info.model_uri)``. Raises
    FileNotFoundError for a missing model file.
    """
    import aerial_inpainting
    from aerial_inpainting.pretrained_model import is_pretrained, pretrained_model_file

    if is_pretrained(checkpoint):
        checkpoint = pretrained_model_file()
    with tempfile.TemporaryDirectory(prefix="pconv-pyfunc-") as tmp:
        if isinstance(checkpoint, str | Path):
            path = Path(checkpoint)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: model file not found")
        else:
            from aerial_inpainting.pconv.checkpoint import save_model

            path = save_model(
                Path(tmp) / "pconv_unet.safetensors", checkpoint, getattr(checkpoint, "extra", {})
            )
        if mlflow.active_run() is None:
            logger.warning("No active MLflow run: mlflow will start one to log the model")
        # The package's code travels with the model (without bytecode caches, and without
        # the shipped pretrained model: the weights are the model's own artifact).
        package_dir = Path(tmp) / "code" / "aerial_inpainting"
        shutil.copytree(
            Path(aerial_inpainting.__file__).parent,
            package_dir,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "pretrained_models"),
        )
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(MODEL_CODE_FILE),
            artifacts={CHECKPOINT_ARTIFACT: str(path)},
            model_config={"device": device},
            code_paths=[str(package_dir)],
            signature=model_signature(),
            input_example=input_example(),
            pip_requirements=_pip_requirements(),
            registered_model_name=registered_model_name,
        )


# ------------------------------------------------------------------ kedro-mlflow flavor
def log_model(model: Any, name: str = "model", **kwargs: Any):
    """``MlflowModelTrackingDataset`` (``flavor: aerial_inpainting.mlflow_model``) saves
    with this: :func:`log_pyfunc_model` of the node's :class:`PConvUNet` into the active run;
    ``kwargs`` are the catalog entry's other ``save_args`` (``device``,
    ``registered_model_name``)."""
    return log_pyfunc_model(model, name=name, **kwargs)


def load_model(model_uri: str, **kwargs: Any):
    """``MlflowModelTrackingDataset`` loads with this: the pyfunc model at ``model_uri``."""
    return mlflow.pyfunc.load_model(model_uri, **kwargs)
