"""Inpaint one image of any size with a trained partial-convolution U-Net (no Kedro needed).

The U-Net only accepts sides that are multiples of ``2**depth``, so every image is
reflect-padded up to such a size (mask padded the same way, so mirrored holes stay holes)
and the result is cropped back. Images larger than ``max_size`` are cut into overlapping
tiles whose predictions are blended with linear ramps, which bounds memory. In every case
the valid pixels of the result are *copied* from the input (``I_comp = M*I + (1-M)*I_out``),
so they are bit-identical to it.

Mask convention: 1/True/255 (white) = valid pixel to keep, 0 (black) = hole to fill.
A mask with other values (anti-aliased edges, JPEG artefacts) is *thresholded* at
``threshold`` on the 0-255 scale (valid where ``value >= threshold``) and a
:class:`NonBinaryMaskWarning` is emitted; ``threshold=None`` refuses such a mask instead.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from aerial_inpainting.imaging.io import to_rgb8

logger = logging.getLogger(__name__)

DEFAULT_MAX_SIZE = 1024
DEFAULT_OVERLAP = 64
DEFAULT_THRESHOLD = 128


class InpaintingInputError(ValueError):
    """An image/mask pair that cannot be inpainted (the message says which and why)."""


class NonBinaryMaskWarning(UserWarning):
    """A mask had values other than black and white and was thresholded."""


# ------------------------------------------------------------------ conversions
def to_rgb_uint8(image: Any, name: str = "image") -> np.ndarray:
    """Return ``image`` as uint8 (H, W, 3) RGB: grayscale replicated, alpha dropped.

    Accepts PIL images (converted by the data pipeline's rules, see
    :mod:`aerial_inpainting.imaging.io`) and numpy arrays of shape (H, W), (H, W, 1|2|3|4) with
    dtype bool, uint8, uint16 (scaled down) or float in [0, 1]. Alpha is composited on black,
    as in the data pipeline; it never makes holes: holes come from the mask only.
    """
    if hasattr(image, "mode") and hasattr(image, "convert"):  # PIL image
        try:
            return np.ascontiguousarray(to_rgb8(image))
        except (ValueError, OSError) as exc:
            raise InpaintingInputError(f"{name}: cannot convert to 8-bit RGB ({exc})") from exc
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 2:  # grayscale + alpha
        array = np.concatenate([np.repeat(array[:, :, :1], 3, axis=2), array[:, :, 1:]], axis=2)
    if (
        array.ndim != 3
        or array.shape[2] not in (3, 4)
        or array.shape[0] == 0
        or array.shape[1] == 0
    ):
        raise InpaintingInputError(
            f"{name}: expected an image of shape (H, W), (H, W, 3) or (H, W, 4), got {array.shape}"
        )
    array = _to_uint8(array, name)
    if array.shape[2] == 4:  # premultiply: transparent areas become black
        rgb, alpha = array[:, :, :3].astype(np.uint32), array[:, :, 3:].astype(np.uint32)
        array = ((rgb * alpha + 127) // 255).astype(np.uint8)
    return np.ascontiguousarray(array)


def _to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InpaintingInputError(f"{name}: image contains NaN or infinite values")
        scale = 255.0 if array.max(initial=0.0) <= 1.0 else 1.0
        return np.clip(np.rint(array * scale), 0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return np.clip(array, 0, 255).astype(np.uint8)
    raise InpaintingInputError(f"{name}: unsupported image dtype {array.dtype}")


def _mask_to_2d(mask: Any, name: str) -> np.ndarray:
    """A mask as a 2-D array: PIL images converted to 8-bit gray, RGB(A) arrays to luminance."""
    if hasattr(mask, "mode") and hasattr(mask, "convert"):  # PIL image
        mask = mask.convert("L") if mask.mode not in ("L", "1", "I;16", "I", "F") else mask
        if mask.mode == "1":
            mask = mask.convert("L")
    array = np.asarray(mask)
    if array.ndim == 3 and array.shape[2] in (1, 2):
        array = array[:, :, 0]
    elif array.ndim == 3 and array.shape[2] in (3, 4):
        rgb = array[:, :, :3]
        if (rgb == rgb[:, :, :1]).all():
            array = rgb[:, :, 0]
        else:  # ITU-R 601 luma, as PIL's convert("L")
            luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
            array = np.rint(luma).astype(rgb.dtype) if rgb.dtype.kind in "ui" else luma
    if array.ndim != 2:
        raise InpaintingInputError(f"{name}: a mask must be 2-D (H, W), got shape {array.shape}")
    return array


def prepare_mask(
    mask: Any,
    image_shape: tuple[int, ...] | None = None,
    *,
    threshold: float | None = DEFAULT_THRESHOLD,
    invert: bool = False,
    name: str = "mask",
) -> np.ndarray:
    """Validate a mask and return it as bool (H, W), True = valid pixel.

    Binary masks are recognised in any of the usual encodings: bool, {0, 1} or {0, 255}.
    Anything else is thresholded at ``threshold`` (0-255 scale; masks with float values in
    [0, 1] are compared with ``threshold / 255``) with a :class:`NonBinaryMaskWarning`, or
    refused when ``threshold`` is None. ``invert`` swaps the convention (white = hole).
    """
    array = _mask_to_2d(mask, name)
    if image_shape is not None and tuple(array.shape) != tuple(image_shape[:2]):
        h, w = image_shape[:2]
        raise InpaintingInputError(
            f"{name}: mask is {array.shape[1]}x{array.shape[0]} (WxH) but the image is {w}x{h}; "
            "image and mask must have the same size"
        )
    if array.dtype == bool:
        valid = array
    else:
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise InpaintingInputError(f"{name}: mask contains NaN or infinite values")
        values = np.unique(array)
        if np.isin(values, (0, 1)).all():
            valid = array == 1
        elif np.isin(values, (0, 255)).all():
            valid = array == 255
        else:
            float_unit = np.issubdtype(array.dtype, np.floating) and values.max() <= 1.0
            gray = int(np.count_nonzero((array > 0) & (array < (1.0 if float_unit else 255))))
            if threshold is None:
                raise InpaintingInputError(
                    f"{name}: mask is not binary ({gray} pixels are neither black nor white); "
                    "use a black/white mask or give a threshold to binarize it"
                )
            cut = threshold / 255.0 if float_unit else threshold
            valid = array >= cut
            warnings.warn(
                f"{name}: mask is not binary ({gray} pixels are neither black nor white); "
                f"thresholded at {threshold} (valid where value >= {threshold})",
                NonBinaryMaskWarning,
                stacklevel=2,
            )
    return ~valid if invert else valid.copy()


# ------------------------------------------------------------------ geometry
def model_multiple(model: torch.nn.Module) -> int:
    """Side lengths the model accepts are multiples of ``2**depth``."""
    config = getattr(model, "config", None)
    depth = getattr(config, "depth", None)
    if depth is None:
        raise TypeError("model has no `config.depth`; expected a PConvUNet")
    return 2 ** int(depth)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _reflect_pad(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pad bottom/right up to (height, width) by mirroring (repeated if the pad is large)."""
    pad_h, pad_w = height - array.shape[0], width - array.shape[1]
    if pad_h == 0 and pad_w == 0:
        return array
    widths = [(0, pad_h), (0, pad_w)] + [(0, 0)] * (array.ndim - 2)
    # numpy's "reflect" needs at least 2 pixels along an axis; a 1-pixel side repeats instead.
    mode = "reflect" if min(array.shape[:2]) > 1 else "edge"
    return np.pad(array, widths, mode=mode)


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length``, the last one flush right."""
    if tile >= length:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def _ramp(tile: int, overlap: int, first: bool, last: bool) -> np.ndarray:
    """1-D blending weights: linear ramps over ``overlap`` pixels on sides shared with a neighbour.

    Ramps of neighbouring tiles at the regular stride sum to exactly 1 in their overlap.
    """
    weights = np.ones(tile, dtype=np.float32)
    if overlap > 0:
        ramp = (np.arange(1, overlap + 1, dtype=np.float32)) / (overlap + 1)
        if not first:
            weights[:overlap] = np.minimum(weights[:overlap], ramp)
        if not last:
            weights[-overlap:] = np.minimum(weights[-overlap:], ramp[::-1])
    return weights


# ------------------------------------------------------------------ model calls
def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" -> CUDA when available, else CPU; anything else as given."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _predict(
    model: torch.nn.Module, image: np.ndarray, valid: np.ndarray, device: torch.device
) -> np.ndarray:
    """Model output for one padded image: float32 (h, w, 3) clipped to [0, 1]."""
    # NHWC (channels_last) memory: the model's convolutions run faster in it (README, benchmarks).
    x = torch.from_numpy(np.ascontiguousarray(image))[None].permute(0, 3, 1, 2).to(device)
    m = torch.from_numpy(valid.astype(np.float32))[None, None].to(device)
    with torch.inference_mode():
        out = model(x.float().contiguous(memory_format=torch.channels_last) / 255.0, m)
    return out[0].clamp(0.0, 1.0).permute(1, 2, 0).float().cpu().numpy()


def inpaint_image(
    model: torch.nn.Module,
    image: Any,
    mask: Any,
    device: str | torch.device | None = "cpu",
    tile_size: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    threshold: float | None = DEFAULT_THRESHOLD,
    invert_mask: bool = False,
    progress: bool | None = False,
    name: str = "image",
) -> np.ndarray:
    """Fill the holes of ``image`` (uint8 (H, W, 3), any size) where ``mask`` is 0.

    ``tile_size``: process in overlapping tiles of this size (rounded up to a multiple of
    ``2**depth``); when None, tiles of ``max_size`` are used only if a side exceeds
    ``max_size``. ``overlap``: pixels shared by neighbouring tiles, blended linearly.
    ``progress``: tqdm bar over tiles (None = only on a terminal).
    Returns uint8 (H, W, 3) whose valid pixels equal the input's exactly. A mask without
    holes returns the image unchanged; a mask without any valid pixel is refused.
    The model is put in eval mode and moved to ``device`` in channels_last memory format.
    """
    rgb = to_rgb_uint8(image, name=name)
    valid = prepare_mask(mask, rgb.shape, threshold=threshold, invert=invert_mask, name=name)
    if valid.all():
        logger.info("%s: mask has no hole, image returned unchanged", name)
        return rgb.copy()
    if not valid.any():
        raise InpaintingInputError(
            f"{name}: mask has no valid pixel (everything is a hole); there is nothing to "
            "inpaint from. Check the convention (white = keep, black = fill) or invert the mask"
        )
    multiple = model_multiple(model)
    device = resolve_device(device)
    model.eval().to(device, memory_format=torch.channels_last)

    height, width = rgb.shape[:2]
    if tile_size is None and max(height, width) > max_size:
        tile_size = max_size
    if tile_size is not None and max(height, width) > tile_size:
        prediction = _predict_tiled(
            model, rgb, valid, device, multiple, int(tile_size), int(overlap), progress, name
        )
    else:
        ph, pw = _round_up(height, multiple), _round_up(width, multiple)
        padded = _predict(model, _reflect_pad(rgb, ph, pw), _reflect_pad(valid, ph, pw), device)
        prediction = padded[:height, :width]

    filled = np.clip(np.rint(prediction * 255.0), 0, 255).astype(np.uint8)
    return np.where(valid[:, :, None], rgb, filled)


def _predict_tiled(
    model: torch.nn.Module,
    rgb: np.ndarray,
    valid: np.ndarray,
    device: torch.device,
    multiple: int,
    tile_size: int,
    overlap: int,
    progress: bool | None,
    name: str,
) -> np.ndarray:
    """Model output assembled from overlapping tiles, blended with linear ramps."""
    tile = _round_up(max(tile_size, multiple), multiple)
    overlap = max(0, min(overlap, tile // 2))
    height, width = rgb.shape[:2]
    ph, pw = _round_up(height, multiple), _round_up(width, multiple)
    th, tw = min(tile, ph), min(tile, pw)
    image_p, valid_p = _reflect_pad(rgb, ph, pw), _reflect_pad(valid, ph, pw)
    ys, xs = _tile_starts(ph, th, overlap), _tile_starts(pw, tw, overlap)

    acc = np.zeros((ph, pw, 3), dtype=np.float32)
    weight = np.zeros((ph, pw), dtype=np.float32)
    boxes = [(y, x) for y in ys for x in xs]
    for y, x in tqdm(
        boxes,
        desc=f"inpaint {name}",
        disable=None if progress is None else not progress,
        leave=False,
    ):
        tile_valid = valid_p[y : y + th, x : x + tw]
        if tile_valid.all():
            continue  # no hole here: its pixels are copied from the input anyway
        out = _predict(model, image_p[y : y + th, x : x + tw], tile_valid, device)
        wy = _ramp(th, overlap, first=y == ys[0], last=y == ys[-1])
        wx = _ramp(tw, overlap, first=x == xs[0], last=x == xs[-1])
        w = wy[:, None] * wx[None, :]
        acc[y : y + th, x : x + tw] += out * w[:, :, None]
        weight[y : y + th, x : x + tw] += w
    # Pixels no processed tile covered are valid pixels: overwritten by the composite.
    prediction = acc / np.maximum(weight, 1e-12)[:, :, None]
    return prediction[:height, :width]
