"""Inpaint one image of any size with a trained partial-convolution U-Net (no Kedro needed).

This module is the one code path behind ``aerial-inpaint``, the ``inpaint`` pipeline and the
MLflow pyfunc model: :func:`prepare_inputs` reads an image/mask pair as the user sees it,
:func:`fill_holes` runs the network until every hole pixel has a prediction and
:func:`compose_output` puts the result together.

* **Orientation**: PIL images (files) are turned upright by their EXIF ``Orientation`` tag
  before anything else (images and masks alike), so a mask drawn on what a viewer shows fits
  the image, and results are written upright.
* **Transparency**: a fully transparent image pixel (alpha 0) is no-data: it becomes a hole
  and is never shown to the network as context. The result keeps the image's alpha on kept
  pixels; filled pixels become opaque. In a mask, transparent means hole too: a mask whose
  colour is uniform (only its alpha varies) is its alpha (opaque = keep, transparent = fill);
  otherwise its luminance composited on black is used.
* **Padding**: the U-Net only accepts sides that are multiples of ``2**depth``, so every image
  is reflect-padded up to such a size (mask padded the same way, so mirrored holes stay
  holes) and the result is cropped back.
* **Hole-aware** (:mod:`aerial_inpainting.hole_regions`): the network runs only on crops of
  the padded image around the holes, each with the network's receptive radius of context,
  aligned to ``2**depth`` and at most ``max_size`` (or ``tile_size``) a side, so hole pixels
  get exactly the whole padded image's prediction, pixels far from any hole are never
  computed, memory is bounded and an image without holes makes no network call. Models whose
  receptive field is unknown (stand-ins without ``config.encoder_kernel``) run on the whole
  padded image, or, above ``max_size``, in overlapping tiles blended with linear ramps.
* **Every hole pixel is filled**: a U-Net of depth D only propagates the valid mask so far
  (about 79 px for depth 5); further inside a hole its last layer still has mask 0 and the
  output there is the partial convolution's zero default, not a prediction. Such pixels are
  filled by further passes in which the pixels predicted so far count as valid context
  (:func:`fill_holes`), until none is left.
* In every case the valid pixels of the result are *copied* from the input
  (``I_comp = M*I + (1-M)*I_out``), so they are bit-identical to it.

Mask convention: 1/True/255 (white) = valid pixel to keep, 0 (black) = hole to fill.
A mask with other values (anti-aliased edges, JPEG artefacts) is *thresholded* at
``threshold`` on the 0-255 scale (valid where ``value >= threshold``) and a
:class:`NonBinaryMaskWarning` is emitted; ``threshold=None`` refuses such a mask instead.
A mask whose hole ratio is above :data:`HOLE_RATIO_WARNING` (far outside the trained range)
probably uses the opposite convention (LaMa, Stable Diffusion UIs, SAM: white = fill): a
note naming the inversion option is returned.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from aerial_inpainting.hole_regions import predict_in_regions, receptive_radius
from aerial_inpainting.imaging.io import to_rgb8, upright
from aerial_inpainting.pconv.devices import resolve_device

logger = logging.getLogger(__name__)

DEFAULT_MAX_SIZE = 1024
DEFAULT_OVERLAP = 64
DEFAULT_THRESHOLD = 128
HOLE_RATIO_WARNING = 0.6  # the training masks' hole ratios end here


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


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        image.mode == "P" and ("transparency" in image.info or image.palette.mode == "RGBA")
    )


def _alpha_mask_gray(array: np.ndarray) -> np.ndarray:
    """(H, W, 2|4) mask with alpha -> (H, W) gray levels; transparent = hole.

    A fully opaque alpha is ignored. When the colour is the same everywhere (only the alpha
    varies), the alpha is the mask (opaque = keep). Otherwise the luminance is composited on
    black (``luma * alpha / 255``): transparent pixels become holes, opaque ones keep their
    grey level.
    """
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    colour, alpha = array[:, :, :-1], array[:, :, -1]
    luma = colour[:, :, 0] if colour.shape[2] == 1 else _luma(colour)
    full = np.iinfo(array.dtype).max if array.dtype.kind in "ui" else 1.0
    if (alpha == full).all():
        return luma
    if (colour == colour.reshape(-1, colour.shape[2])[0]).all():
        return alpha.copy()
    composite = luma.astype(np.float64) * alpha.astype(np.float64) / float(full)
    return np.rint(composite).astype(array.dtype) if array.dtype.kind in "ui" else composite


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, as PIL's convert("L"); grey images are returned unchanged."""
    if (rgb == rgb[:, :, :1]).all():
        return rgb[:, :, 0]
    luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return np.rint(luma).astype(rgb.dtype) if rgb.dtype.kind in "ui" else luma


