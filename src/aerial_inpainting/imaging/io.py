"""Reading image files into 8-bit RGB arrays of a fixed square size.

Conversion rules (documented in the README, tested in tests/data_processing):

* RGB is kept as decoded: a 256x256 JPEG is stored pixel-for-pixel, never re-encoded.
* Grayscale (L, 1) is replicated to three channels.
* Alpha (RGBA, LA, PA, P with transparency) is composited on black: ``rgb * alpha / 255``,
  so transparent no-data areas become black instead of showing hidden colours.
* Palette (P) images are expanded through their palette.
* CMYK uses Pillow's conversion (R = (255 - C) * (255 - K) / 255, ...).
* 16-bit grayscale (I;16, I;16B, I) is scaled linearly: ``round(v * 255 / 65535)``.
* EXIF ``Orientation`` is applied first (``ImageOps.exif_transpose``): pixels are stored the
  way photo viewers show them.
* Rasters above Pillow's decompression-bomb limit are refused as *too large* (the message
  gives the limit and how to lift it: :func:`pillow_pixel_limit`), never as corrupt.
* Other sizes are centre-cropped to a square and resized with Lanczos filtering.
  Images whose shorter side is below the target size are, by policy, skipped or upscaled.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff"})
SMALL_IMAGE_POLICIES = ("skip", "upscale")

# Modes holding 16-bit (or wider integer) samples, scaled to 8 bits.
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


class ImageReadError(ValueError):
    """A file that cannot become an 8-bit RGB image; ``reason`` says why, for reports."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class DecodedImage:
    """A decoded, converted image and what the source file looked like."""

    pixels: np.ndarray  # uint8 (size, size, 3)
    original_width: int
    original_height: int
    original_mode: str
    upscaled: bool = False


def too_large_reason(exc: BaseException | None = None) -> str:
    """Why a raster was refused by Pillow's decompression-bomb check, and how to lift it."""
    limit = Image.MAX_IMAGE_PIXELS
    size = f" ({exc})" if exc is not None else ""
    shown = f"{2 * limit:,}" if limit else "none"
    return (
        f"image too large for Pillow's decompression-bomb limit of {shown} pixels{size}; "
        "if you trust the file, raise the limit: --max-image-pixels N on the command line, "
        "inpaint.max_image_pixels (0 = no limit) in the pipeline"
    )


@contextlib.contextmanager
def pillow_pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """Within the block, Pillow refuses rasters above ``max_pixels`` (0 = no limit).

    ``None`` keeps Pillow's default (``Image.MAX_IMAGE_PIXELS``: a warning above it, an error
    above twice it). Pillow's setting is global: it is restored on exit.
    """
    previous = Image.MAX_IMAGE_PIXELS
    if max_pixels is not None:
        # Pillow raises above 2 * MAX_IMAGE_PIXELS; the warning between 1x and 2x is ignored here.
        Image.MAX_IMAGE_PIXELS = (int(max_pixels) + 1) // 2 if max_pixels else None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def upright(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF ``Orientation`` tag says (as photo viewers show it)."""
    try:
        return ImageOps.exif_transpose(image) or image
    except (OSError, ValueError, SyntaxError, KeyError, TypeError):  # unreadable EXIF block
        return image


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageReadError(path, f"cannot read file: {exc.strerror or exc}") from exc
    if not data:
        raise ImageReadError(path, "empty file (0 bytes)")
    return data


