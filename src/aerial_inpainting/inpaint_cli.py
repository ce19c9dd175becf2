"""``aerial-inpaint``: fill the holes of one image with a trained model, from the shell.

Exit status: 0 done; 1 bad input or no usable model (message on stderr, no traceback);
2 bad command line; 3 the mask has no hole, so OUT is an unchanged copy of IMAGE.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NO_HOLE = 0, 1, 2, 3
MODEL_DATASET_PATH = Path("data/06_models/pconv_unet.pt")

_DESCRIPTION = """\
Fill the holes of an aerial photograph with a trained partial-convolution U-Net.

MASK is an image of the same size as IMAGE: white = keep the pixel, black = hole to
fill (--invert-mask for the opposite). A mask with grey values is refused unless
--threshold is given. Any image size works; large images are processed in tiles.
Valid pixels of OUT are exactly those of IMAGE."""

_EPILOG = """\
model: --model takes a model file written by the training pipeline
(.../pconv_unet.pt), a directory of versions of it, a logged MLflow model directory, or
an MLflow URI (runs:/<run_id>/model, models:/<name>/<version>). Without --model, the
latest version under data/06_models/pconv_unet.pt/ of the Kedro project containing the
current directory (or --project-dir) is used.

exit status: 0 done, 1 bad input or no usable model, 2 bad command line,
3 the mask has no hole (OUT is a copy of IMAGE)."""


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
    parser.add_argument("image", metavar="IMAGE", help="image to inpaint (PNG, JPEG, TIFF, ...)")
    parser.add_argument("mask", metavar="MASK", help="mask image: white = keep, black = fill")
    parser.add_argument(
        "-o", "--output", metavar="OUT", required=True, help="where to write the result (PNG)"
    )
    parser.add_argument("--model", metavar="PATH-or-URI", help="model file, folder or MLflow URI")
    parser.add_argument(
        "--invert-mask", action="store_true", help="the mask is white = fill, black = keep"
    )
    parser.add_argument(
        "--device", default="auto", help="torch device: auto (default), cpu, cuda, cuda:1, mps"
    )
    parser.add_argument(
        "--threshold",
        type=_gray_level,
        default=None,
        metavar="0-255",
        help="binarize a grey mask: valid where value >= threshold (default: refuse grey masks)",
    )
    parser.add_argument(
        "--tile-size", type=_positive_int, default=None, help="force tiles of this size (pixels)"
    )
    parser.add_argument(
        "--max-size",
        type=_positive_int,
        default=1024,
        help="images with a side above this are tiled (default 1024)",
    )
    parser.add_argument(
        "--overlap", type=_non_negative_int, default=64, help="tile overlap in pixels (default 64)"
    )
    parser.add_argument(
        "--project-dir", default=None, help="Kedro project to take the latest model from"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only print errors")
    return parser


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
def read_image(path: str | Path, what: str = "image") -> np.ndarray:
    """Read an image file as uint8 (H, W, 3) RGB, or raise CliError naming the file."""
    from aerial_inpainting.imaging.io import ImageReadError, open_image
    from aerial_inpainting.inference import InpaintingInputError, to_rgb_uint8

    path = Path(path)
    if not path.is_file():
        raise CliError(f"{what} {path}: file not found")
    try:
        with open_image(path) as pil:
            return to_rgb_uint8(pil, name=f"{what} {path}")
    except ImageReadError as exc:
        raise CliError(f"{what} {exc}") from exc
    except InpaintingInputError as exc:
        raise CliError(str(exc)) from exc


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask file as a 2-D array of its gray levels (0-255), or raise CliError."""
    from aerial_inpainting.imaging.io import ImageReadError, open_image

    path = Path(path)
    if not path.is_file():
        raise CliError(f"mask {path}: file not found")
    try:
        with open_image(path) as pil:
            gray = pil.convert("L") if pil.mode not in ("L",) else pil
            return np.asarray(gray, dtype=np.uint8).copy()
    except ImageReadError as exc:
        raise CliError(f"mask {exc}") from exc
    except (OSError, ValueError) as exc:
        raise CliError(f"mask {path}: cannot convert to grayscale ({exc})") from exc


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write uint8 (H, W, 3) to ``path`` (format from the suffix; PNG when there is none)."""
    from PIL import Image

    path = Path(path)
    fmt = None if path.suffix else "PNG"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, format=fmt)
    except (OSError, ValueError, KeyError) as exc:
        raise CliError(f"output {path}: cannot write ({exc})") from exc


# ------------------------------------------------------------------ model lookup
def find_project_root(start: str | Path | None = None) -> Path | None:
    """The Kedro project (a folder with a pyproject.toml declaring [tool.kedro]) containing ``start``."""
    from kedro.utils import find_kedro_project

    return find_kedro_project(Path(start or Path.cwd()).resolve())


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
    """The checkpoint stored inside a logged pyfunc model directory (``artifacts/*.pt``)."""
    found = sorted(directory.glob("artifacts/**/*.pt")) or sorted(directory.rglob("*.pt"))
    return found[0] if found else None


def _model_in_directory(directory: Path) -> Path | None:
    """A logged MLflow model, a folder holding the model file, or a versioned-dataset folder."""
    if (directory / "MLmodel").is_file():
        return _checkpoint_in_mlflow_model(directory)
    direct = sorted(p for p in directory.glob("*.pt") if p.is_file())
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
        dataset = root / MODEL_DATASET_PATH
        found = latest_model_version(dataset)
        if found is None:
            raise CliError(
                f"no trained model found in {dataset}; train one with `kedro run` "
                "or pass --model PATH-or-URI"
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
        return _download_mlflow_model(model)
    raise CliError(f"model {model}: no such file or directory (nor an MLflow URI)")


def _download_mlflow_model(uri: str) -> Path:
    """Fetch an MLflow artifact (a model file or a logged pyfunc model) to a temp folder."""
    try:
        import mlflow

        target = Path(tempfile.mkdtemp(prefix="aerial-inpaint-"))
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target)))
    except Exception as exc:  # MLflow raises many exception types for bad URIs/servers
        raise CliError(f"model {uri}: cannot download from MLflow ({exc})") from exc
    if local.is_file():
        return local
    found = _model_in_directory(local)
    if found is None:
        raise CliError(f"model {uri}: no model file (*.pt) in the downloaded artifacts")
    return found


