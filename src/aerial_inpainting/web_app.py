"""``aerial-inpainting serve``: a local web page to paint a hole and see it filled.

Built on Gradio (optional extra: ``pip install "aerial_inpainting[app]"``). The page:

1. *Photograph*: a PNG, JPEG or TIFF file, read exactly as ``aerial-inpaint`` reads it
   (:func:`aerial_inpainting.inpaint_cli.read_picture`, EXIF orientation applied).
2. *Hole*: painted with the brush of the image editor (any colour; every painted pixel,
   however faint, is a hole), or a mask file (white = keep, black = fill; grey masks are
   thresholded at 128, as ``aerial-inpaint --threshold 128``).
3. *Model*: the shipped model, the Kedro project's latest trained model (offered when
   the server was started inside a project that has one; preselected when ``aerial-inpaint``
   without ``--model`` would take it: its recorded test score not below the shipped model's), or an MLflow URI / model file typed in a box; all
   resolved and loaded by the CLI's own functions (:func:`~aerial_inpainting.inpaint_cli.choose_model`,
   :func:`~aerial_inpainting.inpaint_cli.load_trained_model`).
4. One button: side by side, the input with the hole (magenta), OpenCV Telea's fill
   (:func:`aerial_inpainting.evaluation.baselines.telea`) and this project's fill, which is
   computed by the CLI's code path (:func:`aerial_inpainting.inpaint_cli.inpaint_pair`:
   large images in tiles, valid pixels copied bit for bit) and offered as a lossless PNG,
   with the mask the page used (a file ``aerial-inpaint`` takes as it is).

Safety: the server listens on 127.0.0.1 unless ``--host`` says otherwise; uploads above
``--max-upload-mb`` are refused (by Gradio before they are stored, and again here); every
file of the server (Gradio's upload cache included) lives in one temporary folder of this
process; a session's uploads and results are deleted when its tab is closed, every file of
the folder when the last open tab is closed (:class:`SessionFiles`), files older than an hour
every 10 minutes, and the folder itself when the server stops. Bad input gives a message on the page (never a traceback).
"""

import argparse
import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MAX_UPLOAD_MB = 50.0
APP_EXTRA = 'pip install "aerial_inpainting[app]"'
# Painted on the hole pixels in the "input with the hole" view.
HOLE_COLOUR = (255, 0, 255)
# Threshold applied to an uploaded grey mask (aerial-inpaint --threshold 128).
UPLOADED_MASK_THRESHOLD = 128
PHOTO_TYPES = [".png", ".jpg", ".jpeg", ".tif", ".tiff"]
MASK_TYPES = [".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"]
MODEL_SHIPPED = "Shipped model"
MODEL_PROJECT = "This project's latest trained model"
MODEL_OTHER = "MLflow URI or model file"
# Gradio sweeps its cache every CACHE_SWEEP_S seconds, deleting files older than CACHE_AGE_S.
CACHE_SWEEP_S, CACHE_AGE_S = 600, 3600


class PageError(Exception):
    """A problem to show on the page as one message (no traceback)."""


# ------------------------------------------------------------------ inputs
def check_upload(path: str | Path | None, max_bytes: int, what: str) -> Path:
    """The uploaded file ``path``, or PageError: nothing uploaded, or above ``max_bytes``."""
    if path is None or str(path) == "":
        raise PageError(f"no {what} uploaded")
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise PageError(f"{what} {path.name}: cannot read the upload ({exc.strerror})") from exc
    if size > max_bytes:
        raise PageError(
            f"{what} {path.name}: {size / 2**20:.1f} MB is above the upload limit of "
            f"{max_bytes / 2**20:.1f} MB (aerial-inpainting serve --max-upload-mb)"
        )
    return path


def open_photo(path: str | Path | None, max_bytes: int) -> np.ndarray:
    """The uploaded photograph as the page shows it: uint8 (H, W, 3) RGB, upright.

    Read by the CLI's reader (:func:`aerial_inpainting.inpaint_cli.read_picture`) and
    :func:`aerial_inpainting.inference.load_image_input` (EXIF orientation applied, alpha
    dropped for the view). Raises PageError (too large, not an image, a GeoTIFF).
    """
    from aerial_inpainting import geotiff
    from aerial_inpainting.inference import InpaintingInputError, load_image_input
    from aerial_inpainting.inpaint_cli import CliError, read_picture

    path = check_upload(path, max_bytes, "photograph")
    if geotiff.is_georeferenced_tiff(path):
        raise PageError(
            f"photograph {path.name}: is a GeoTIFF; use `aerial-inpaint IMAGE MASK -o OUT`, "
            "which keeps its georeferencing"
        )
    try:
        return load_image_input(read_picture(path, "photograph"), name=path.name)[0]
    except (CliError, InpaintingInputError) as exc:
        raise PageError(_short(str(exc), path)) from exc


