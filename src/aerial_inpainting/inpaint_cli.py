"""``aerial-inpaint``: fill the holes of one image, or of a whole folder, from the shell.

Exit status: 0 done; 1 bad input or no usable model (message on stderr, no traceback);
2 bad command line; 3 the mask has no hole, so OUT is an unchanged copy of IMAGE.
Folder mode (``--input-dir``): 0 when no pair failed, 1 when any did (each is listed in the
CSV report with its reason; the others are still processed).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NO_HOLE = 0, 1, 2, 3
# Files picked up in --input-dir / --mask-dir (hidden files are ignored).
INPUT_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})
REPORT_NAME = "inpaint_report.csv"
REPORT_COLUMNS = ("file", "mask", "output", "status", "reason", "hole_ratio", "seconds")
MODEL_DATASET_PATH = Path("data/06_models/pconv_unet.safetensors")
LEGACY_MODEL_DATASET_PATH = Path("data/06_models/pconv_unet.pt")
# Output formats that keep every pixel exactly (WEBP is written in its lossless mode).
LOSSLESS_SUFFIXES = frozenset({".png", ".tif", ".tiff", ".bmp", ".webp"})
LOSSY_SUFFIXES = {
    ".jpg": "JPEG re-compresses every pixel",
    ".jpeg": "JPEG re-compresses every pixel",
    ".gif": "GIF reduces the image to 256 colours",
}

_DESCRIPTION = """\
Fill the holes of an aerial photograph with a trained partial-convolution U-Net.