def _mask_to_2d(mask: Any, name: str) -> np.ndarray:
    """A mask as a 2-D array: PIL images turned upright (EXIF) and converted to 8-bit gray,
    RGB arrays to luminance, masks with alpha by :func:`_alpha_mask_gray`."""
    if hasattr(mask, "mode") and hasattr(mask, "convert"):  # PIL image
        mask = upright(mask)
        if _has_alpha(mask):
            mask = np.asarray(mask.convert("RGBA"))
        else:
            mask = mask.convert("L") if mask.mode not in ("L", "1", "I;16", "I", "F") else mask
            if mask.mode == "1":
                mask = mask.convert("L")
    array = np.asarray(mask)
    if array.ndim == 3 and array.shape[2] in (2, 4):
        array = _alpha_mask_gray(array)
    elif array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    elif array.ndim == 3 and array.shape[2] == 3:
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


def load_image_input(image: Any, name: str = "image") -> tuple[np.ndarray, np.ndarray | None]:
    """An image as the user sees it: (uint8 (H, W, 3) RGB, uint8 (H, W) alpha or None).

    PIL images are turned upright by their EXIF orientation first. The RGB of images with
    an alpha channel is kept as stored (not premultiplied): fully transparent pixels are
    no-data, which :func:`prepare_inputs` turns into holes. Arrays of shape (H, W, 2|4) are
    read as gray/RGB + alpha; everything else as in :func:`to_rgb_uint8`. Raises
    :class:`InpaintingInputError`. Returned arrays are writable copies.
    """
    if hasattr(image, "mode") and hasattr(image, "convert"):  # PIL image
        image = upright(image)
        if _has_alpha(image):
            try:
                rgba = np.array(image.convert("RGBA"), dtype=np.uint8)
            except (ValueError, OSError) as exc:
                raise InpaintingInputError(f"{name}: cannot convert to RGBA ({exc})") from exc
            return np.ascontiguousarray(rgba[:, :, :3]), rgba[:, :, 3].copy()
        return np.array(to_rgb_uint8(image, name=name)), None
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] in (2, 4) and min(array.shape[:2]) > 0:
        colour = _to_uint8(array[:, :, :-1], name)
        alpha = _to_uint8(array[:, :, -1], name)
        rgb = np.repeat(colour, 3, axis=2) if colour.shape[2] == 1 else colour
        return np.array(rgb), np.array(alpha)
    return np.array(to_rgb_uint8(array, name=name)), None