def _short(message: str, path: Path) -> str:
    """``message`` with the upload's temporary folder left out (only the file name shown)."""
    return " ".join(message.replace(str(path), path.name).split())


def mask_from_layers(layers: Sequence[Any] | None, shape: tuple[int, ...]) -> np.ndarray:
    """The brush strokes of the editor as a mask: bool (H, W), True = keep, False = hole.

    ``layers``: the editor's layers, uint8 (H, W, 4) RGBA arrays (or PIL images); a pixel is a
    hole where any layer is not fully transparent. ``shape``: the photograph's (H, W, ...).
    Raises PageError when nothing was painted or a layer is not the photograph's size.
    """
    height, width = shape[:2]
    hole = np.zeros((height, width), dtype=bool)
    for layer in layers or []:
        array = np.asarray(layer)
        if array.ndim != 3 or array.shape[2] != 4:
            continue  # no alpha channel: not a brush layer
        if array.shape[:2] != (height, width):
            raise PageError(
                f"the painted layer is {array.shape[1]}x{array.shape[0]} pixels but the "
                f"photograph is {width}x{height}; upload the photograph again and repaint"
            )
        hole |= array[:, :, 3] > 0
    if not hole.any():
        raise PageError(
            "no hole: paint over what should be filled (brush), or upload a mask "
            "(white = keep, black = fill)"
        )
    return ~hole


def write_mask(valid: np.ndarray, path: Path) -> Path:
    """Write ``valid`` (bool (H, W), True = keep) as an 8-bit PNG mask aerial-inpaint takes
    as it is: 255 (white) = keep, 0 (black) = fill."""
    from aerial_inpainting.inpaint_cli import write_image

    write_image(path, np.where(valid, np.uint8(255), np.uint8(0)))
    return path