MASK is an image of the same size as IMAGE: white = keep the pixel, black = hole to
fill (--invert-mask for the opposite, the convention of LaMa, Stable Diffusion UIs and
SAM exports). A mask with grey values is refused unless --threshold is given. Both are
read upright (EXIF orientation applied, as photo viewers show them). Transparent pixels
are holes, in the mask and in the image; the image's alpha is kept in OUT (filled pixels
become opaque). Any image size works; large images are processed in tiles, and every
hole pixel gets a prediction, however far from the hole's edge. Valid pixels of OUT are
exactly those of IMAGE: OUT must be a lossless format (PNG, TIFF, BMP, WEBP written
lossless); JPEG and GIF are refused unless --allow-lossy is given. A greyscale IMAGE (L, or
LA with alpha) gives a greyscale OUT (the fill is the luma of the network's prediction).
OUT keeps IMAGE's EXIF (GPS, camera; Orientation set to 1), XMP and ICC profile.
OUT may not be IMAGE or MASK (nor a link to them); an existing OUT is replaced only once
the new file is complete.

GeoTIFFs (with the optional extra: pip install -e ".[geo]") are read and written window by
window, keeping CRS, geotransform, GCPs, RPCs, nodata, bands, tags, overviews and a COG
layout; images with a world file (.tfw, .pgw, .jgw, .wld) take this path too and the result
gets one. Nodata pixels (and alpha or mask bands) are holes, so MASK may be left out; a MASK
given adds its holes to them (a georeferenced MASK must be on the image's grid). Nodata
connected to the raster's border (a tile's collar) stays nodata unless --fill-nodata all. Only 8-bit
rasters are accepted; bands beyond RGB (+ alpha) are passed through untouched. Images above
Pillow's limit, once --max-image-pixels lifts it, take the same windowed path."""

_EPILOG = """\
model: --model takes a model file written by the training pipeline
(.../pconv_unet.safetensors), a directory of versions of it, a logged MLflow model
directory, an MLflow URI (runs:/<run_id>/model, models:/<name>/<version>), looked up
in the project's MLflow store (or MLFLOW_TRACKING_URI), or `pretrained`: the model
shipped with the package (trained on SkyView aerial photographs; MODEL_CARD.md). Without
--model, the latest version under data/06_models/pconv_unet.safetensors/ of the Kedro
project containing the current directory (or --project-dir) is used when its recorded
test score is not below the pretrained model's (PSNR; `kedro run` records it), else the
pretrained model (stderr says which and why). Model files are read without running any
code from them; old *.pt files: python -m aerial_inpainting.convert_model FILE.

folders: aerial-inpaint --input-dir DIR --mask-dir DIR --output-dir DIR inpaints every
image of DIR (not its subfolders) with the mask of the same file stem (a.jpg <-> a.png).
Results keep the input's name (JPEG inputs become .png); an existing result is left alone
(status "exists") unless --overwrite is given. A pair that cannot be processed is reported
with its reason and skipped. A CSV report (file, mask, output, status, reason, hole_ratio,
seconds) goes to --report (default OUTPUT_DIR/inpaint_report.csv, replaced on each run).

exit status: 0 done, 1 bad input or no usable model (folders: any pair failed),
2 bad command line, 3 the mask has no hole (OUT is a copy of IMAGE)."""


class CliError(Exception):
    """A problem to report to the user as one line on stderr (no traceback)."""


def build_parser() -> argparse.ArgumentParser:
    """The command line (also rendered by ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="aerial-inpaint",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_file_arguments(parser)
    _add_folder_arguments(parser)
    _add_model_arguments(parser)
    _add_raster_arguments(parser)
    parser.add_argument("-q", "--quiet", action="store_true", help="only print errors")
    return parser


def _add_file_arguments(parser: argparse.ArgumentParser) -> None:
    """IMAGE MASK -o OUT: one file pair."""
    parser.add_argument(
        "image", metavar="IMAGE", nargs="?", help="image to inpaint (PNG, JPEG, TIFF, ...)"
    )
    parser.add_argument(
        "mask", metavar="MASK", nargs="?", help="mask image: white = keep, black = fill"
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="where to write the result (PNG, TIFF, BMP or lossless WEBP; PNG without suffix)",
    )


def _add_folder_arguments(parser: argparse.ArgumentParser) -> None:
    """--input-dir, --mask-dir, --output-dir: whole folders."""
    folders = parser.add_argument_group("whole folders (instead of IMAGE MASK -o OUT)")
    folders.add_argument("--input-dir", metavar="DIR", help="inpaint every image in DIR")
    folders.add_argument(
        "--mask-dir", metavar="DIR", help="masks, matched to the images by file stem"
    )
    folders.add_argument("--output-dir", metavar="DIR", help="where the results go")
    folders.add_argument(
        "--overwrite", action="store_true", help="replace results that already exist"
    )
    folders.add_argument(
        "--report",
        metavar="CSV",
        help=f"CSV report of the run (default OUTPUT_DIR/{REPORT_NAME})",
    )


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model, the device, how masks are read and how images are tiled."""
    parser.add_argument(
        "--model",
        metavar="PATH-or-URI",
        help="model file, folder, MLflow URI, or `pretrained` (the model shipped with the "
        "package); default: the project's latest trained model when its recorded test score "
        "is not below the pretrained one's, else the pretrained one",
    )
    parser.add_argument(
        "--invert-mask", action="store_true", help="the mask is white = fill, black = keep"
    )
    parser.add_argument(
        "--device", default="auto", help="torch device: auto (default), cpu, cuda, cuda:1, mps"
    )
    parser.add_argument(
        "--backend",
        choices=("torch", "onnx"),
        default="torch",
        help="run the network with PyTorch (default) or onnxruntime on the CPU (extra `onnx`; "
        "the model is exported once and cached)",
    )
    parser.add_argument(
        "--threshold",
        type=_gray_level,
        default=None,
        metavar="0-255",
        help="binarize a grey mask: valid where value >= threshold (default: refuse grey masks)",
    )
    parser.add_argument(
        "--tile-size",
        type=_positive_int,
        default=None,
        help="largest side of one network call, in pixels (default: --max-size)",
    )
    parser.add_argument(
        "--max-size",
        type=_positive_int,
        default=1024,
        help="the network runs on crops around the holes of at most this side (default 1024)",
    )
    parser.add_argument(
        "--overlap",
        type=_non_negative_int,
        default=64,
        help="tile overlap in pixels for models of unknown receptive field (default 64; the "
        "project's networks take their receptive radius as context instead)",
    )
    parser.add_argument(
        "--project-dir", default=None, help="Kedro project to take the latest model from"
    )
    parser.add_argument(
        "--allow-lossy",
        action="store_true",
        help="allow a lossy OUT format (JPEG, GIF): every pixel, valid ones too, then changes",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="read images of up to N pixels (0 = no limit; default: Pillow's "
        "decompression-bomb limit of about 179 million)",
    )


def _add_raster_arguments(parser: argparse.ArgumentParser) -> None:
    """GeoTIFFs and very large rasters, read window by window."""
    geo = parser.add_argument_group(
        'GeoTIFFs and very large rasters (optional extra: pip install -e ".[geo]")'
    )
    geo.add_argument(
        "--window-size",
        type=_positive_int,
        default=2048,
        metavar="N",
        help="read GeoTIFFs in windows of at most N x N pixels (default 2048); memory "
        "depends on this, not on the raster size",
    )
    geo.add_argument(
        "--window-halo",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="context read around each window; half of it is blended with the neighbouring "
        "windows (default: twice the network's receptive radius, at most a quarter of "
        "--window-size; 224 for the CPU network)",
    )
    geo.add_argument(
        "--fill-nodata",
        choices=("inside", "all"),
        default="inside",
        help="inside (default): fill nodata gaps inside the data, leave nodata connected to "
        "the raster border (a tile's collar) as nodata; all: fill the collar too",
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _gray_level(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 255:
        raise argparse.ArgumentTypeError(f"must be between 1 and 255, got {text}")
    return value


# ------------------------------------------------------------------ files
def read_picture(path: str | Path, what: str = "image"):
    """Open and decode an image file (a PIL image, orientation not yet applied), or CliError."""
    from aerial_inpainting.imaging.io import ImageReadError, open_image

    path = Path(path)
    if not path.is_file():
        raise CliError(f"{what} {path}: file not found")
    try:
        return open_image(path)
    except ImageReadError as exc:
        raise CliError(f"{what} {exc}") from exc


def read_image(path: str | Path, what: str = "image") -> np.ndarray:
    """Read an image file upright as uint8 (H, W, 3) RGB (alpha dropped), or raise CliError."""
    from aerial_inpainting.inference import InpaintingInputError, load_image_input

    try:
        return load_image_input(read_picture(path, what), name=f"{what} {path}")[0]
    except InpaintingInputError as exc:
        raise CliError(str(exc)) from exc


def check_output_format(path: str | Path, allow_lossy: bool) -> None:
    """Refuse an OUT whose format would change kept pixels, unless ``allow_lossy``."""
    suffix = Path(path).suffix.lower()
    if suffix in LOSSY_SUFFIXES and not allow_lossy:
        raise CliError(
            f"output {path}: {suffix} is a lossy format ({LOSSY_SUFFIXES[suffix]}), so the "
            "valid pixels would not stay those of IMAGE; write .png (or .tif, .bmp, .webp), "
            "or pass --allow-lossy to accept the change"
        )


def write_image(path: str | Path, image: np.ndarray, metadata=None) -> None:
    """Write uint8 ``image`` to ``path`` atomically (format from the suffix; PNG without one).

    ``image``: (H, W) grey, (H, W, 2) grey + alpha, (H, W, 3) RGB or (H, W, 4) RGBA, written
    in that mode where the format has it (BMP has no grey + alpha: RGBA then; JPEG has no
    alpha: dropped, only with --allow-lossy). WEBP is written in its lossless mode (colour of
    transparent pixels kept too). The file is written next to ``path`` under a temporary name
    and then replaces it (:func:`aerial_inpainting.output_files.atomic_output`): a failed
    write raises CliError ("cannot write") and leaves an existing ``path`` as it was.
    ``metadata``: the input's photo metadata
    (:func:`aerial_inpainting.imaging.io.read_photo_metadata`: EXIF with Orientation 1, XMP,
    ICC profile), written where the format holds it.
    """
    from PIL import Image

    from aerial_inpainting.output_files import atomic_output

    path = Path(path)
    suffix = path.suffix.lower()
    fmt = Image.registered_extensions().get(suffix) if suffix else "PNG"
    if fmt is None:
        raise CliError(f"output {path}: unknown image format {suffix!r} (use .png, .tif, ...)")
    from aerial_inpainting.imaging.io import metadata_save_options

    options = {"lossless": True, "exact": True} if fmt == "WEBP" else {}
    picture = Image.fromarray(np.ascontiguousarray(image))
    options.update(metadata_save_options(metadata, fmt, picture.size))
    if fmt == "JPEG" and picture.mode in ("RGBA", "LA"):
        picture = picture.convert(picture.mode[0])  # JPEG has no alpha (only with --allow-lossy)
    elif fmt == "BMP" and picture.mode == "LA":
        picture = picture.convert("RGBA")
    try:
        with atomic_output(path) as tmp:
            picture.save(tmp, format=fmt, **options)
    except Exception as exc:  # OSError (disk full, permissions), Pillow's encoder errors, ...
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise CliError(
            f"output {path}: cannot write ({reason}); nothing was written, an existing file "
            "is left as it was"
        ) from exc


def check_not_an_input(output: Path, inputs: dict[str, Path | None]) -> None:
    """Refuse an OUT that is one of the inputs (``{"image": path, "mask": path}``).

    Paths are compared as files (:func:`aerial_inpainting.output_files.same_file`: symlinks,
    hard links and relative paths resolved), before anything is read or written. Raises
    CliError naming both paths. An OUT that is an existing folder is refused too.
    """
    from aerial_inpainting.output_files import same_file

    for what, path in inputs.items():
        if path is not None and same_file(output, path):
            raise CliError(
                f"output {output} is the {what} file {path}: refusing to write over an input "
                "(the result would replace it); choose another OUT"
            )
    if output.is_dir():
        raise CliError(f"output {output}: is a folder; OUT must be a file name")


# ------------------------------------------------------------------ model lookup
@dataclass(frozen=True)
class ModelChoice:
    """The model ``aerial-inpaint`` will use: its file, a line for stderr, and whether it is
    the pretrained model shipped with the package (loaded with its checksum verified)."""

    path: Path
    label: str
    pretrained: bool = False


def choose_model(model: str | None, project_dir: str | Path | None = None) -> ModelChoice:
    """``--model`` (or its absence) -> the model to use, or CliError.

    ``pretrained`` selects the shipped model. Without ``--model``: the latest trained
    version of the Kedro project (``project_dir`` or the one containing the working
    directory) when its recorded test score is not below the shipped model's
    (:mod:`aerial_inpainting.model_selection`), else the shipped model; the label says
    which and why.
    """
    from aerial_inpainting.pretrained_model import is_pretrained

    if is_pretrained(model):
        return _pretrained_choice("--model pretrained")
    if model is not None:
        path = resolve_model_path(model, project_dir)
        return ModelChoice(path, f"model: {path}")
    root = Path(project_dir) if project_dir else find_project_root()
    if root is None:
        return _pretrained_choice("not inside a Kedro project and no --model given")
    dataset = Path(root) / MODEL_DATASET_PATH
    found = latest_model_version(dataset)
    if found is not None:
        use_project, reason = _project_model_verdict(found, Path(root))
        if use_project:
            return ModelChoice(
                found, f"model: latest trained model of the project, {found} [{reason}]"
            )
        return _pretrained_choice(f"not the project's latest model {found}: {reason}")
    legacy = latest_model_version(Path(root) / LEGACY_MODEL_DATASET_PATH)
    hint = (
        f"; an old-format model exists ({legacy}): convert it with "
        f"`python -m aerial_inpainting.convert_model {legacy}` and pass --model"
        if legacy is not None
        else ""
    )
    return _pretrained_choice(f"no trained model in {dataset}{hint}")


def _project_model_verdict(path: Path, root: Path) -> tuple[bool, str]:
    """Whether the project's latest model (``path``) beats the shipped one on the project's
    recorded test scores, and why (:mod:`aerial_inpainting.model_selection`)."""
    from aerial_inpainting.model_selection import MODEL_SCORES_PATH, read_records, select_latest
    from aerial_inpainting.pconv.checkpoint import load_model
    from aerial_inpainting.pretrained_model import PretrainedModelError

    try:
        model = load_model(path, map_location="cpu")
    except Exception as exc:  # a bad file: the shipped model, and the line says why
        return False, f"it cannot be loaded ({exc})"
    try:
        verdict = select_latest(model, read_records(root / MODEL_SCORES_PATH))
    except PretrainedModelError as exc:  # no shipped model to compare with: the project's
        return True, f"no shipped model to compare with ({exc})"
    return verdict.use_project, verdict.reason


def _pretrained_choice(reason: str) -> ModelChoice:
    from aerial_inpainting.pretrained_model import (
        PretrainedModelError,
        describe_pretrained,
        pretrained_model_file,
    )

    try:
        path = pretrained_model_file()
        label = describe_pretrained()
    except PretrainedModelError as exc:
        raise CliError(str(exc)) from exc
    return ModelChoice(path, f"model: {label} [{reason}]", pretrained=True)


def find_project_root(start: str | Path | None = None) -> Path | None:
    """The Kedro project (a folder with a pyproject.toml declaring [tool.kedro]) containing ``start``."""
    from aerial_inpainting.project_paths import find_project

    return find_project(start)


def latest_model_version(dataset_path: str | Path) -> Path | None:
    """Newest ``<dataset_path>/<version>/<name>`` of a Kedro versioned dataset, or None.

    Kedro version names are UTC timestamps, so the lexicographic maximum is the newest.
    """
    dataset_path = Path(dataset_path)
    if not dataset_path.is_dir():
        return dataset_path if dataset_path.is_file() else None
    for version in sorted((p for p in dataset_path.iterdir() if p.is_dir()), reverse=True):
        candidate = version / dataset_path.name
        if candidate.is_file():
            return candidate
    return None


def _checkpoint_in_mlflow_model(directory: Path) -> Path | None:
    """The model file inside a logged pyfunc model directory (``artifacts/*.safetensors``;
    ``*.pt`` of older runs, which the loader then reads without running code or refuses)."""
    for pattern in ("*.safetensors", "*.pt"):
        found = sorted(directory.glob(f"artifacts/**/{pattern}")) or sorted(
            directory.rglob(pattern)
        )
        if found:
            return found[0]
    return None


def _model_in_directory(directory: Path) -> Path | None:
    """A logged MLflow model, a folder holding the model file, or a versioned-dataset folder."""
    if (directory / "MLmodel").is_file():
        return _checkpoint_in_mlflow_model(directory)
    for pattern in ("*.safetensors", "*.pt"):
        direct = sorted(p for p in directory.glob(pattern) if p.is_file())
        if len(direct) == 1:
            return direct[0]
    return latest_model_version(directory)


def resolve_model_path(model: str | None, project_dir: str | Path | None = None) -> Path:
    """Turn ``--model`` (or its absence) into a local model file, or raise CliError."""
    if model is None:
        root = Path(project_dir) if project_dir else find_project_root()
        if root is None:
            raise CliError(
                "no trained model: not inside a Kedro project and no --model given; "
                "pass --model PATH-or-URI or run from the project directory"
            )
        dataset = Path(root) / MODEL_DATASET_PATH
        found = latest_model_version(dataset)
        if found is None:
            legacy = latest_model_version(Path(root) / LEGACY_MODEL_DATASET_PATH)
            hint = (
                f" (an old-format model exists: {legacy}; convert it with "
                f"`python -m aerial_inpainting.convert_model {legacy}` and pass --model)"
                if legacy is not None
                else ""
            )
            raise CliError(
                f"no trained model found in {dataset}; train one with `kedro run` "
                f"or pass --model PATH-or-URI{hint}"
            )
        return found
    local = Path(model)
    if local.exists():
        if local.is_file():
            return local
        found = _model_in_directory(local)
        if found is None:
            raise CliError(f"model {local}: no model file found in this directory")
        return found
    if "://" in model or model.startswith(("runs:/", "models:/")):
        return _download_mlflow_model(model, project_dir)
    raise CliError(f"model {model}: no such file or directory (nor an MLflow URI)")


def mlflow_tracking_uri(project_dir: str | Path | None = None) -> str:
    """Where ``runs:/``/``models:/`` URIs are looked up, without creating any store.

    A tracking URI set explicitly (``MLFLOW_TRACKING_URI``, or ``mlflow.set_tracking_uri``
    in this process) wins; else the one the project's ``conf/`` declares (SQLite file under
    the project root), for the project of ``project_dir`` or of the working directory. A
    SQLite store file that does not exist is an error (MLflow would create an empty one).
    """
    from mlflow.tracking._tracking_service.utils import is_tracking_uri_set

    from aerial_inpainting.project_paths import project_tracking_uri

    if is_tracking_uri_set():
        import mlflow

        return mlflow.get_tracking_uri()
    root = Path(project_dir) if project_dir else find_project_root()
    if root is None:
        raise CliError(
            "an MLflow URI needs a tracking store: run inside the Kedro project, pass "
            "--project-dir, or set MLFLOW_TRACKING_URI"
        )
    try:
        uri = project_tracking_uri(root)
    except Exception as exc:  # a broken conf/ of the project
        raise CliError(f"project {root}: cannot read its MLflow configuration ({exc})") from exc
    if uri is None:
        raise CliError(f"project {root}: conf/ declares no MLflow tracking URI")
    if uri.startswith("sqlite:///"):
        store = Path(uri[len("sqlite:///") :])
        if not store.is_file():
            raise CliError(
                f"no MLflow store at {store} (project {root}): train a model with `kedro run` "
                "first, or set MLFLOW_TRACKING_URI"
            )
    return uri


def _download_mlflow_model(uri: str, project_dir: str | Path | None = None) -> Path:
    """Fetch an MLflow artifact (a model file or a logged pyfunc model) to a temp folder."""
    tracking_uri = mlflow_tracking_uri(project_dir)
    try:
        import mlflow

        target = Path(tempfile.mkdtemp(prefix="aerial-inpaint-"))
        with _mlflow_tracking_uri(mlflow, tracking_uri):
            local = Path(
                mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target))
            )
    except Exception as exc:  # MLflow raises many exception types for bad URIs/servers
        raise CliError(f"model {uri}: cannot download from MLflow ({exc})") from exc
    if local.is_file():
        return local
    found = _model_in_directory(local)
    if found is None:
        raise CliError(f"model {uri}: no model file (*.safetensors) in the downloaded artifacts")
    return found


class _mlflow_tracking_uri:
    """Use ``uri`` as MLflow's tracking URI inside the block, then restore the previous one."""

    def __init__(self, mlflow, uri: str) -> None:
        self.mlflow, self.uri = mlflow, uri

    def __enter__(self) -> None:
        from mlflow.tracking._tracking_service import utils

        self.previous = utils._tracking_uri
        self.mlflow.set_tracking_uri(self.uri)

    def __exit__(self, *exc) -> None:
        from mlflow.tracking._tracking_service import utils

        if self.previous is None:
            utils._tracking_uri = None
        else:
            self.mlflow.set_tracking_uri(self.previous)


def load_trained_model(path: Path, pretrained: bool = False):
    """Load a model file, or raise CliError (missing, corrupt, not a model, or declaring a
    network that is absurd or does not fit its stored tensors): one line naming the file.

    ``pretrained``: ``path`` is the shipped model, loaded by
    :func:`aerial_inpainting.pretrained_model.load_pretrained` (checksum verified).
    """
    from aerial_inpainting.pconv.checkpoint import UnsafeModelFileError, load_model

    if pretrained:
        from aerial_inpainting.pretrained_model import PretrainedModelError, load_pretrained

        try:
            return load_pretrained(path.stem, directory=path.parent)
        except PretrainedModelError as exc:
            raise CliError(str(exc)) from exc

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", FutureWarning)
            model = load_model(path, map_location="cpu")
    except UnsafeModelFileError as exc:
        raise CliError(_one_line(str(exc))) from exc
    except Exception as exc:  # any failure (MemoryError included) is one line naming the file
        reason = _one_line(str(exc)) or type(exc).__name__
        reason = reason.removeprefix(f"{path}: ")  # the loader's messages name the file too
        raise CliError(f"model {path}: cannot be loaded: {reason}") from exc
    for warning in caught:
        warnings.warn(str(warning.message), FutureWarning, stacklevel=2)
    return model


def _with_backend(model, backend: str):
    """``model`` run by ``backend`` (:func:`aerial_inpainting.onnx_backend.with_backend`),
    or CliError (extra missing, export failed)."""
    try:
        from aerial_inpainting.onnx_backend import with_backend
        from aerial_inpainting.onnx_export import OnnxDependencyError, OnnxExportError
    except ImportError as exc:  # pragma: no cover - the modules ship with the package
        raise CliError(f"--backend {backend}: {exc}") from exc
    try:
        return with_backend(model, backend)
    except (OnnxDependencyError, OnnxExportError) as exc:
        raise CliError(f"--backend {backend}: {_one_line(str(exc))}") from exc


# ------------------------------------------------------------------ main
@dataclass
class PairOutcome:
    """What happened to one image/mask pair: status ``inpainted`` or ``unchanged``."""

    status: str
    hole_ratio: float
    notes: list[str]
    width: int
    height: int


class ModelSource:
    """The model, resolved and loaded once, on first use (inputs are checked before)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._model = None
        self.choice: ModelChoice | None = None
        self.path: Path | None = None

    def resolve(self) -> Path:
        """The model's path (``--model``, else the project's latest, else the pretrained)."""
        if self.choice is None:
            self.choice = choose_model(self.args.model, self.args.project_dir)
            self.path = self.choice.path
        return self.choice.path

    def __call__(self):
        if self._model is None:
            path = self.resolve()
            self._model = load_trained_model(path, pretrained=self.choice.pretrained)
            _say(self.args, self.choice.label)
            if getattr(self.args, "backend", "torch") != "torch":
                self._model = _with_backend(self._model, self.args.backend)
        return self._model


def inpaint_pair(
    args: argparse.Namespace,
    image_path: Path,
    mask_path: Path | None,
    output_path: Path,
    get_model: Callable[[], object],
    *,
    progress: bool | None = None,
    say: Callable[[str], None] | None = None,
) -> PairOutcome:
    """Inpaint one file pair with the options in ``args``; raise CliError on bad input.

    ``mask_path`` None is allowed only for GeoTIFFs whose nodata (or alpha/mask band) marks
    the holes. Warnings go to ``say``. An ``output_path`` that is the image or the mask is
    refused before anything is read (:func:`check_not_an_input`); the result replaces an
    existing ``output_path`` atomically (:func:`write_image`).
    """
    from aerial_inpainting.inference import as_stored, compose_output

    say = say or (lambda message: _say(args, message))
    check_not_an_input(output_path, {"image": image_path, "mask": mask_path})
    check_output_format(output_path, args.allow_lossy)
    geo = _geo_route(args, image_path)
    if geo is not None:
        return geo(args, image_path, mask_path, output_path, get_model, progress, say)
    if mask_path is None:
        raise CliError(
            f"image {image_path}: no mask given (only GeoTIFFs with nodata can do without)"
        )
    from aerial_inpainting.imaging.io import read_photo_metadata

    inputs = _read_pair(args, image_path, mask_path)
    metadata = read_photo_metadata(image_path)
    for note in inputs.notes:
        say(f"warning: {note}")
    height, width = inputs.rgb.shape[:2]
    if inputs.valid.all():
        write_image(
            output_path, as_stored(inputs, compose_output(inputs, inputs.rgb)), metadata
        )
        say(
            f"{mask_path}: mask has no hole (no black pixel), nothing to do; "
            f"{output_path} is an unchanged copy of {image_path}"
        )
        return PairOutcome("unchanged", 0.0, list(inputs.notes), width, height)
    if not inputs.valid.any():
        raise CliError(
            f"{mask_path}: mask has no valid pixel (all black = all hole), nothing to inpaint "
            "from; white = keep, black = fill (use --invert-mask for the opposite convention)"
        )
    result = compose_output(inputs, _fill(args, inputs, image_path, get_model, progress))
    suffix = Path(output_path).suffix.lower()
    if suffix in LOSSY_SUFFIXES:
        say(f"warning: {LOSSY_SUFFIXES[suffix]}: the valid pixels of OUT will differ")
    write_image(output_path, as_stored(inputs, result), metadata)
    return PairOutcome("inpainted", inputs.hole_ratio, list(inputs.notes), width, height)


def _read_pair(args: argparse.Namespace, image_path: Path, mask_path: Path):
    """The image and its mask, read and checked (:func:`inference.prepare_inputs`); CliError
    for an unreadable file or a mask that is not usable as given."""
    from aerial_inpainting.imaging.io import pillow_pixel_limit
    from aerial_inpainting.inference import InpaintingInputError, prepare_inputs

    with pillow_pixel_limit(args.max_image_pixels):
        picture = read_picture(image_path, "image")
        mask_picture = read_picture(mask_path, "mask")
    try:
        return prepare_inputs(
            picture,
            mask_picture,
            threshold=args.threshold,
            invert_mask=args.invert_mask,
            name=f"image {image_path}",
            mask_name=str(mask_path),
            invert_hint="--invert-mask",
        )
    except InpaintingInputError as exc:
        hint = " (e.g. --threshold 128)" if "not binary" in str(exc) else ""
        raise CliError(f"{exc} [image {image_path}]{hint}") from exc


def _fill(
    args: argparse.Namespace,
    inputs,
    image_path: Path,
    get_model: Callable[[], object],
    progress: bool | None,
) -> np.ndarray:
    """The model's filling of ``inputs``' holes (uint8 RGB); CliError when it cannot run."""
    from aerial_inpainting.inference import InpaintingInputError, check_fillable, fill_holes

    check_fillable(inputs)
    device = _device(args)
    model = get_model()
    try:
        return fill_holes(
            model,
            inputs.rgb,
            inputs.valid,
            device=device,
            tile_size=args.tile_size,
            overlap=args.overlap,
            max_size=args.max_size,
            progress=progress,
            name=str(image_path),
        )
    except InpaintingInputError as exc:
        raise CliError(str(exc)) from exc
    except RuntimeError as exc:  # e.g. CUDA out of memory, device not available
        raise CliError(
            f"inference failed on {device}: {exc} (try --device cpu or --tile-size)"
        ) from exc


def _device(args: argparse.Namespace):
    from aerial_inpainting.pconv.devices import resolve_device

    try:
        return resolve_device(args.device)
    except (RuntimeError, ValueError) as exc:
        raise CliError(f"--device {args.device}: {exc}") from exc


def _geo_route(args: argparse.Namespace, image_path: Path):
    """The windowed raster path (:mod:`aerial_inpainting.geotiff`) for this image, or None.

    Taken for georeferenced TIFFs (CRS, geotransform or nodata; without rasterio a
    CliError names the ``geo`` extra), and, when rasterio is installed, for images above
    Pillow's decompression-bomb limit once the user lifted it with --max-image-pixels.
    """
    from aerial_inpainting import geotiff

    if geotiff.is_georeferenced(image_path):  # GeoTIFF tags, or a world file / .aux.xml beside it
        if not geotiff.has_rasterio():
            raise CliError(f"image {image_path}: is georeferenced; {geotiff.GEO_EXTRA}")
        return _inpaint_geo
    if args.max_image_pixels is not None and geotiff.has_rasterio():
        pixels = _pixel_count(image_path)
        if pixels is not None and pixels > _pillow_default_limit():
            return _inpaint_geo
    return None


def _pillow_default_limit() -> int:
    from PIL import Image

    return 2 * (Image.MAX_IMAGE_PIXELS or 0) or 2**62


def _pixel_count(path: Path) -> int | None:
    """Width x height from the header (Pillow, no decoding, no size limit), or None."""
    from PIL import Image

    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                return image.width * image.height
    except Exception:  # unreadable: the normal path says why
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _inpaint_geo(
    args: argparse.Namespace,
    image_path: Path,
    mask_path: Path | None,
    output_path: Path,
    get_model: Callable[[], object],
    progress: bool | None,
    say: Callable[[str], None],
) -> PairOutcome:
    """A raster through :func:`aerial_inpainting.geotiff.inpaint_raster` (window by window)."""
    from aerial_inpainting.geotiff import GeoDependencyError, inpaint_raster
    from aerial_inpainting.inference import InpaintingInputError

    device = _device(args)
    model = get_model()
    try:
        outcome = inpaint_raster(
            model,
            image_path,
            output_path,
            mask_path,
            threshold=args.threshold,
            invert_mask=args.invert_mask,
            device=device,
            window_size=args.window_size,
            halo=args.window_halo,
            tile_size=args.tile_size,
            overlap=args.overlap,
            max_size=args.max_size,
            model_label=str(getattr(get_model, "path", "") or ""),
            progress=progress,
            say=say,
            fill_nodata=args.fill_nodata,
        )
    except (InpaintingInputError, GeoDependencyError) as exc:
        hint = " (e.g. --threshold 128)" if "not binary" in str(exc) else ""
        raise CliError(f"{exc}{hint}") from exc
    except OSError as exc:  # the output cannot be written (the previous one is kept)
        raise CliError(
            f"output {output_path}: cannot write ({exc}); an existing file is left as it was"
        ) from exc
    except RuntimeError as exc:
        raise CliError(f"inference failed on {device}: {exc} (try --device cpu)") from exc
    status = "inpainted" if outcome.hole_pixels else "unchanged"
    if status == "unchanged":
        say(f"{image_path}: no hole (no nodata, no mask hole); {output_path} is a copy")
    return PairOutcome(status, outcome.hole_ratio, outcome.notes, outcome.width, outcome.height)


def run(args: argparse.Namespace) -> int:
    """Do the work for parsed arguments; raise CliError on bad input."""
    if args.input_dir is not None:
        return run_folder(args)
    outcome = inpaint_pair(
        args,
        Path(args.image),
        Path(args.mask) if args.mask is not None else None,
        Path(args.output),
        ModelSource(args),
        progress=None if not args.quiet else False,
    )
    if outcome.status == "unchanged":
        return EXIT_NO_HOLE
    _say(
        args,
        f"wrote {args.output} ({outcome.width}x{outcome.height}, {outcome.hole_ratio:.1%} filled)",
    )
    return EXIT_OK


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Either IMAGE MASK -o OUT (MASK optional for GeoTIFFs) or --input-dir/--output-dir."""
    if args.input_dir is not None:
        if args.image is not None or args.output is not None:
            parser.error("give either IMAGE MASK -o OUT or --input-dir/--output-dir, not both")
        if args.output_dir is None:
            parser.error("--input-dir needs --output-dir")
        return
    if args.mask_dir is not None or args.output_dir is not None:
        parser.error("--mask-dir and --output-dir go with --input-dir")
    if args.image is None or args.output is None:
        parser.error("give IMAGE MASK -o OUT, or --input-dir DIR --output-dir DIR")