def load_trained_model(path: Path):
    """Load a model file, or raise CliError (missing, corrupt, or not a model)."""
    from aerial_inpainting.pconv.checkpoint import load_model

    try:
        return load_model(path, map_location="cpu")
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError) as exc:
        raise CliError(f"model {path}: cannot be loaded ({exc})") from exc


# ------------------------------------------------------------------ main
def run(args: argparse.Namespace) -> int:
    """Do the work for parsed arguments; raise CliError on bad input."""
    from aerial_inpainting.inference import (
        InpaintingInputError,
        inpaint_image,
        prepare_mask,
        resolve_device,
    )

    image = read_image(args.image)
    raw_mask = read_mask(args.mask)
    label = str(args.mask)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            valid = prepare_mask(
                raw_mask, image.shape, threshold=args.threshold, invert=args.invert_mask, name=label
            )
        except InpaintingInputError as exc:
            hint = " (e.g. --threshold 128)" if "not binary" in str(exc) else ""
            raise CliError(f"{exc} [image {args.image}]{hint}") from exc
    for warning in caught:
        _say(args, f"warning: {warning.message}")

    if valid.all():
        write_image(args.output, image)
        print(
            f"aerial-inpaint: {label}: mask has no hole (no black pixel), nothing to do; "
            f"{args.output} is an unchanged copy of {args.image}",
            file=sys.stderr,
        )
        return EXIT_NO_HOLE
    if not valid.any():
        raise CliError(
            f"{label}: mask has no valid pixel (all black = all hole), nothing to inpaint from; "
            "white = keep, black = fill (use --invert-mask for the opposite convention)"
        )
    try:
        device = resolve_device(args.device)
    except RuntimeError as exc:
        raise CliError(f"--device {args.device}: {exc}") from exc
    model_path = resolve_model_path(args.model, args.project_dir)
    model = load_trained_model(model_path)
    _say(args, f"model: {model_path}")
    try:
        result = inpaint_image(
            model,
            image,
            valid,
            device=device,
            tile_size=args.tile_size,
            overlap=args.overlap,
            max_size=args.max_size,
            progress=None if not args.quiet else False,
            name=str(args.image),
        )
    except InpaintingInputError as exc:
        raise CliError(str(exc)) from exc
    except RuntimeError as exc:  # e.g. CUDA out of memory, device not available
        raise CliError(
            f"inference failed on {device}: {exc} (try --device cpu or --tile-size)"
        ) from exc
    write_image(args.output, result)
    hole = 1.0 - float(valid.mean())
    _say(args, f"wrote {args.output} ({image.shape[1]}x{image.shape[0]}, {hole:.1%} filled)")
    return EXIT_OK


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(f"aerial-inpaint: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (argparse exits 2 on a bad command line)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="aerial-inpaint: %(message)s")
    try:
        return run(args)
    except CliError as exc:
        print(f"aerial-inpaint: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("aerial-inpaint: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