def _open_header(path: Path, data: bytes) -> Image.Image:
    """Parse the header only (lazy Pillow image over the in-memory bytes)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ImageReadError(path, "not a readable image (unknown or corrupt format)") from exc
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, too_large_reason(exc)) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(path, f"corrupt image header ({exc})") from exc


def _load(path: Path, image: Image.Image) -> Image.Image:
    """Fully decode with Pillow: truncated or corrupt data fail here."""
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, too_large_reason(exc)) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(path, f"corrupt or truncated image ({exc})") from exc
    return image


def open_image(path: str | Path, orient: bool = False) -> Image.Image:
    """Open and fully decode an image file, turning every failure into ImageReadError.

    ``orient``: apply the EXIF orientation (:func:`upright`).
    """
    path = Path(path)
    data = _read_bytes(path)
    image = _load(path, _open_header(path, data))
    return upright(image) if orient else image


def _composite_on_black(rgba: np.ndarray) -> np.ndarray:
    """Premultiply RGB by alpha (integer arithmetic, round half up)."""
    rgb = rgba[..., :3].astype(np.uint32)
    alpha = rgba[..., 3:4].astype(np.uint32)
    return ((rgb * alpha + 127) // 255).astype(np.uint8)


def to_rgb8(image: Image.Image) -> np.ndarray:
    """Convert any supported Pillow image to a uint8 (H, W, 3) RGB array."""
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image, dtype=np.uint8)
    if mode in ("L", "1"):
        gray = np.asarray(image.convert("L"), dtype=np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.int64)
        if values.min() < 0 or values.max() > 65535:
            raise ValueError(f"{mode} image has values outside 0..65535")
        gray = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "P":
        has_alpha = "transparency" in image.info or image.palette.mode == "RGBA"
        image = image.convert("RGBA" if has_alpha else "RGB")
        mode = image.mode
        if mode == "RGB":
            return np.asarray(image, dtype=np.uint8)
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        if mode in ("La", "RGBa"):  # already premultiplied
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
        return _composite_on_black(np.asarray(image.convert("RGBA"), dtype=np.uint8))
    if mode == "CMYK" or mode in ("YCbCr", "LAB", "HSV", "RGBX"):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    raise ValueError(f"unsupported image mode {mode!r}")


def center_crop_resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square, then resize to ``size`` (Lanczos); no-op when already right."""
    height, width = pixels.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = pixels[top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(square)
    resized = Image.fromarray(np.ascontiguousarray(square)).resize(
        (size, size), Image.Resampling.LANCZOS
    )
    return np.asarray(resized, dtype=np.uint8)


def read_rgb_image(path: str | Path, size: int, small_images: str = "skip") -> DecodedImage:
    """Read one file as a uint8 (size, size, 3) RGB array, or raise ImageReadError.

    ``small_images`` decides what happens to an image whose shorter side is below ``size``:
    "skip" raises ImageReadError (the file goes to the data-quality report); "upscale" keeps
    it, resized up, with ``upscaled=True`` so the caller can report it too.
    """
    if small_images not in SMALL_IMAGE_POLICIES:
        raise ValueError(
            f"small_images must be one of {SMALL_IMAGE_POLICIES}, got {small_images!r}"
        )
    path = Path(path)
    data = _read_bytes(path)
    image = _open_header(path, data)
    try:
        width, height = image.size
        mode = image.mode
        too_small = min(width, height) < size
        if too_small and small_images == "skip":
            raise ImageReadError(
                path, f"image smaller than the crop ({width}x{height} < {size}x{size})"
            )
        oriented = upright(_load(path, image))
        width, height = oriented.size  # as displayed
        rgb = to_rgb8(oriented)
    except (ValueError, OSError) as exc:
        if isinstance(exc, ImageReadError):
            raise
        raise ImageReadError(path, f"cannot convert to 8-bit RGB: {exc}") from exc
    finally:
        image.close()
    return DecodedImage(
        pixels=center_crop_resize(rgb, size),
        original_width=width,
        original_height=height,
        original_mode=mode,
        upscaled=too_small,
    )


# ------------------------------------------------------------------ photo metadata
# TIFF tags describing the stored pixels (size, layout, compression, colour model, offsets,
# ICC profile, XMP): never copied from an input's IFD0 into a new file's EXIF.
_STRUCTURE_TAGS = frozenset(
    {254, 255, 256, 257, 258, 259, 262, 266, 273, 277, 278, 279, 284, 317, 320, 322, 323}
    | {324, 325, 338, 339, 340, 341, 347, 513, 514, 530, 531, 532, 700, 34675}
)
_SUB_IFDS = (0x8769, 0x8825, 0xA005)  # Exif, GPS, Interoperability
_ORIENTATION = 0x0112
_PIXEL_X, _PIXEL_Y = 0xA002, 0xA003  # PixelXDimension, PixelYDimension (Exif IFD)
_XMP_ORIENTATION = re.compile(rb"(tiff:Orientation\s*(?:=\s*[\"']|>)\s*)\d")


@dataclass(frozen=True)
class PhotoMetadata:
    """What a photograph carries besides its pixels, ready to be written to a result.

    ``exif``: the EXIF tags of IFD0 (camera, date, ...) with their Exif, GPS and
    Interoperability sub-IFDs, Orientation set to 1 (the result is stored upright) and no
    thumbnail; ``xmp``: the XMP packet (bytes; ``tiff:Orientation`` set to 1 too);
    ``icc_profile``: the ICC colour profile (bytes). Each None when absent.
    """

    exif: Image.Exif | None = None
    xmp: bytes | None = None
    icc_profile: bytes | None = None


def read_photo_metadata(path: str | Path) -> PhotoMetadata:
    """EXIF, XMP and ICC profile of the image file ``path`` (header only, no decoding).

    Never raises: an unreadable file or a corrupt EXIF block gives what could be read
    (empty :class:`PhotoMetadata` at worst); the pixels are read and checked elsewhere.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(Path(path)) as image:
                return photo_metadata(image)
    except Exception:  # metadata is best effort: the image's own reader reports bad files
        return PhotoMetadata()


def photo_metadata(image: Image.Image) -> PhotoMetadata:
    """:class:`PhotoMetadata` of an open Pillow image (see there)."""
    icc = image.info.get("icc_profile") or None
    xmp = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    if xmp:
        xmp = _XMP_ORIENTATION.sub(rb"\g<1>1", xmp)
    try:
        source = image.getexif()
        exif = Image.Exif()
        for tag, value in source.items():
            if tag in _STRUCTURE_TAGS or tag in _SUB_IFDS:
                continue
            exif[tag] = value
        for tag in _SUB_IFDS:
            if tag in source:
                sub = dict(source.get_ifd(tag))
                if sub:
                    exif[tag] = sub
        if _ORIENTATION in exif:
            exif[_ORIENTATION] = 1
    except Exception:  # a corrupt EXIF block: keep the rest
        exif = None
    return PhotoMetadata(exif=exif if exif else None, xmp=xmp or None, icc_profile=icc)


def metadata_save_options(
    metadata: PhotoMetadata | None, fmt: str, size: tuple[int, int]
) -> dict:
    """Pillow ``save`` keyword arguments writing ``metadata`` into a ``fmt`` file (Pillow's
    format name: PNG, TIFF, JPEG, WEBP; others hold none of it) of ``size`` (width, height),
    which also becomes EXIF's PixelXDimension/PixelYDimension when they were present."""
    if metadata is None or fmt not in ("PNG", "TIFF", "JPEG", "MPO", "WEBP"):
        return {}
    options: dict = {}
    if metadata.icc_profile:
        options["icc_profile"] = metadata.icc_profile
    exif = None
    if metadata.exif is not None:
        exif = Image.Exif()
        for tag, value in metadata.exif.items():
            exif[tag] = dict(value) if isinstance(value, dict) else value
        sub = exif.get(0x8769)
        if isinstance(sub, dict):
            for tag, length in ((_PIXEL_X, size[0]), (_PIXEL_Y, size[1])):
                if tag in sub:
                    sub[tag] = length
    if fmt == "TIFF":  # XMP is TIFF tag 700, beside the EXIF tags of IFD0
        if metadata.xmp:
            exif = exif if exif is not None else Image.Exif()
            exif[700] = metadata.xmp
        if exif is not None:
            options["exif"] = exif.tobytes()
        return options
    if exif is not None:
        options["exif"] = exif.tobytes()
    if metadata.xmp:
        if fmt == "PNG":
            from PIL import PngImagePlugin

            info = PngImagePlugin.PngInfo()
            info.add_itxt("XML:com.adobe.xmp", metadata.xmp.decode("utf-8", "replace"))
            options["pnginfo"] = info
        else:
            options["xmp"] = metadata.xmp
    return options