@dataclass
class PreparedInputs:
    """An image/mask pair ready for :func:`fill_holes`.

    ``rgb``: uint8 (H, W, 3); ``alpha``: uint8 (H, W) or None; ``valid``: bool (H, W), True
    where the pixel is kept: valid in the mask and not transparent no-data;
    ``mask_hole_ratio``: fraction of holes in the mask alone; ``notes``: warnings for the
    user (non-binary mask thresholded, suspicious hole ratio, transparent no-data).
    ``grey``: the image is greyscale (R == G == B on every pixel of ``rgb``): the network
    sees it replicated to RGB and the holes get the luma of its prediction
    (:func:`compose_output`). ``single_channel``: it was stored with one colour channel (PIL
    modes 1, L, LA, I, I;16, F; arrays (H, W), (H, W, 1|2)), so :func:`as_stored` gives the
    result back as (H, W) or (H, W, 2).
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    valid: np.ndarray
    mask_hole_ratio: float
    notes: list[str] = field(default_factory=list)
    grey: bool = False
    single_channel: bool = False

    @property
    def hole_ratio(self) -> float:
        """Fraction of pixels to fill (mask holes and transparent no-data)."""
        return float(1.0 - self.valid.mean())


def prepare_inputs(
    image: Any,
    mask: Any,
    *,
    threshold: float | None = DEFAULT_THRESHOLD,
    invert_mask: bool = False,
    name: str = "image",
    mask_name: str | None = None,
    invert_hint: str = "invert_mask",
) -> PreparedInputs:
    """Read an (image, mask) pair as the user sees it (see the module docstring).

    ``image``/``mask``: PIL images or arrays (see :func:`load_image_input`,
    :func:`prepare_mask`). ``invert_hint`` names the inversion option in the note given when
    the mask's hole ratio is above :data:`HOLE_RATIO_WARNING` (e.g. ``--invert-mask``).
    Raises :class:`InpaintingInputError` (sizes differ, grey mask without threshold, bad
    shapes). A mask with no valid pixel is *not* refused here (see :func:`check_fillable`).
    """
    mask_name = mask_name or f"mask of {name}"
    rgb, alpha = load_image_input(image, name=name)
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NonBinaryMaskWarning)
        valid = prepare_mask(
            mask, rgb.shape, threshold=threshold, invert=invert_mask, name=mask_name
        )
    notes.extend(str(w.message) for w in caught if issubclass(w.category, NonBinaryMaskWarning))
    mask_hole_ratio = float(1.0 - valid.mean())
    if mask_hole_ratio > HOLE_RATIO_WARNING and valid.any():
        notes.append(
            f"{mask_name}: {mask_hole_ratio:.1%} of the pixels are holes, far above what the "
            f"model was trained for (up to {HOLE_RATIO_WARNING:.0%}); this project's masks are "
            "white = keep, black = fill, while most inpainting tools (LaMa, Stable Diffusion "
            f"UIs, SAM exports) use white = fill: if so, use {invert_hint}"
        )
    if alpha is not None:
        no_data = alpha == 0
        if no_data.any():
            notes.append(
                f"{name}: {int(no_data.sum())} fully transparent pixel(s) are no-data and are "
                "filled as holes"
            )
            valid = valid & ~no_data
    single_channel = _stored_grey(image)
    grey = single_channel or bool((rgb == rgb[:, :, :1]).all())
    return PreparedInputs(rgb, alpha, valid, mask_hole_ratio, notes, grey, single_channel)


# PIL modes with a single colour channel (grey; LA/La with alpha).
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


def _stored_grey(image: Any) -> bool:
    """Whether ``image`` (PIL image or array) holds one colour channel (plus alpha or not)."""
    if hasattr(image, "mode") and hasattr(image, "convert"):  # PIL image
        return image.mode in GREY_MODES
    shape = np.shape(image)
    return len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 2))


def check_fillable(inputs: PreparedInputs, name: str = "image") -> None:
    """Raise :class:`InpaintingInputError` when nothing is left to inpaint from."""
    if not inputs.valid.any():
        raise InpaintingInputError(
            f"{name}: mask has no valid pixel (everything is a hole); there is nothing to "
            "inpaint from. Check the convention (white = keep, black = fill) or invert the mask"
        )


def compose_output(inputs: PreparedInputs, filled: np.ndarray) -> np.ndarray:
    """The result: kept pixels from the input, holes from ``filled`` (uint8 (H, W, 3)).

    uint8 (H, W, 3), or (H, W, 4) when the image had an alpha channel: the input's alpha on
    kept pixels, 255 (opaque) on filled ones. For a grey image (``inputs.grey``) the holes
    get the ITU-R 601 luma of ``filled`` (``round(0.299 R + 0.587 G + 0.114 B)``, as the
    GeoTIFF path writes grey bands) in all three channels, so R == G == B everywhere; see
    :func:`as_stored` for the single-channel form.
    """
    if inputs.grey:
        filled = np.repeat(_luma(np.asarray(filled, dtype=np.uint8))[:, :, None], 3, axis=2)
    rgb = np.where(inputs.valid[:, :, None], inputs.rgb, filled)
    if inputs.alpha is None:
        return rgb
    alpha = np.where(inputs.valid, inputs.alpha, np.uint8(255))
    return np.concatenate([rgb, alpha[:, :, None]], axis=2)


def as_stored(inputs: PreparedInputs, result: np.ndarray) -> np.ndarray:
    """``result`` of :func:`compose_output` with the image's channel layout.

    An image stored with one colour channel (``inputs.single_channel``: grey L, grey + alpha
    LA, ...) gets back uint8 (H, W), or (H, W, 2) grey + alpha; ``result`` as it is for any
    other image. Writing this array keeps a grey photograph grey (mode L or LA).
    """
    if not inputs.single_channel:
        return result
    grey = result[:, :, 0]
    if result.shape[2] == 4:
        return np.ascontiguousarray(np.stack([grey, result[:, :, 3]], axis=2))
    return np.ascontiguousarray(grey)


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
def _predict(
    model: torch.nn.Module, image: np.ndarray, valid: np.ndarray, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Model output for one padded image: float32 (h, w, 3) in [0, 1] and bool (h, w) *reached*.

    *reached* is the last layer's updated mask: True where the output is a prediction, False
    where no valid pixel was within the network's reach (output = 0 there, not a prediction).
    Models without ``forward_with_mask`` (test stand-ins) are taken to reach every pixel.
    """
    # NHWC (channels_last) memory: the model's convolutions run faster in it (README, benchmarks).
    x = torch.tensor(image, dtype=torch.float32)[None].permute(0, 3, 1, 2).to(device)
    m = torch.tensor(valid, dtype=torch.float32)[None, None].to(device)
    x = x.contiguous(memory_format=torch.channels_last) / 255.0
    with torch.inference_mode():
        if hasattr(model, "forward_with_mask"):
            out, reach = model.forward_with_mask(x, m)
            reached = (reach[0] > 0).any(dim=0).cpu().numpy()
        else:
            out = model(x, m)
            reached = np.ones(valid.shape, dtype=bool)
    return out[0].clamp(0.0, 1.0).permute(1, 2, 0).float().cpu().numpy(), reached


