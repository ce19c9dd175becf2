"""Nodes of the ``inpaint`` pipeline: fill the user's own images with the trained model.

Images in ``data/05_model_input/images`` are paired with the mask of the same file stem in
``data/05_model_input/masks`` (``a/b.jpg`` <-> ``a/b.png``). Pairs that cannot be processed
(no mask, unreadable file, raster too large, size mismatch, mask without any valid pixel)
are skipped with a warning and listed in the report, or stop the run when ``fail_on_error``
is true. Reading, filling and composing are :mod:`aerial_inpainting.inference`'s, shared
with ``aerial-inpaint`` and the MLflow model (EXIF orientation, transparency, every hole
pixel filled); its notes (thresholded mask, hole ratio suggesting an inverted mask,
transparent no-data) go to the log and the report's ``message`` column.

GeoTIFFs (TIFFs with georeferencing or a nodata value) among the images are handled by
:func:`inpaint_user_geotiffs` instead, window by window through
:func:`aerial_inpainting.geotiff.inpaint_raster` (CRS, transform, nodata, bands kept; nodata
pixels are holes, so they need no mask; a mask of the same stem adds its holes).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import torch
from kedro.io.core import DatasetError
from PIL import Image
from tqdm.auto import tqdm

from aerial_inpainting.imaging.io import pillow_pixel_limit, too_large_reason
from aerial_inpainting.inference import (
    InpaintingInputError,
    fill_prepared,
    prepare_inputs,
)
from aerial_inpainting.parameters import InpaintParams
from aerial_inpainting.pconv.devices import resolve_device

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})
REPORT_COLUMNS = [
    "image_id",
    "image_file",
    "mask_file",
    "width",
    "height",
    "hole_ratio",
    "status",
    "message",
]


def _stem(partition_id: str) -> str:
    return str(PurePosixPath(partition_id).with_suffix(""))


def _image_partitions(partitions: Mapping[str, Any]) -> dict[str, str]:
    """stem -> partition id for image files (hidden files such as .gitkeep ignored)."""
    found: dict[str, str] = {}
    for pid in sorted(partitions):
        path = PurePosixPath(pid)
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if _stem(pid) in found:
            logger.warning(
                "Two files share the stem %r: %s and %s; using the first",
                _stem(pid),
                found[_stem(pid)],
                pid,
            )
            continue
        found[_stem(pid)] = pid
    return found


def _load(loader: Callable[[], Any] | Any) -> Any:
    return loader() if callable(loader) else loader


def _load_picture(loader: Callable[[], Any] | Any, what: str) -> Any:
    """A partition's image; Pillow's decompression-bomb refusal becomes a 'too large' error."""
    try:
        return _load(loader)
    except Image.DecompressionBombError as exc:
        raise InpaintingInputError(f"{what}: {too_large_reason(exc)}") from exc
    except DatasetError as exc:  # Kedro wraps what the dataset raised
        if isinstance(exc.__cause__, Image.DecompressionBombError):
            raise InpaintingInputError(f"{what}: {too_large_reason(exc.__cause__)}") from exc
        raise


def _row(
    image_id: str,
    image_file: str | None,
    mask_file: str | None,
    *,
    status: str,
    message: str = "",
    width: int | None = None,
    height: int | None = None,
    hole_ratio: float | None = None,
) -> dict:
    """One line of the report (``REPORT_COLUMNS``); the size and hole ratio of a done file."""
    return {
        "image_id": image_id,
        "image_file": image_file,
        "mask_file": mask_file,
        "width": width,
        "height": height,
        "hole_ratio": hole_ratio,
        "status": status,
        "message": message,
    }


def _report(rows: list[dict], fail_on_error: bool, what: str) -> pd.DataFrame:
    """The report of ``rows``; its skipped files listed in a warning, or in the ValueError
    raised when ``fail_on_error``."""
    report = pd.DataFrame(rows, columns=REPORT_COLUMNS)
    skipped = report[report["status"] == "skipped"]
    if len(skipped):
        listing = "\n".join(
            f"  - {r.image_file or r.mask_file}: {r.message}" for r in skipped.itertuples()
        )
        if fail_on_error:
            raise ValueError(f"inpaint: {len(skipped)} {what} could not be processed:\n{listing}")
        logger.warning("inpaint: skipped %d %s:\n%s", len(skipped), what, listing)
    return report


def preview_strip(
    image: np.ndarray, valid: np.ndarray, result: np.ndarray, max_height: int
) -> Image.Image:
    """input | mask | result side by side (mask white = kept), scaled to ``max_height`` at most."""
    gap = np.full((image.shape[0], max(2, image.shape[1] // 64), 3), 128, dtype=np.uint8)
    mask_rgb = np.repeat((valid.astype(np.uint8) * 255)[:, :, None], 3, axis=2)
    strip = Image.fromarray(np.concatenate([image, gap, mask_rgb, gap, result], axis=1))
    if max_height and strip.height > max_height:
        width = max(1, round(strip.width * max_height / strip.height))
        strip = strip.resize((width, max_height), Image.Resampling.LANCZOS)
    return strip


def inpaint_user_images(
    model: torch.nn.Module,
    images: Mapping[str, Any],
    masks: Mapping[str, Any],
    params: Mapping[str, Any],
    geotiff_ids: Sequence[str] | None = None,
) -> tuple[dict[str, Image.Image], dict[str, Image.Image], pd.DataFrame]:
    """Fill every image that has a mask; returns results, previews and a per-image report.

    ``geotiff_ids``: image partitions :func:`inpaint_user_geotiffs` handles (left out here).
    Raises ValueError listing the files that could not be processed when
    ``inpaint.fail_on_error`` is true (else they are skipped with a warning).
    """
    params = InpaintParams.parse(params)
    image_ids = _image_partitions(images)
    mask_ids = _image_partitions(masks)
    device = resolve_device(params.device)
    results: dict[str, Image.Image] = {}
    previews: dict[str, Image.Image] = {}
    rows: list[dict] = []

    if not image_ids:
        logger.warning(
            "inpaint: no image found (catalog entry `inpaint_images`, by default "
            "data/05_model_input/images); nothing to do"
        )
    for orphan in sorted(set(mask_ids) - set(image_ids)):
        rows.append(
            _row(orphan, None, mask_ids[orphan], status="skipped", message="mask without an image")
        )

    disable = None if params.progress_bar is None else not params.progress_bar
    handled_elsewhere = set(geotiff_ids or ())
    todo = [key for key in sorted(image_ids) if image_ids[key] not in handled_elsewhere]
    for key in tqdm(todo, desc="inpaint", disable=disable):
        image_file = image_ids[key]
        if key not in mask_ids:
            rows.append(
                _row(key, image_file, None, status="skipped", message=f"no mask named {key}.png")
            )
            continue
        mask_file = mask_ids[key]
        try:
            inputs, result, notes = _inpaint_pair(
                model, images[image_file], masks[mask_file], image_file, mask_file, params, device
            )
        except (InpaintingInputError, OSError, ValueError) as exc:
            rows.append(_row(key, image_file, mask_file, status="skipped", message=str(exc)))
            continue
        results[key] = Image.fromarray(result)
        previews[key] = preview_strip(
            inputs.rgb, inputs.valid, result[:, :, :3], params.preview_max_height
        )
        rows.append(
            _row(
                key,
                image_file,
                mask_file,
                width=inputs.rgb.shape[1],
                height=inputs.rgb.shape[0],
                hole_ratio=round(inputs.hole_ratio, 6),
                status="inpainted" if inputs.hole_ratio > 0 else "unchanged",
                message="; ".join(notes),
            )
        )
    report = _report(rows, params.fail_on_error, "file(s)")
    skipped = int((report["status"] == "skipped").sum())
    logger.info("inpaint: %d image(s) written, %d skipped", len(results), skipped)
    return results, previews, report


def _inpaint_pair(
    model: torch.nn.Module,
    image_loader: Callable[[], Any] | Any,
    mask_loader: Callable[[], Any] | Any,
    image_file: str,
    mask_file: str,
    params: InpaintParams,
    device: torch.device,
) -> tuple[Any, np.ndarray, list[str]]:
    """(prepared inputs, the composed result, notes) of one image and its mask.

    Raises InpaintingInputError (bad or too large input, nothing fillable), OSError or
    ValueError (unreadable file).
    """
    with pillow_pixel_limit(params.max_image_pixels):
        picture = _load_picture(image_loader, f"image {image_file}")
        mask_picture = _load_picture(mask_loader, f"mask {mask_file}")
    inputs = prepare_inputs(
        picture,
        mask_picture,
        threshold=params.threshold,
        invert_mask=params.invert_mask,
        name=f"image {image_file}",
        mask_name=f"mask {mask_file}",
        invert_hint="inpaint.invert_mask: true",
    )
    notes = list(inputs.notes)
    for note in notes:
        logger.warning("inpaint: %s", note)
    result = fill_prepared(
        model,
        inputs,
        device,
        params.tile_size,
        params.overlap,
        max_size=params.max_size,
        progress=False,
        name=str(image_file),
        mask_name=f"mask {mask_file}",
    )
    if inputs.hole_ratio == 0.0:
        notes.append("mask has no hole: image copied unchanged")
    return inputs, result, notes


def inpaint_user_geotiffs(
    model: torch.nn.Module,
    rasters: Mapping[str, Any],
    mask_files: Mapping[str, Any],
    params: Mapping[str, Any],
) -> tuple[dict[str, str], pd.DataFrame, list[str]]:
    """Fill the GeoTIFFs among the images, window by window; nodata pixels are holes.

    ``rasters``/``mask_files``: partitions that load as file paths
    (:class:`aerial_inpainting.datasets.RasterFileDataset`). Returns the finished files
    (partition id -> temporary path, moved into place by the output dataset), a report
    (columns as the images' report) and the partition ids handled here (which
    :func:`inpaint_user_images` then leaves out). Plain TIFFs are left to
    :func:`inpaint_user_images`.
    """
    from aerial_inpainting.geotiff import (
        TIFF_SUFFIXES,
        GeoDependencyError,
        inpaint_raster,
        is_georeferenced_tiff,
    )

    params = InpaintParams.parse(params)
    masks = _image_partitions(mask_files)
    device = resolve_device(params.device)
    results: dict[str, str] = {}
    rows: list[dict] = []
    handled: list[str] = []
    work = None
    for pid in sorted(rasters):
        pure = PurePosixPath(pid)
        if pure.name.startswith(".") or pure.suffix.lower() not in TIFF_SUFFIXES:
            continue
        path = Path(_load(rasters[pid]))
        if not is_georeferenced_tiff(path):
            continue  # a plain TIFF: the images node reads it
        handled.append(pid)
        key = _stem(pid)
        mask_pid = masks.get(key)
        mask_path = Path(_load(mask_files[mask_pid])) if mask_pid else None
        work = work or Path(tempfile.mkdtemp(prefix="aerial-inpaint-geotiff-"))
        target = work / pure.name
        try:
            outcome = inpaint_raster(
                model,
                path,
                target,
                mask_path,
                threshold=params.threshold,
                invert_mask=params.invert_mask,
                device=device,
                window_size=params.window_size,
                halo=params.window_halo,
                tile_size=params.tile_size,
                overlap=params.overlap,
                max_size=params.max_size,
                model_label=f"PConvUNet {model.config.to_dict()} (Kedro entry `model`)",
                progress=params.progress_bar,
                fill_nodata=params.fill_nodata,
            )
        except (InpaintingInputError, GeoDependencyError, OSError, ValueError) as exc:
            rows.append(_row(key, pid, mask_pid, status="skipped", message=str(exc)))
            continue
        for note in outcome.notes:
            logger.warning("inpaint: %s", note)
        results[pid] = str(target)
        rows.append(
            _row(
                key,
                pid,
                mask_pid or "(nodata)",
                width=outcome.width,
                height=outcome.height,
                hole_ratio=round(outcome.hole_ratio, 6),
                status="inpainted" if outcome.hole_pixels else "unchanged",
                message="; ".join(outcome.notes),
            )
        )
    return results, _report(rows, params.fail_on_error, "GeoTIFF(s)"), handled