def _listing(directory: Path, what: str) -> dict[str, list[Path]]:
    """stem -> files with that stem (sorted) among the image files of ``directory``."""
    if not directory.is_dir():
        raise CliError(f"{what} {directory}: not a directory")
    found: dict[str, list[Path]] = {}
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() in INPUT_SUFFIXES:
            found.setdefault(path.stem, []).append(path)
    return found


def output_name(image_path: Path) -> str:
    """The result's file name: the input's, with .png for formats that are not lossless."""
    suffix = image_path.suffix.lower()
    return image_path.name if suffix in LOSSLESS_SUFFIXES else image_path.stem + ".png"


def check_output_dir(output_dir: Path, input_dir: Path, mask_dir: Path | None) -> None:
    """Refuse an ``--output-dir`` that is the ``--input-dir`` or the ``--mask-dir`` (same
    folder after resolving symlinks), before anything is read: results would replace the
    inputs (``a.png``) or the masks (``a.jpg`` gives ``a.png``, the mask's name)."""
    from aerial_inpainting.output_files import same_file

    folders = {"--input-dir": input_dir, "--mask-dir": mask_dir}
    for option, folder in folders.items():
        if folder is not None and same_file(output_dir, folder):
            kind = "images" if option == "--input-dir" else "masks (a.jpg gives a.png)"
            raise CliError(
                f"--output-dir {output_dir} is the {option} {folder}: results would replace "
                f"the {kind} there; choose another output folder"
            )