def hole_view(rgb: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3): ``rgb`` with its hole pixels painted :data:`HOLE_COLOUR`."""
    view = np.array(rgb[:, :, :3], dtype=np.uint8)
    view[~valid] = HOLE_COLOUR
    return view


# ------------------------------------------------------------------ models
@dataclass
class ModelCache:
    """Models resolved by the CLI's rules and loaded once (by file), shared by all sessions.

    ``project_dir``: the Kedro project the server belongs to (None: the working directory's).
    """

    project_dir: str | None = None
    _models: dict[Path, Any] = field(default_factory=dict)
    _uris: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def project_model(self) -> Path | None:
        """The project's latest trained model file, or None (outside a project, or none
        trained yet): offered on the page whatever its score."""
        from aerial_inpainting.inpaint_cli import (
            MODEL_DATASET_PATH,
            find_project_root,
            latest_model_version,
        )

        root = Path(self.project_dir) if self.project_dir else find_project_root()
        return None if root is None else latest_model_version(Path(root) / MODEL_DATASET_PATH)

    def auto_choice_is_project(self) -> bool:
        """Whether ``aerial-inpaint`` without ``--model`` would take the project's model
        (its recorded test score not below the shipped model's: the page preselects the same)."""
        from aerial_inpainting.inpaint_cli import CliError, choose_model

        try:
            return not choose_model(None, self.project_dir).pretrained
        except CliError:
            return False

    def get(self, kind: str, text: str | None = None) -> tuple[Any, str]:
        """(model, label saying which) for a choice of the page; PageError when unusable."""
        from aerial_inpainting.inpaint_cli import CliError, choose_model, load_trained_model

        if kind == MODEL_SHIPPED:
            spec = "pretrained"
        elif kind == MODEL_PROJECT:
            path = self.project_model()
            if path is None:
                raise PageError("this project has no trained model yet: run `kedro run` first")
            spec = str(path)
        elif kind == MODEL_OTHER:
            spec = (text or "").strip()
            if not spec:
                raise PageError(
                    "type an MLflow URI (runs:/<run_id>/model, models:/<name>/<version>) or a "
                    "model file path in the box, or choose another model"
                )
        else:
            raise PageError(f"unknown model choice {kind!r}")
        with self._lock:
            try:
                if spec is not None and spec in self._uris:
                    choice = self._uris[spec]
                else:
                    choice = choose_model(spec, self.project_dir)
                    if spec and ("://" in spec or spec.startswith(("runs:/", "models:/"))):
                        self._uris[spec] = choice  # downloaded once
                if choice.path not in self._models:
                    self._models[choice.path] = load_trained_model(
                        choice.path, pretrained=choice.pretrained
                    )
            except CliError as exc:
                raise PageError(str(exc)) from exc
            return self._models[choice.path], choice.label


# ------------------------------------------------------------------ the fill
@dataclass
class FillResult:
    """What the page shows after the button: three views (uint8 (H, W, 3)), the files to
    download (the result as PNG, the mask the page used) and notes for the user."""

    with_hole: np.ndarray
    telea: np.ndarray
    ours: np.ndarray
    result_path: Path
    mask_path: Path
    model_label: str
    notes: list[str]
    hole_ratio: float


def fill(
    photo_path: str | Path | None,
    layers: Sequence[Any] | None,
    mask_upload: str | Path | None,
    out_dir: Path,
    get_model: Callable[[], tuple[Any, str]],
    *,
    max_bytes: int,
    invert_mask: bool = False,
    device: str = "auto",
) -> FillResult:
    """Fill the hole of the uploaded photograph, as ``aerial-inpaint`` would.

    The hole comes from ``mask_upload`` when given (white = keep; ``invert_mask`` for the
    opposite; grey masks thresholded at :data:`UPLOADED_MASK_THRESHOLD`), else from the brush
    ``layers`` (:func:`mask_from_layers`), written as ``<stem>_mask.png`` in ``out_dir``. The
    result is written by :func:`aerial_inpainting.inpaint_cli.inpaint_pair` to
    ``<stem>_inpainted.png`` in ``out_dir``. ``get_model``: () -> (model, label).
    Raises PageError (bad upload, empty or all-black mask, model or inference failure).
    """
    from PIL import Image

    from aerial_inpainting.evaluation.baselines import telea
    from aerial_inpainting.inference import InpaintingInputError, prepare_inputs
    from aerial_inpainting.inpaint_cli import CliError, build_parser, inpaint_pair, read_picture

    rgb = open_photo(photo_path, max_bytes)
    photo = Path(str(photo_path))
    stem = photo.stem or "photograph"
    out_dir.mkdir(parents=True, exist_ok=True)
    mask_path = out_dir / f"{stem}_mask.png"
    result_path = out_dir / f"{stem}_inpainted.png"
    notes: list[str] = []
    if mask_upload:
        mask_file = check_upload(mask_upload, max_bytes, "mask")
        if layers is not None and any(np.asarray(x)[..., -1].any() for x in layers):
            notes.append("a mask file was uploaded: it is used, the brush strokes are not")
        try:
            inputs = prepare_inputs(
                read_picture(photo, "photograph"),
                read_picture(mask_file, "mask"),
                threshold=UPLOADED_MASK_THRESHOLD,
                invert_mask=invert_mask,
                name=photo.name,
                mask_name=mask_file.name,
                invert_hint="the 'invert' box",
            )
        except (CliError, InpaintingInputError) as exc:
            raise PageError(_short(_short(str(exc), photo), mask_file)) from exc
        if inputs.valid.all():
            raise PageError(
                f"mask {mask_file.name}: has no hole (no black pixel); white = keep, "
                "black = fill (tick 'invert' for the opposite)"
            )
        valid = inputs.valid
    else:
        valid = mask_from_layers(layers, rgb.shape)
    if not valid.any():
        raise PageError(
            "the whole photograph is a hole: nothing is left to fill it from; leave some of "
            "it unpainted (or check the mask: white = keep, black = fill)"
        )
    write_mask(valid, mask_path)
    notes.extend(note for note in _mask_notes(valid) if not mask_upload)
    args = build_parser().parse_args(
        [str(photo), str(mask_path), "-o", str(result_path), "--device", device, "-q"]
    )
    model_label: list[str] = []

    def load() -> Any:
        model, label = get_model()
        model_label.append(label)
        return model

    said: list[str] = []
    try:
        outcome = inpaint_pair(
            args, photo, mask_path, result_path, load, progress=False, say=said.append
        )
    except CliError as exc:
        raise PageError(_short(_short(str(exc), photo), mask_path)) from exc
    notes.extend(_short(_short(s, photo), mask_path) for s in said)
    if outcome.status != "inpainted":  # cannot happen: the mask has a hole
        raise PageError("the mask has no hole, nothing was filled")
    with Image.open(result_path) as written:
        ours = np.asarray(written.convert("RGB"))
    return FillResult(
        with_hole=hole_view(rgb, valid),
        telea=telea(rgb, valid),
        ours=ours,
        result_path=result_path,
        mask_path=mask_path,
        model_label=model_label[0] if model_label else "",
        notes=notes,
        hole_ratio=1.0 - float(valid.mean()),
    )


def _mask_notes(valid: np.ndarray) -> list[str]:
    from aerial_inpainting.inference import HOLE_RATIO_WARNING

    ratio = 1.0 - float(valid.mean())
    if ratio > HOLE_RATIO_WARNING:
        return [
            f"{ratio:.0%} of the photograph is painted, far above what the model was trained "
            f"for (up to {HOLE_RATIO_WARNING:.0%}): expect a blurry fill"
        ]
    return []


# ------------------------------------------------------------------ sessions
class SessionFiles:
    """The files of each browser session, deleted when its tab is closed.

    A session's own uploads and results (registered with :meth:`add`, :meth:`folder`) are
    deleted when it ends. Gradio also keeps copies it makes on the way (the editor's
    background and layers, the views), which cannot be told apart by session: those are
    deleted when the last open session ends (:meth:`clear`), else by Gradio's hourly sweep,
    and with the whole folder when the server stops.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._paths: dict[str, set[Path]] = {}
        self._open: set[str] = set()
        self._lock = threading.Lock()

    def open(self, session: str) -> None:
        """A tab was opened (the page was loaded)."""
        with self._lock:
            self._open.add(session)

    def folder(self, session: str) -> Path:
        """A fresh folder for one result of ``session`` (under this process's temp folder)."""
        folder = Path(tempfile.mkdtemp(prefix="result-", dir=self.root))
        self.add(session, folder)
        return folder

    def add(self, session: str, *paths: str | Path | None) -> None:
        """Remember uploads or outputs of ``session`` (files, or their folders)."""
        with self._lock:
            for path in paths:
                if path:
                    self._paths.setdefault(session, set()).add(Path(path))

    def delete(self, session: str) -> None:
        """The tab of ``session`` was closed: delete every file remembered for it (an
        upload's folder too, when empty afterwards); everything, when no tab is left open."""
        with self._lock:
            paths = self._paths.pop(session, set())
            self._open.discard(session)
            last = not self._open
        for path in paths:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
                parent = path.parent
                if parent != self.root and self.root in parent.parents:
                    with contextlib.suppress(OSError):
                        parent.rmdir()  # only when empty
        if last:
            self.clear()

    def clear(self) -> None:
        """Delete every file under the root folder (and the folders left empty)."""
        for path in sorted(self.root.rglob("*"), reverse=True):  # children first
            with contextlib.suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()
                else:
                    path.unlink()


# ------------------------------------------------------------------ the page
@dataclass(frozen=True)
class ServeConfig:
    """The server's settings (``aerial-inpainting serve`` options)."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    model: str | None = None
    project_dir: str | None = None
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    device: str = "auto"

    @property
    def max_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


def build_app(config: ServeConfig, work_dir: Path):
    """The Gradio page (``gr.Blocks``; not launched). ``work_dir``: where session files go
    (inside Gradio's cache folder, so results are served without being copied)."""
    import gradio as gr

    models = ModelCache(config.project_dir)
    sessions = SessionFiles(work_dir)
    project_model = models.project_model()
    choices = [MODEL_SHIPPED] + ([MODEL_PROJECT] if project_model else []) + [MODEL_OTHER]
    # As aerial-inpaint: --model, else the project's latest trained model when its recorded
    # test score is not below the shipped model's, else the shipped one.
    default_kind = MODEL_PROJECT if project_model and models.auto_choice_is_project() else MODEL_SHIPPED
    default_text = ""
    if config.model == "pretrained":
        default_kind = MODEL_SHIPPED
    elif config.model is not None:
        default_kind, default_text = MODEL_OTHER, config.model

    def on_photo(path: str | None, request: gr.Request):
        sessions.add(request.session_hash, path)
        if not path:
            return None
        try:
            rgb = open_photo(path, config.max_bytes)
        except PageError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        preview = sessions.folder(request.session_hash) / "preview.png"
        from PIL import Image

        Image.fromarray(rgb).save(preview)
        return {"background": str(preview), "layers": [], "composite": str(preview)}

    def on_mask(path: str | None, request: gr.Request):
        sessions.add(request.session_hash, path)

    def on_fill(photo, editor, mask_file, invert, kind, text, request: gr.Request):
        sessions.add(request.session_hash, photo, mask_file)
        try:
            result = fill(
                photo,
                (editor or {}).get("layers"),
                mask_file,
                sessions.folder(request.session_hash),
                lambda: models.get(kind, text),
                max_bytes=config.max_bytes,
                invert_mask=bool(invert),
                device=config.device,
            )
        except PageError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except Exception as exc:  # never a traceback on the page; the log has it
            logger.exception("fill failed")
            raise gr.Error(f"unexpected error: {type(exc).__name__}: {exc}") from None
        for note in result.notes:
            gr.Warning(note)
        views = [
            _save_view(result.result_path.parent / f"view_{name}.png", array)
            for name, array in (
                ("hole", result.with_hole),
                ("telea", result.telea),
                ("ours", result.ours),
            )
        ]
        status = f"{result.hole_ratio:.1%} of the photograph filled; {result.model_label}"
        return (
            *views,
            str(result.result_path),
            str(result.mask_path),
            status,
        )

    with gr.Blocks(
        title="Aerial inpainting",
        analytics_enabled=False,
        delete_cache=(CACHE_SWEEP_S, CACHE_AGE_S),
    ) as app:
        gr.Markdown(
            "## Aerial inpainting\n"
            "1. Upload a photograph (PNG, JPEG, TIFF). 2. Paint over what should go (brush; "
            "its size is in the brush menu), or upload a mask (white = keep, black = fill). "
            "3. Choose the model and press **Fill the hole**. Files are deleted when this "
            "tab is closed."
        )
        with gr.Row():
            with gr.Column(scale=1):
                photo = gr.File(
                    label="Photograph",
                    file_types=PHOTO_TYPES,
                    type="filepath",
                    elem_id="photo-file",
                )
                mask_file = gr.File(
                    label="Mask (optional; instead of painting)",
                    file_types=MASK_TYPES,
                    type="filepath",
                    elem_id="mask-file",
                )
                invert = gr.Checkbox(label="invert the mask (white = fill)", value=False)
                kind = gr.Radio(choices, value=default_kind, label="Model", elem_id="model-kind")
                text = gr.Textbox(
                    value=default_text,
                    label="MLflow URI or model file (runs:/<run_id>/model)",
                    elem_id="model-uri",
                )
                button = gr.Button("Fill the hole", variant="primary", elem_id="fill-button")
            with gr.Column(scale=2):
                editor = gr.ImageEditor(
                    label="Paint the hole",
                    type="numpy",
                    image_mode="RGBA",
                    sources=(),
                    transforms=(),
                    layers=False,
                    format="png",
                    brush=gr.Brush(colors=["rgba(255, 0, 255, 0.6)"], color_mode="fixed"),
                    elem_id="editor",
                )
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            out_hole = gr.Image(
                label="Input with the hole (magenta)",
                format="png",
                interactive=False,
                elem_id="view-hole",
            )
            out_telea = gr.Image(
                label="OpenCV Telea", format="png", interactive=False, elem_id="view-telea"
            )
            out_ours = gr.Image(
                label="This project's model", format="png", interactive=False, elem_id="view-ours"
            )
        with gr.Row():
            result_file = gr.File(
                label="Result (lossless PNG)", elem_id="result-file", interactive=False
            )
            used_mask = gr.File(
                label="Mask used (for aerial-inpaint)", elem_id="used-mask", interactive=False
            )

        photo.change(on_photo, inputs=photo, outputs=editor)
        mask_file.change(on_mask, inputs=mask_file, outputs=None)
        button.click(
            on_fill,
            inputs=[photo, editor, mask_file, invert, kind, text],
            outputs=[out_hole, out_telea, out_ours, result_file, used_mask, status],
        )

        def on_load(request: gr.Request) -> None:
            sessions.open(request.session_hash)

        def on_unload(request: gr.Request) -> None:
            sessions.delete(request.session_hash)

        app.load(on_load)
        app.unload(on_unload)
    return app


def _save_view(path: Path, image: np.ndarray) -> str:
    """Write a view as PNG in the session's folder (Gradio then serves it without copying
    it into its cache, so it is deleted with the session)."""
    from PIL import Image

    Image.fromarray(image).save(path)
    return str(path)


def page_theme():
    """Gradio's default theme with the system's fonts (nothing fetched from a font server)."""
    import gradio as gr

    return gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"],
        font_mono=["ui-monospace", "monospace"],
    )


# ------------------------------------------------------------------ the command
def build_parser() -> argparse.ArgumentParser:
    """``aerial-inpainting serve`` options."""
    parser = argparse.ArgumentParser(
        prog="aerial-inpainting serve",
        description="A local web page: upload an aerial photograph, paint the hole, see "
        "OpenCV Telea's fill and this project's side by side, download the result (PNG). "
        f"Needs the optional extra: {APP_EXTRA}",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="default %(default)s")
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="address to listen on (default %(default)s: this computer only; 0.0.0.0 "
        "exposes the page, and the model box, to the network)",
    )
    parser.add_argument(
        "--model",
        default=None,
        metavar="PATH-or-URI",
        help="preselected model: file, folder, MLflow URI or `pretrained` (the shipped "
        "model); default, as aerial-inpaint: the latest trained model of the Kedro project "
        "containing the working directory (or --project-dir), else the shipped model",
    )
    parser.add_argument("--project-dir", default=None, help="Kedro project of the models")
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_MB,
        help="refuse uploads above this size (default %(default)s MB)",
    )
    parser.add_argument("--device", default="auto", help="torch device (default auto)")
    return parser