FAR_HOLE_METHODS = ("coarse", "passes")


def _one_pass(
    model: torch.nn.Module,
    image: np.ndarray,
    known: np.ndarray,
    device: torch.device,
    multiple: int,
    tile_size: int | None,
    overlap: int,
    progress: bool | None,
    name: str,
    needed: np.ndarray | None = None,
    max_side: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One run of the network over ``image`` (uint8 (H, W, 3)): (prediction float (H, W, 3)
    in [0, 1], bool (H, W) of the pixels it reached).

    With ``max_side`` (hole-aware, :mod:`aerial_inpainting.hole_regions`): the image is padded
    to a multiple of ``multiple`` and the network runs only on crops (at most ``max_side``
    a side) around the ``needed`` hole pixels (default: every hole pixel); the result equals
    the whole padded image's on those pixels. Otherwise in tiles when ``tile_size`` is given,
    else on the whole padded image.
    """
    if max_side is not None:
        height, width = image.shape[:2]
        ph, pw = _round_up(height, multiple), _round_up(width, multiple)
        wanted = ~known if needed is None else needed & ~known
        wanted_p = np.zeros((ph, pw), dtype=bool)
        wanted_p[:height, :width] = wanted  # mirrored holes of the padding are context only
        out, reach = predict_in_regions(
            model,
            _reflect_pad(image, ph, pw),
            _reflect_pad(known, ph, pw),
            device,
            needed=wanted_p,
            max_side=max_side,
            progress=progress,
            name=name,
        )
        return out[:height, :width], reach[:height, :width]
    if tile_size is not None:
        return _predict_tiled(
            model, image, known, device, multiple, int(tile_size), int(overlap), progress, name
        )
    height, width = image.shape[:2]
    ph, pw = _round_up(height, multiple), _round_up(width, multiple)
    out, reach = _predict(model, _reflect_pad(image, ph, pw), _reflect_pad(known, ph, pw), device)
    return out[:height, :width], reach[:height, :width]


def _half_size_fill(
    model: torch.nn.Module,
    rgb: np.ndarray,
    valid: np.ndarray,
    device: torch.device,
    tile_size: int | None,
    overlap: int,
    max_size: int,
    progress: bool | None,
    name: str,
    targets: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`fill_holes` of ``rgb`` shrunk 2x (:func:`_shrink2`), upsampled back (bilinear):
    float (H, W, 3) in [0, 1], for the pixels the full-resolution pass could not reach
    (only correct on ``targets`` when given: bool (H, W))."""
    height, width = rgb.shape[:2]
    small_rgb, small_valid = _shrink2(rgb, valid)
    small_targets = None
    if targets is not None:  # the blocks of the targets and their neighbours (bilinear)
        h2, w2 = small_valid.shape
        blocks = np.zeros((2 * h2, 2 * w2), dtype=bool)
        blocks[:height, :width] = targets
        small_targets = cv2.dilate(
            blocks.reshape(h2, 2, w2, 2).any(axis=(1, 3)).astype(np.uint8),
            np.ones((3, 3), np.uint8),
        ).astype(bool)
    coarse = fill_holes(
        model,
        small_rgb,
        small_valid,
        device,
        tile_size,
        overlap,
        max_size=max_size,
        progress=progress,
        name=name,
        far_holes="coarse",
        targets=small_targets,
    )
    return cv2.resize(
        coarse.astype(np.float32) / 255.0,
        (2 * coarse.shape[1], 2 * coarse.shape[0]),
        interpolation=cv2.INTER_LINEAR,
    )[:height, :width]


def fill_holes(
    model: torch.nn.Module,
    rgb: np.ndarray,
    valid: np.ndarray,
    device: str | torch.device | None = "cpu",
    tile_size: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    progress: bool | None = False,
    name: str = "image",
    far_holes: str = "coarse",
    targets: np.ndarray | None = None,
) -> np.ndarray:
    """Predict every hole pixel of ``rgb`` (uint8 (H, W, 3)); returns uint8 (H, W, 3).

    ``valid``: bool (H, W), True = keep; at least one pixel must be valid. The network runs
    once at full resolution, **hole-aware** for a PConvUNet (:mod:`aerial_inpainting.
    hole_regions`): only on crops around the holes, each with the network's receptive radius
    of context and at most ``tile_size`` (else ``max_size``) a side, so that every hole pixel
    gets the prediction the network gives on the whole padded image (within float rounding;
    no tile seams) and pixels far from any hole are never computed; an image without holes
    makes no network call. Models whose receptive field is unknown (no
    ``config.encoder_kernel``) run on the whole padded image, or in tiles of ``tile_size``
    (``max_size`` for larger images) blended over ``overlap`` pixels (see
    :func:`inpaint_image`). ``targets``: bool (H, W), the hole pixels the caller needs
    (None: all); other hole pixels may then come back unfilled. Hole pixels the network
    could not reach (its last layer's mask is 0 there: with the CPU network, depth 5, those
    more than about 79 px from any valid pixel) are then filled by ``far_holes``:

    * ``"coarse"`` (default, the better of the two in ``benchmarks/bench_out_of_reach.py``):
      the image is shrunk 2x (2x2 means of the valid pixels; a block with any valid pixel is
      valid), filled by this same function (so again 2x smaller where still needed), and
      its result upsampled (bilinear) into those pixels only;
    * ``"passes"``: the network runs again with every pixel predicted so far counted as valid,
      until none is left (each pass reaches at least the pixels next to a valid one: the last
      layer is a 3x3 partial convolution that sees the input mask).

    Pixels the full-resolution pass reached keep its prediction. Valid pixels of the returned
    array equal ``rgb``'s.
    """
    if far_holes not in FAR_HOLE_METHODS:
        raise ValueError(f"far_holes must be one of {FAR_HOLE_METHODS}, got {far_holes!r}")
    if not valid.any():
        raise InpaintingInputError(f"{name}: no valid pixel to inpaint from")
    multiple = model_multiple(model)
    device = resolve_device(device)
    model.eval().to(device, memory_format=torch.channels_last)
    height, width = rgb.shape[:2]
    max_side = None
    if receptive_radius(model) is not None:  # hole-aware: crops around the holes
        max_side = _round_up(max(int(tile_size or max_size), multiple), multiple)
    if tile_size is None and max(height, width) > max_size:
        tile_size = max_size
    tiled = tile_size is not None and max(height, width) > tile_size
    pass_tile = tile_size if tiled else None

    current, known = rgb.copy(), valid.copy()
    passes = 0
    while not known.all():
        passes += 1
        first_targets = targets if passes == 1 and max_side is not None else None
        prediction, reached = _one_pass(
            model,
            current,
            known,
            device,
            multiple,
            pass_tile,
            overlap,
            progress,
            name,
            needed=first_targets,
            max_side=max_side,
        )
        if first_targets is not None:
            if (reached | known | ~first_targets).all():  # every target filled: done
                new = reached & ~known
                current[new] = _to_uint8_image(prediction[new])
                return current
            # Some targets need more passes, whose context is every pixel predicted in this
            # one: predict the other holes too (a pixel's prediction does not depend on them).
            rest = ~known & ~first_targets
            more, more_reached = _one_pass(
                model,
                current,
                known,
                device,
                multiple,
                pass_tile,
                overlap,
                progress,
                name,
                needed=rest,
                max_side=max_side,
            )
            prediction[rest], reached = more[rest], reached | (more_reached & rest)
        new = reached & ~known
        if not new.any():  # cannot happen with a PConvUNet (see above); never loop forever
            raise RuntimeError(f"{name}: pass {passes} filled no hole pixel")
        current[new] = _to_uint8_image(prediction[new])
        known |= new
        if far_holes == "coarse" and not known.all():
            todo = ~known
            coarse = _half_size_fill(
                model,
                rgb,
                valid,
                device,
                tile_size,
                overlap,
                max_size,
                progress,
                name,
                targets=todo if targets is None else targets & todo,
            )
            current[todo] = _to_uint8_image(coarse[todo])
            logger.info(
                "%s: %d hole pixel(s) beyond the network's reach filled at 1/2 resolution "
                "(or coarser)",
                name,
                int(todo.sum()),
            )
            known[:] = True
    if passes > 1:
        logger.info("%s: holes wider than the network's reach filled in %d passes", name, passes)
    return current


def _to_uint8_image(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)


def _shrink2(rgb: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Half-size image and mask: each 2x2 block -> mean of its valid pixels, valid if any is.

    Odd sides get one more row/column that counts as not valid. Returns uint8 (ceil(H/2),
    ceil(W/2), 3) and bool.
    """
    height, width = valid.shape
    h2, w2 = -(-height // 2), -(-width // 2)
    weight = np.zeros((2 * h2, 2 * w2), dtype=np.float64)
    weight[:height, :width] = valid
    values = np.zeros((2 * h2, 2 * w2, 3), dtype=np.float64)
    values[:height, :width] = rgb * weight[:height, :width, None]
    count = weight.reshape(h2, 2, w2, 2).sum(axis=(1, 3))
    total = values.reshape(h2, 2, w2, 2, 3).sum(axis=(1, 3))
    small = np.where(count[:, :, None] > 0, total / np.maximum(count, 1)[:, :, None], 0.0)
    return np.clip(np.rint(small), 0, 255).astype(np.uint8), count > 0


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
    backend: str = "torch",
) -> np.ndarray:
    """Fill the holes of ``image`` (any size) where ``mask`` is 0.

    ``image``: PIL image or array (see :func:`load_image_input`); ``mask``: see
    :func:`prepare_mask`. ``tile_size``: largest side of one network call (rounded up to a
    multiple of ``2**depth``; default ``max_size``): the side of the hole-aware crops (see
    :func:`fill_holes`), or, for a model of unknown receptive field, of overlapping tiles
    (used when a side exceeds ``max_size``) blended over ``overlap`` pixels.
    ``progress``: tqdm bar over crops or tiles (None = only on a terminal).
    Returns uint8 (H, W, 3) (or (H, W, 4) for an image with alpha, see
    :func:`compose_output`) whose kept pixels equal the input's exactly and whose every hole
    pixel is a prediction (:func:`fill_holes`). A mask without holes returns the image
    unchanged; a mask without any valid pixel is refused (:class:`InpaintingInputError`).
    Notes for the user (:class:`PreparedInputs`) are logged as warnings.
    The model is put in eval mode and moved to ``device`` in channels_last memory format.
    ``backend``: ``"torch"`` (default) or ``"onnx"``: the network runs in onnxruntime on the
    CPU (:func:`aerial_inpainting.onnx_backend.with_backend`, extra ``onnx``).
    """
    if backend != "torch":
        from aerial_inpainting.onnx_backend import with_backend

        model = with_backend(model, backend)
    inputs = prepare_inputs(
        image, mask, threshold=threshold, invert_mask=invert_mask, name=name, mask_name=name
    )
    for note in inputs.notes:
        logger.warning("%s", note)
    if inputs.valid.all():
        logger.info("%s: mask has no hole, image returned unchanged", name)
    return fill_prepared(
        model, inputs, device, tile_size, overlap, max_size=max_size, progress=progress, name=name
    )


def fill_prepared(
    model: torch.nn.Module,
    inputs: PreparedInputs,
    device: str | torch.device | None,
    tile_size: int | None,
    overlap: int,
    *,
    max_size: int,
    progress: bool | None,
    name: str,
    mask_name: str | None = None,
) -> np.ndarray:
    """The composed result (:func:`compose_output`) of prepared ``inputs``: the input itself
    when the mask has no hole, else its holes filled by :func:`fill_holes`.

    Raises :class:`InpaintingInputError` naming ``mask_name`` (default ``name``) when the mask
    has no valid pixel.
    """
    if inputs.valid.all():
        return compose_output(inputs, inputs.rgb)
    check_fillable(inputs, mask_name or name)
    filled = fill_holes(
        model,
        inputs.rgb,
        inputs.valid,
        device,
        tile_size,
        overlap,
        max_size=max_size,
        progress=progress,
        name=name,
    )
    return compose_output(inputs, filled)


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
) -> tuple[np.ndarray, np.ndarray]:
    """Model output assembled from overlapping tiles, blended with linear ramps.

    Only tiles holding a hole pixel run; a tile's output counts only where the network reached
    (its weight is 0 elsewhere). Returns float32 (H, W, 3) and bool (H, W) *reached*.
    """
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
        if not tile_valid.any():
            continue  # wholly inside a hole: nothing to see yet (a later pass comes back)
        out, reached = _predict(model, image_p[y : y + th, x : x + tw], tile_valid, device)
        wy = _ramp(th, overlap, first=y == ys[0], last=y == ys[-1])
        wx = _ramp(tw, overlap, first=x == xs[0], last=x == xs[-1])
        w = wy[:, None] * wx[None, :] * reached
        acc[y : y + th, x : x + tw] += out * w[:, :, None]
        weight[y : y + th, x : x + tw] += w
    # Pixels no processed tile covered are valid pixels, or holes left for the next pass.
    prediction = acc / np.maximum(weight, 1e-12)[:, :, None]
    return prediction[:height, :width], (weight > 0)[:height, :width]
