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

The schema logged with the model declares both columns as strings, so through
``mlflow.pyfunc.load_model(...).predict`` and the REST server images travel as base64.
The Python object itself (``loaded.unwrap_python_model().predict(None, df)``) also accepts
raw bytes and numpy arrays (uint8 (H, W, 3) images, (H, W) masks with 1/255 = valid).
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
    """pyfunc wrapper: loads the checkpoint artifact, inpaints each (image, mask) row."""

    def __init__(self, device: str = "auto") -> None:
        self.device = device
        self.model = None

    def load_context(self, context) -> None:
        from aerial_inpainting.pconv.checkpoint import load_model
        from aerial_inpainting.pconv.devices import resolve_device

        device = resolve_device(self.device)
        self.model = load_model(context.artifacts[CHECKPOINT_ARTIFACT], map_location=device)

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
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


def log_pyfunc_model(
    checkpoint: str | Path | Any,
    name: str = "model",
    registered_model_name: str | None = None,
    device: str = "auto",
):
    """Log the model to the active MLflow run as a pyfunc model; returns MLflow's ModelInfo.

    ``checkpoint`` is a model file written by ``pconv.checkpoint.save_model``, a
    :class:`PConvUNet` (saved to a temporary file first), or ``"pretrained"``: the model
    shipped with the package (its file, checksum verified; ``MODEL_CARD.md``). The package's own code is bundled
    (``code_paths``), so the model loads where ``aerial_inpainting`` is not installed.
    Load it back with ``mlflow.pyfunc.load_model(info.model_uri)``.
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
            python_model=PConvInpaintingModel(device=device),
            artifacts={CHECKPOINT_ARTIFACT: str(path)},
            code_paths=[str(package_dir)],
            signature=model_signature(),
            pip_requirements=_pip_requirements(),
            registered_model_name=registered_model_name,
        )