@contextlib.contextmanager
def private_temp_dir() -> Iterator[Path]:
    """A temporary folder of this process, used by Gradio (``GRADIO_TEMP_DIR``: uploads,
    results) and by :mod:`tempfile` (MLflow downloads), deleted on exit (SIGTERM too)."""
    work_dir = Path(tempfile.mkdtemp(prefix="aerial-inpainting-serve-")).resolve()
    saved = {k: os.environ.get(k) for k in ("GRADIO_TEMP_DIR", "TMPDIR")}
    previous_tempdir = tempfile.tempdir
    os.environ["GRADIO_TEMP_DIR"] = os.environ["TMPDIR"] = str(work_dir)
    tempfile.tempdir = str(work_dir)
    try:
        yield work_dir
    finally:
        tempfile.tempdir = previous_tempdir
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(work_dir, ignore_errors=True)


def serve(config: ServeConfig) -> None:
    """Start the page; blocks until Ctrl-C or SIGTERM. Gradio must not have been imported
    before (it reads ``GRADIO_TEMP_DIR`` on import)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    with private_temp_dir() as work_dir:
        app = build_app(config, work_dir)  # imports Gradio after GRADIO_TEMP_DIR is set
        print(
            f"aerial-inpainting serve: http://{config.host}:{config.port}/ (Ctrl-C stops; "
            f"uploads up to {config.max_upload_mb:g} MB; files in {work_dir}, deleted on exit)",
            file=sys.stderr,
            flush=True,
        )
        app.queue(default_concurrency_limit=1)
        app.launch(
            server_name=config.host,
            server_port=config.port,
            share=False,
            inbrowser=False,
            max_file_size=config.max_bytes,
            ssr_mode=False,
            mcp_server=False,
            pwa=False,
            quiet=True,
            footer_links=[],
            theme=page_theme(),
        )


def _stop_on_sigterm() -> None:
    def handler(signum, frame):  # SIGTERM -> KeyboardInterrupt: the temp folder is deleted
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # not in the main thread
        signal.signal(signal.SIGTERM, handler)


def cli(argv: Sequence[str] | None = None) -> int:
    """``aerial-inpainting serve [--port N] [--host H] [--model M] [--max-upload-mb MB]``;
    returns the exit status (1: Gradio missing or the port is taken)."""
    args = build_parser().parse_args(argv)
    if importlib.util.find_spec("gradio") is None:  # not imported: see serve()
        print(f"aerial-inpainting serve: error: needs Gradio: {APP_EXTRA}", file=sys.stderr)
        return 1
    if args.max_upload_mb <= 0:
        print("aerial-inpainting serve: error: --max-upload-mb must be > 0", file=sys.stderr)
        return 2
    config = ServeConfig(
        host=args.host,
        port=args.port,
        model=args.model,
        project_dir=args.project_dir,
        max_upload_mb=args.max_upload_mb,
        device=args.device,
    )
    _stop_on_sigterm()
    try:
        serve(config)
    except KeyboardInterrupt:
        print("aerial-inpainting serve: stopped", file=sys.stderr)
    except OSError as exc:  # e.g. the port is taken
        print(f"aerial-inpainting serve: error: {exc}", file=sys.stderr)
        return 1
    return 0