def _check_report_path(
    report_path: Path, images: dict[str, list[Path]], masks: dict[str, list[Path]]
) -> None:
    """Refuse a ``--report`` that names one of the input images or masks."""
    from aerial_inpainting.output_files import same_file

    for what, listing in (("image", images), ("mask", masks)):
        for path in (p for paths in listing.values() for p in paths):
            if same_file(report_path, path):
                raise CliError(
                    f"--report {report_path} is the {what} file {path}: refusing to write "
                    "over an input; choose another report file"
                )


def run_folder(args: argparse.Namespace) -> int:
    """Inpaint every image of ``--input-dir``; write the CSV report; 1 if any pair failed."""
    from tqdm.auto import tqdm

    input_dir, output_dir = Path(args.input_dir), Path(args.output_dir)
    mask_dir = Path(args.mask_dir) if args.mask_dir else None
    check_output_dir(output_dir, input_dir, mask_dir)
    images = _listing(input_dir, "--input-dir")
    masks = _listing(mask_dir, "--mask-dir") if mask_dir is not None else {}
    report_path = Path(args.report) if args.report else output_dir / REPORT_NAME
    _check_report_path(report_path, images, masks)
    if not images:
        raise CliError(
            f"--input-dir {input_dir}: no image file ({', '.join(sorted(INPUT_SUFFIXES))})"
        )
    get_model = ModelSource(args)
    get_model.resolve()  # no model: fail before touching any file
    output_dir.mkdir(parents=True, exist_ok=True)

    jobs = [(stem, path) for stem, paths in images.items() for path in paths]
    rows: list[dict] = []
    bar = tqdm(jobs, desc="aerial-inpaint", unit="file", disable=True if args.quiet else None)

    def say(message: str) -> None:
        if not args.quiet:
            bar.write(f"aerial-inpaint: {message}", file=sys.stderr)

    for stem, image_path in bar:
        started = time.perf_counter()
        mask_path = masks.get(stem, [None])[0]
        output_path = output_dir / output_name(image_path)
        row = {"file": str(image_path), "mask": str(mask_path or ""), "output": str(output_path)}
        try:
            if len(images[stem]) > 1:
                others = ", ".join(p.name for p in images[stem] if p != image_path)
                raise CliError(
                    f"image {image_path}: another input has the same stem ({others}), so the "
                    "mask cannot be told apart; rename one"
                )
            if output_path.exists() and not args.overwrite:
                rows.append(
                    row | _status("exists", f"{output_path} exists (--overwrite replaces it)")
                )
                say(f"{image_path}: skipped, {output_path} exists (--overwrite replaces it)")
                continue
            if mask_path is None and _geo_route(args, image_path) is None:
                where = args.mask_dir or "(no --mask-dir given)"
                raise CliError(f"image {image_path}: no mask named {stem}.* in {where}")
            if len(masks.get(stem, [])) > 1:
                say(f"{image_path}: several masks named {stem}.*, using {mask_path.name}")
            outcome = inpaint_pair(
                args, image_path, mask_path, output_path, get_model, progress=False, say=say
            )
            reason = "; ".join(outcome.notes) or (
                "mask has no hole: image copied unchanged" if outcome.status == "unchanged" else ""
            )
            rows.append(row | _status(outcome.status, reason, outcome.hole_ratio))
        except CliError as exc:
            rows.append(row | _status("failed", str(exc)))
            say(f"error: {exc}")
        except Exception as exc:  # one broken pair must not stop the batch
            rows.append(row | _status("failed", f"{type(exc).__name__}: {exc}"))
            say(f"error: {image_path}: {type(exc).__name__}: {exc}")
        finally:
            if rows and "seconds" not in rows[-1]:
                rows[-1]["seconds"] = round(time.perf_counter() - started, 3)
    for stem in sorted(set(masks) - set(images)):
        for mask_path in masks[stem]:
            rows.append(
                {"file": "", "mask": str(mask_path), "output": ""}
                | _status("ignored", f"no image named {stem}.* in {input_dir}")
                | {"seconds": 0.0}
            )
    write_report(report_path, rows)
    failed = sum(row["status"] == "failed" for row in rows)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("inpainted", "unchanged", "exists")}
    _say(
        args,
        f"{counts['inpainted']} inpainted, {counts['unchanged']} unchanged (no hole), "
        f"{counts['exists']} already there, {failed} failed; report: {report_path}",
    )
    return EXIT_ERROR if failed else EXIT_OK


def _status(status: str, reason: str, hole_ratio: float | None = None) -> dict:
    ratio = "" if hole_ratio is None else round(float(hole_ratio), 6)
    return {"status": status, "reason": reason, "hole_ratio": ratio}


def write_report(path: Path, rows: list[dict]) -> None:
    """The folder run's CSV report (one row per file; columns :data:`REPORT_COLUMNS`),
    replacing ``path`` atomically; CliError when it cannot be written."""
    from aerial_inpainting.output_files import atomic_output

    try:
        with atomic_output(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=REPORT_COLUMNS)
            writer.writeheader()
            writer.writerows({key: row.get(key, "") for key in REPORT_COLUMNS} for row in rows)
    except OSError as exc:
        raise CliError(f"report {path}: cannot write ({exc})") from exc


def _one_line(text: str) -> str:
    """``text`` with its line breaks and runs of blanks collapsed to single spaces."""
    return " ".join(text.split())


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(f"aerial-inpaint: {message}", file=sys.stderr)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """-q: only errors. Library warnings, logs below ERROR and MLflow's download bar are off
    inside the block (everything is restored after it)."""
    loggers = [logging.getLogger(name) for name in ("mlflow", "aerial_inpainting", "py.warnings", "rasterio")]
    levels = [logger.level for logger in loggers]
    previous_bar = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        if previous_bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = previous_bar


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (argparse exits 2 on a bad command line)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    logging.basicConfig(level=logging.WARNING, format="aerial-inpaint: %(message)s")
    with _quiet() if args.quiet else contextlib.nullcontext():
        try:
            return run(args)
        except CliError as exc:
            print(f"aerial-inpaint: error: {_one_line(str(exc))}", file=sys.stderr)
            return EXIT_ERROR
        except KeyboardInterrupt:
            print("aerial-inpaint: interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
