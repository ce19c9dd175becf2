"""GeoTIFFs and rasters of any size: windowed inpainting through rasterio (optional extra ``geo``).

:func:`inpaint_raster` fills the holes of a raster file window by window, never loading it
whole, with the same code as every other entry point (:func:`~aerial_inpainting.inference.
prepare_mask` for masks, :func:`~aerial_inpainting.inference.fill_holes` for the network).

* **Georeferencing is kept**: CRS, geotransform, GCPs (with their CRS), RPCs, nodata value,
  band count, dtype, colour interpretation, band descriptions and dataset tags are copied to
  the result; a world file beside the input (``.tfw``, ``.pgw``, ``.wld``, ...) is read by GDAL
  and one is written beside the output (``.tfw``/``.pgw``); the tags
  ``INPAINTED=yes``, ``INPAINTING_MODEL``, ``INPAINTING_SOFTWARE``, ``INPAINTING_MASK`` and
  ``INPAINTED_PIXELS`` are added.
* **Band policy**: every band must be 8-bit (uint8); other dtypes (uint16, float32 DEMs, ...)
  are refused with a message saying how to convert, never rescaled silently. Red, green and
  blue are the bands whose colour interpretation says so (B,G,R,NIR stacks), else the first
  three bands that are not alpha; a raster with one non-alpha band is
  grey (replicated to RGB for the network, written back as the ITU-R 601 luma of the
  prediction). An alpha band (colour interpretation *alpha*) marks holes where it is 0 and
  is 255 on filled pixels. Every further band (near infrared, ...) is passed through untouched.
* **Holes**: pixels whose colour bands all equal their nodata value, pixels where the alpha
  band is 0 and pixels the internal mask band marks invalid are holes; a mask file, when
  given, adds its own holes (it combines with nodata, it does not replace it). No-data
  connected to the raster's border (the collar around a tile's footprint) is *not* a hole
  by default: it stays exactly no-data (``fill_nodata="all"`` fills it too). A georeferenced
  mask must lie on the image's grid (same CRS and transform), else it is refused. A filled pixel
  whose colour would equal the nodata value is moved by one grey level (so it does not read as
  nodata again).
* **Windows**: the raster is cut into cores of ``window_size - 2 * halo`` pixels; each is
  inpainted with ``halo`` pixels of context on every side (one read of at most
  ``window_size``² pixels) and written with ``halo // 2`` pixels beyond the core, where it is
  blended with its already written neighbours by linear ramps (feathering). Window origins are
  multiples of the network's ``2**depth``, so where ``halo // 2`` is at least the network's
  receptive radius (measured: 22 px for depth 3, 94 px for depth 5, 318 px for depth 7;
  :func:`receptive_radius` bounds it from above) every written hole pixel saw the same context
  as in a whole-raster pass, and windowed and whole results agree to within one grey level
  (rounding in the blend) on hole pixels within the network's reach of a valid pixel. The
  default halo is twice that bound, capped at a quarter of ``window_size``. Windows without any valid pixel (inside large nodata
  areas) take a filled overview of the whole raster (at most ``max_size`` on its longer side),
  upsampled. Peak memory is that of one window, plus the overview and GDAL's block cache
  (capped at :data:`GDAL_CACHE_MB` unless ``GDAL_CACHEMAX`` is set).
* **Layout is kept**: compression, predictor, block size and interleaving are the input's;
  overviews are rebuilt from the filled pixels at the input's factors (average resampling);
  a Cloud Optimized GeoTIFF gives a COG (GDAL's COG driver). The windows are written to a
  scratch GeoTIFF that GDAL then copies once into the output, so blocks re-written while
  blending leave no dead space in it. Lossy compression of the input (JPEG, WEBP) is not
  reused: the result is written DEFLATE-compressed so its valid pixels stay bit-identical.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from aerial_inpainting.inference import (
    InpaintingInputError,
    NonBinaryMaskWarning,
    fill_holes,
    model_multiple,
    prepare_mask,
)

logger = logging.getLogger(__name__)

GEO_EXTRA = 'GeoTIFF support needs the optional extra "geo" (rasterio): pip install -e ".[geo]"'
TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
# TIFF tags that make a TIFF a GeoTIFF (ModelPixelScale, ModelTiepoint (also GCPs),
# ModelTransformation, GeoKeyDirectory), carry GDAL's nodata value or RPCs (RPCCoefficient).
GEO_TIFF_TAGS = frozenset({33550, 33922, 34264, 34735, 42113, 50844})
FILL_NODATA_CHOICES = ("inside", "all")
LOSSY_COMPRESSION = frozenset({"jpeg", "webp", "lerc", "lerc_deflate", "lerc_zstd", "jxl"})
DEFAULT_WINDOW_SIZE = 2048
GDAL_CACHE_MB = 128  # GDAL's block cache during inpaint_raster, unless GDAL_CACHEMAX is set


class GeoDependencyError(RuntimeError):
    """rasterio is not installed; the message names the extra that installs it."""


def require_rasterio(what: str = "") -> Any:
    """The rasterio module, or :class:`GeoDependencyError` naming the ``geo`` extra."""
    try:
        import rasterio
    except ImportError as exc:
        prefix = f"{what}: " if what else ""
        raise GeoDependencyError(f"{prefix}{GEO_EXTRA}") from exc
    return rasterio


def has_rasterio() -> bool:
    try:
        require_rasterio()
    except GeoDependencyError:
        return False
    return True


def is_georeferenced_tiff(path: str | Path) -> bool:
    """True for a TIFF carrying georeferencing or a GDAL nodata tag (read from its header only).

    Works without rasterio (Pillow reads the tags), so a GeoTIFF is never silently processed
    as a plain picture that would lose its georeferencing.
    """
    path = Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES or not path.is_file():
        return False
    from PIL import Image

    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # only the header is read
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                tags = set(getattr(image, "tag_v2", {}) or {})
    except Exception:  # unreadable for Pillow: let rasterio (if any) or the reader tell why
        return has_rasterio() and _rasterio_georeferenced(path)
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    return bool(tags & GEO_TIFF_TAGS)


def is_georeferenced(path: str | Path) -> bool:
    """True for an image GDAL reads as georeferenced: a GeoTIFF (:func:`is_georeferenced_tiff`:
    geotransform, GCPs, RPCs or nodata in its tags), or any image with georeferencing in a
    file beside it (world file ``.tfw``/``.pgw``/``.jgw``/``.wld``, ``.aux.xml``, RPC text
    file: :func:`aerial_inpainting.georef_sidecars.georeferencing_sidecars`).

    Such images take the raster path, which keeps their georeferencing. Works without rasterio.
    """
    from aerial_inpainting.georef_sidecars import georeferencing_sidecars

    path = Path(path)
    if not path.is_file():
        return False
    return is_georeferenced_tiff(path) or bool(georeferencing_sidecars(path))


def _rasterio_georeferenced(path: Path) -> bool:
    rasterio = require_rasterio()
    try:
        with _quiet_rasterio(), rasterio.open(path) as src:
            return src.nodata is not None or _has_georeferencing(src)
    except Exception:
        return False


def _has_georeferencing(src: Any) -> bool:
    """An open dataset has a CRS, a geotransform, GCPs or RPCs."""
    return (
        src.crs is not None
        or not src.transform.is_identity
        or bool(src.gcps[0])
        or src.rpcs is not None
    )


@contextlib.contextmanager
def _quiet_rasterio() -> Iterator[None]:
    """Plain (not georeferenced) images are fine here: no NotGeoreferencedWarning."""
    with warnings.catch_warnings():
        try:
            from rasterio.errors import NotGeoreferencedWarning

            warnings.simplefilter("ignore", NotGeoreferencedWarning)
        except ImportError:
            pass
        yield


@dataclass
class RasterOutcome:
    """What :func:`inpaint_raster` did: size, holes filled, notes for the user."""

    width: int
    height: int
    hole_pixels: int
    notes: list[str] = field(default_factory=list)

    @property
    def hole_ratio(self) -> float:
        return self.hole_pixels / float(self.width * self.height)


@dataclass
class _Bands:
    """1-based band indexes: colour (3 RGB or 1 grey), alpha (or None), passed-through extras."""

    colour: list[int]
    alpha: int | None
    extra: list[int]
    internal_mask: bool


def receptive_radius(model: torch.nn.Module) -> int:
    """Upper bound (pixels) on how far an output pixel of a PConvUNet looks into its input.

    Encoder kernels (7, 5, 5, 3, ...) at strides 1, 2, 4, ..., the decoder's 3x3 layers at
    strides 2**(depth-1) .. 1, plus 2**depth for the nearest-neighbour upsampling; measured
    radii (22, 94, 318 px for depth 3, 5, 7) lie below it.
    """
    config = model.config
    depth = int(config.depth)
    encoder = sum((config.encoder_kernel(i) - 1) // 2 * 2**i for i in range(depth))
    decoder = sum(2**j for j in range(depth))
    return encoder + decoder + 2**depth


def default_halo(model: torch.nn.Module, window_size: int) -> int:
    """Twice :func:`receptive_radius` (so windows equal the whole pass), capped at a quarter
    of ``window_size``, in multiples of the model's ``2**depth``."""
    multiple = model_multiple(model)
    halo = _round_up(2 * receptive_radius(model), multiple)
    cap = max(multiple, (int(window_size) // 4) // multiple * multiple)
    return min(halo, cap)


def _band_roles(src: Any, name: str) -> _Bands:
    from rasterio.enums import ColorInterp, MaskFlags

    bad = sorted({dtype for dtype in src.dtypes if dtype != "uint8"})
    if bad:
        raise InpaintingInputError(
            f"{name}: band dtype {', '.join(bad)} is not supported: only 8-bit (uint8) rasters "
            "are inpainted (the network was trained on 8-bit photographs); convert first, "
            "e.g. gdal_translate -ot Byte -scale IN OUT"
        )
    if src.count and src.colorinterp[0] == ColorInterp.palette:
        raise InpaintingInputError(
            f"{name}: palette (indexed-colour) rasters are not supported; expand the palette "
            "first, e.g. gdal_translate -expand rgb IN OUT"
        )
    indexes = list(range(1, src.count + 1))
    alphas = [i for i in indexes if src.colorinterp[i - 1] == ColorInterp.alpha]
    alpha = alphas[0] if alphas else None
    others = [i for i in indexes if i != alpha]
    if not others:
        raise InpaintingInputError(f"{name}: no colour band (only an alpha band)")
    colour = _colour_by_interpretation(src, others)
    if colour is None:
        colour = others[:3] if len(others) >= 3 else others[:1]
    extra = [i for i in others if i not in colour]
    flags = src.mask_flag_enums[0] if src.count else []
    internal = MaskFlags.per_dataset in flags and not (
        MaskFlags.alpha in flags or MaskFlags.nodata in flags
    )
    return _Bands(colour, alpha, extra, internal)


def _colour_by_interpretation(src: Any, indexes: list[int]) -> list[int] | None:
    """[red, green, blue] band indexes found by colour interpretation among ``indexes``
    (B,G,R,NIR stacks of Planet, Sentinel, Landsat), or None when one of them is missing."""
    from rasterio.enums import ColorInterp

    found: dict[Any, int] = {}
    for index in indexes:
        found.setdefault(src.colorinterp[index - 1], index)
    wanted = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    if all(c in found for c in wanted):
        return [found[c] for c in wanted]
    return None


def _windows(length: int, core: int, halo: int, feather: int) -> list[tuple[int, int, int, int]]:
    """Along one axis: (read_start, read_stop, write_start, write_stop) per core, in order."""
    spans = []
    for start in range(0, length, core):
        stop = min(start + core, length)
        spans.append(
            (
                max(0, start - halo),
                min(length, stop + halo),
                max(0, start - feather) if start > 0 else 0,
                min(length, stop + feather),
            )
        )
    return spans


def _blend_ramp(length: int, offset: int, feather: int, has_before: bool) -> np.ndarray:
    """Weight of the new window along one axis of its write region.

    Rises linearly over the ``2 * feather`` pixels it shares with the window before it
    (``(i + 0.5) / (2 * feather)``, so the two weights sum to 1), then stays 1.
    """
    weights = np.ones(length, dtype=np.float32)
    if has_before and feather > 0:
        ramp = (np.arange(2 * feather, dtype=np.float32) + 0.5) / (2 * feather)
        weights[offset : offset + 2 * feather] = ramp[: max(0, length - offset)]
    return weights


class _RasterReader:
    """Windowed reads of colour, alpha and holes of a raster (and of an optional mask file)."""

    def __init__(
        self,
        src: Any,
        bands: _Bands,
        mask_src: Any | None,
        threshold: float | None,
        invert_mask: bool,
        name: str,
        mask_name: str,
    ) -> None:
        self.src, self.bands, self.mask_src = src, bands, mask_src
        self.threshold, self.invert_mask = threshold, invert_mask
        self.name, self.mask_name = name, mask_name
        nodata = [src.nodatavals[i - 1] for i in bands.colour]
        self.nodata = None if any(v is None for v in nodata) else nodata
        self.notes: list[str] = []
        # bool (H, W): no-data connected to the border, kept as no-data (None: fill it all).
        self.collar: np.ndarray | None = None

    @property
    def can_have_nodata(self) -> bool:
        """The raster marks pixels as no-data (nodata value, alpha band or mask band)."""
        return (
            self.nodata is not None
            or self.bands.alpha is not None
            or self.bands.internal_mask
        )

    def _data_valid(
        self, data: np.ndarray, window: Any, out_shape: tuple[int, int] | None
    ) -> np.ndarray:
        """bool (h, w): pixels that are data (not nodata, alpha 0 or masked) in ``data``."""
        colour = data[[i - 1 for i in self.bands.colour]]
        valid = np.ones(data.shape[1:], dtype=bool)
        if self.nodata is not None:
            nodata = np.array(self.nodata, dtype=np.float64)[:, None, None]
            valid &= ~(colour == nodata).all(axis=0)
        if self.bands.alpha is not None:
            valid &= data[self.bands.alpha - 1] != 0
        if self.bands.internal_mask:
            mask_shape = {} if out_shape is None else {"out_shape": out_shape}
            valid &= self.src.read_masks(1, window=window, **mask_shape) != 0
        return valid

    def data_valid(self, window: Any) -> np.ndarray:
        """bool (h, w) of :meth:`_data_valid` for ``window`` (the mask file is not read)."""
        indexes = sorted({*self.bands.colour, *([self.bands.alpha] if self.bands.alpha else [])})
        data = np.zeros((self.src.count, int(window.height), int(window.width)), np.uint8)
        data[[i - 1 for i in indexes]] = self.src.read(indexes, window=window)
        return self._data_valid(data, window, None)

    def read(self, window: Any, out_shape: tuple[int, int] | None = None) -> dict[str, Any]:
        """Arrays of one window: all bands (b, h, w), rgb (h, w, 3), valid (h, w) and parts."""
        from rasterio.enums import Resampling

        shape = {} if out_shape is None else {"out_shape": (self.src.count, *out_shape)}
        data = self.src.read(window=window, resampling=Resampling.nearest, **shape)
        colour = data[[i - 1 for i in self.bands.colour]]
        rgb = np.repeat(colour, 3, axis=0) if colour.shape[0] == 1 else colour
        valid = self._data_valid(data, window, out_shape)
        from_data = valid.copy()
        if self.mask_src is not None:
            mask_shape = (
                {} if out_shape is None else {"out_shape": (self.mask_src.count, *out_shape)}
            )
            mask = self.mask_src.read(
                window=window, resampling=Resampling.nearest, **mask_shape
            ).transpose(1, 2, 0)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", NonBinaryMaskWarning)
                mask_valid = prepare_mask(
                    mask, threshold=self.threshold, invert=self.invert_mask, name=self.mask_name
                )
            for warning in caught:
                note = str(warning.message)
                if issubclass(warning.category, NonBinaryMaskWarning):
                    note = note.split(" (")[0] + f"; thresholded at {self.threshold}"
                if note not in self.notes:
                    self.notes.append(note)
            valid &= mask_valid
        return {
            "data": data,
            "rgb": np.ascontiguousarray(rgb.transpose(1, 2, 0)),
            "valid": valid,
            "from_data": from_data,
        }


def border_nodata(reader: _RasterReader, rows_per_read: int = 512) -> np.ndarray | None:
    """bool (H, W): the raster's no-data pixels 8-connected to its border (the collar around
    an orthophoto tile's footprint), or None when the raster has no nodata value, alpha or
    mask band. Read in strips of ``rows_per_read`` rows; costs one byte per pixel (a flood
    fill, ``cv2.floodFill``, from every no-data pixel of the border)."""
    from rasterio.windows import Window

    if not reader.can_have_nodata:
        return None
    src = reader.src
    height, width = src.height, src.width
    marks = np.zeros((height, width), np.uint8)  # 1: no-data, 2: no-data reached from the border
    for y0 in range(0, height, rows_per_read):
        rows = min(rows_per_read, height - y0)
        marks[y0 : y0 + rows] = ~reader.data_valid(Window(0, y0, width, rows))
    if not marks.any():
        return None
    edges = [(0, x) for x in range(width)] + [(height - 1, x) for x in range(width)]
    edges += [(y, 0) for y in range(height)] + [(y, width - 1) for y in range(height)]
    for y, x in edges:
        if marks[y, x] == 1:
            cv2.floodFill(marks, None, (x, y), 2, 0, 0, 8)
    return marks == 2


def _output_profile(src: Any) -> dict[str, Any]:
    profile = dict(src.profile)
    profile.update(driver="GTiff", BIGTIFF="IF_SAFER")
    compress = str(profile.get("compress") or "").lower()
    if compress in LOSSY_COMPRESSION:
        profile["compress"] = "deflate"
        for key in ("jpeg_quality", "quality", "photometric"):
            profile.pop(key, None)
    if src.width > 512 or src.height > 512:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    elif not profile.get("tiled"):
        profile.pop("blockxsize", None)
        profile.pop("blockysize", None)
    return profile


def inpaint_raster(
    model: torch.nn.Module,
    image_path: str | Path,
    output_path: str | Path,
    mask_path: str | Path | None = None,
    *,
    threshold: float | None = 128,
    invert_mask: bool = False,
    device: str | torch.device | None = "cpu",
    window_size: int | None = DEFAULT_WINDOW_SIZE,
    halo: int | None = None,
    tile_size: int | None = None,
    overlap: int = 64,
    max_size: int = 1024,
    model_label: str = "",
    progress: bool | None = False,
    say: Callable[[str], None] | None = None,
    fill_nodata: str = "inside",
) -> RasterOutcome:
    """Inpaint a raster file (GeoTIFF, or any image GDAL reads) window by window.

    ``image_path``: uint8 raster, 1-4+ bands (policy in the module docstring).
    ``mask_path``: optional mask file of the same size (white = keep, black = fill, as
    everywhere; ``threshold``/``invert_mask`` as in :func:`prepare_mask`); its holes combine
    with the raster's nodata/alpha/mask-band holes. ``output_path``: ``.tif``/``.tiff``
    (GeoTIFF, written window by window) or ``.png`` (a temporary GeoTIFF copied to PNG by
    GDAL, line by line). ``window_size``: side of the largest read (None: the whole raster
    in one window); ``halo``: context on each side of a core, half of it blended with the
    neighbours (None: :func:`default_halo`). ``fill_nodata``: ``"inside"`` fills no-data
    pixels inside the data (gaps) but leaves no-data connected to the raster's border (the
    collar around a tile's footprint, :func:`border_nodata`) exactly as it is; ``"all"``
    fills the collar too. Raises :class:`InpaintingInputError` for bad input (dtype, sizes,
    a georeferenced mask on another grid, no valid pixel, ``output_path`` naming the image,
    the mask or one of their sidecars), :class:`GeoDependencyError` without rasterio.

    What the output keeps (module docstring): GCPs and RPCs are copied; overviews are
    rebuilt from the filled pixels at the input's factors (average resampling); a COG input
    gives a COG output (GDAL's COG driver); compression, block size and interleaving are
    the input's (lossless instead of lossy); a world file beside the input gives one beside
    the output (``.tfw``/``.pgw``, written by GDAL). The result is written to a scratch
    GeoTIFF window by window, then copied once by GDAL into a temporary file that replaces
    ``output_path`` only when complete (so re-written compressed blocks leave no dead space).
    """
    rasterio = require_rasterio(f"image {image_path}")

    image_path, output_path = Path(image_path), Path(output_path)
    name, mask_name = f"image {image_path}", f"mask {mask_path}"
    if fill_nodata not in FILL_NODATA_CHOICES:
        raise InpaintingInputError(
            f"fill_nodata must be one of {', '.join(FILL_NODATA_CHOICES)}, got {fill_nodata!r}"
        )
    if output_path.suffix.lower() not in TIFF_SUFFIXES | {".png"}:
        raise InpaintingInputError(
            f"output {output_path}: rasters processed in windows are written as .tif "
            "(GeoTIFF) or .png"
        )
    from aerial_inpainting.georef_sidecars import (
        find_world_file,
        georeferencing_sidecars,
        world_file_for_output,
    )
    from aerial_inpainting.output_files import same_file

    world_out = world_file_for_output(output_path) if find_world_file(image_path) else None
    inputs = [("image", image_path), ("mask", mask_path)]
    for path in (image_path, mask_path):
        inputs += [("sidecar", p) for p in (georeferencing_sidecars(path) if path else [])]
    outputs = [p for p in (output_path, world_out) if p is not None]
    for what, path in inputs:
        for out in outputs:
            if path is not None and same_file(out, path):
                raise InpaintingInputError(
                    f"output {out} is the {what} file {path}: refusing to write over an "
                    "input; choose another output"
                )
    multiple = model_multiple(model)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_quiet_rasterio())
        # GDAL's block cache would otherwise grow to 5 % of the RAM with the raster's size
        # (rasterio takes GDAL_CACHEMAX in bytes: 128 would be 128 bytes).
        if "GDAL_CACHEMAX" not in os.environ:
            stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 1024 * 1024))
        src = _open(rasterio, image_path, "image", stack)
        bands = _band_roles(src, name)
        mask_src = None if mask_path is None else _open_mask(rasterio, src, mask_path, stack)
        reader = _RasterReader(src, bands, mask_src, threshold, invert_mask, name, mask_name)
        if fill_nodata == "inside":
            reader.collar = border_nodata(reader)
            if reader.collar is not None and reader.collar.any():
                reader.notes.append(
                    f"{name}: {int(reader.collar.sum())} no-data pixels connected to the raster "
                    "border (the collar) are left as no-data; --fill-nodata all (pipeline: "
                    "inpaint.fill_nodata: all) fills them"
                )
        grid = _window_grid(model, src, window_size, halo, multiple)
        tiling = {"tile_size": tile_size, "overlap": overlap, "max_size": max_size}
        tags = {
            "INPAINTING_MODEL": model_label or type(model).__name__,
            "INPAINTING_MASK": str(mask_path) if mask_path else "nodata/alpha/mask band",
        }
        tmp_tif = output_path.with_name(f".{output_path.name}.partial.tif")
        output_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            profile = _output_profile(src)
            if src.gcps[0]:  # georeferenced by GCPs: no geotransform, no CRS of its own
                profile.pop("transform", None)
                profile.pop("crs", None)
            with rasterio.open(tmp_tif, "w+", **profile) as dst:
                if src.gcps[0]:
                    dst.gcps = src.gcps
                if src.rpcs is not None:
                    dst.rpcs = src.rpcs
                hole_pixels = _write_windows(
                    model, device, reader, src, dst, grid, tiling, multiple, tags, progress
                )
                factors = src.overviews(1) if src.count else []
                if factors:  # rebuilt from the filled pixels, not copied with the holes
                    from rasterio.enums import Resampling

                    dst.build_overviews(factors, Resampling.average)
            _finish_output(tmp_tif, output_path, src, world_out)
        finally:
            for scratch in (tmp_tif, tmp_tif.with_name(tmp_tif.name + ".aux.xml")):
                scratch.unlink(missing_ok=True)
        if say is not None:
            for note in reader.notes:
                say(f"warning: {note}")
        return RasterOutcome(src.width, src.height, hole_pixels, list(reader.notes))


@dataclass(frozen=True)
class _WindowGrid:
    """The windows of a raster: per axis the windows of :func:`_windows`, their core size and
    the width of the blended border."""

    rows: list
    cols: list
    core: int
    feather: int


def _window_grid(
    model: torch.nn.Module, src: Any, window_size: int | None, halo: int | None, multiple: int
) -> _WindowGrid:
    """The windows of ``src`` (one window when ``window_size`` is None; ``halo`` None:
    :func:`default_halo`)."""
    if window_size is None:
        core, halo_px = _round_up(max(src.height, src.width), multiple), 0
    else:
        halo = default_halo(model, window_size) if halo is None else halo
        core, halo_px = _window_core(window_size, halo, multiple)
    feather = halo_px // 2
    return _WindowGrid(
        rows=_windows(src.height, core, halo_px, feather),
        cols=_windows(src.width, core, halo_px, feather),
        core=core,
        feather=feather,
    )


def _open_mask(rasterio: Any, src: Any, mask_path: str | Path, stack: contextlib.ExitStack) -> Any:
    """The mask file, open; InpaintingInputError when it is not the image's size."""
    mask_src = _open(rasterio, Path(mask_path), "mask", stack)
    if (mask_src.width, mask_src.height) != (src.width, src.height):
        raise InpaintingInputError(
            f"mask {mask_path}: mask is {mask_src.width}x{mask_src.height} (WxH) but the "
            f"image is {src.width}x{src.height}; image and mask must have the same size"
        )
    mismatch = _grid_mismatch(src, mask_src)
    if mismatch:
        raise InpaintingInputError(
            f"mask {mask_path}: not on the image's grid ({mismatch}); its pixels would land on "
            "other ground. Resample it onto the image first, e.g. gdalwarp -t_srs <image CRS> "
            "-te <image bounds> -ts <image width> <image height> -r near MASK OUT"
        )
    return mask_src


def _grid_mismatch(src: Any, mask_src: Any) -> str:
    """Why a georeferenced mask is not on the georeferenced image's pixel grid ("" if it is,
    or when either has no geotransform: then pixels are matched by row and column)."""
    if mask_src.crs is not None and src.crs is not None and mask_src.crs != src.crs:
        return f"CRS {mask_src.crs} differs from the image's {src.crs}"
    if mask_src.transform.is_identity or src.transform.is_identity:
        return ""
    # Image pixel -> mask pixel: the identity when both grids coincide.
    to_mask = ~mask_src.transform * src.transform
    offset = max(abs(to_mask.c), abs(to_mask.f))
    scale = max(abs(to_mask.a - 1), abs(to_mask.e - 1), abs(to_mask.b), abs(to_mask.d))
    if offset <= 0.01 and scale * max(src.width, src.height) <= 0.01:
        return ""
    image, mask = src.transform, mask_src.transform
    return (
        f"transform differs: origin ({mask.c:.6g}, {mask.f:.6g}), pixel size ({mask.a:.6g}, "
        f"{mask.e:.6g}) against the image's ({image.c:.6g}, {image.f:.6g}), ({image.a:.6g}, "
        f"{image.e:.6g}): shifted by {to_mask.c:.4g}, {to_mask.f:.4g} px"
    )


def _window_core(window_size: int, halo: int, multiple: int) -> tuple[int, int]:
    """(core side, halo) in pixels, both multiples of ``multiple``, for windows of at most
    ``window_size`` px; InpaintingInputError when the window cannot hold the halo."""
    halo_px = _round_up(max(0, int(halo)), multiple)
    core = (int(window_size) - 2 * halo_px) // multiple * multiple
    if core < max(multiple, halo_px):
        raise InpaintingInputError(
            f"window size {window_size} is too small for a halo of {halo_px} px: it "
            f"must be at least 3 x the halo ({3 * max(halo_px, multiple)}); raise "
            "--window-size or lower --window-halo"
        )
    return core, halo_px


def _write_windows(
    model: torch.nn.Module,
    device: str | torch.device | None,
    reader: _RasterReader,
    src: Any,
    dst: Any,
    grid: _WindowGrid,
    tiling: dict[str, Any],
    multiple: int,
    tags: dict[str, str],
    progress: bool | None,
) -> int:
    """Inpaint every window of ``src`` into ``dst`` (bands' colours, descriptions and tags
    copied, the run's tags added); returns the number of hole pixels filled."""
    dst.colorinterp = src.colorinterp
    for index in range(1, src.count + 1):
        if src.descriptions[index - 1]:
            dst.set_band_description(index, src.descriptions[index - 1])
    overview: dict[str, Any] = {}
    hole_pixels = 0
    boxes = [(r, c) for r in range(len(grid.rows)) for c in range(len(grid.cols))]
    for r, c in tqdm(
        boxes,
        desc=f"inpaint {Path(src.name).name}",
        unit="window",
        disable=None if progress is None else not progress,
        leave=False,
    ):
        hole_pixels += _process_window(
            model, device, reader, dst, grid, r, c, overview, tiling, multiple
        )
    dst.update_tags(
        **src.tags(),
        INPAINTED="yes",
        **tags,
        INPAINTING_SOFTWARE=f"aerial_inpainting {_version()}",
        INPAINTED_PIXELS=str(hole_pixels),
    )
    return hole_pixels


def _creation_options(src: Any, overviews: bool) -> tuple[str, dict[str, Any]]:
    """(GDAL driver, creation options) of the final GeoTIFF: ``COG`` for a COG input (with the
    scratch file's overviews), else ``GTiff`` with the input's layout (:func:`_output_profile`)."""
    profile = _output_profile(src)
    compress = str(profile.get("compress") or "none")
    structure = src.tags(ns="IMAGE_STRUCTURE")
    predictor = structure.get("PREDICTOR")
    lossless_predictor = {"PREDICTOR": predictor} if predictor and compress != "none" else {}
    if structure.get("LAYOUT", "").upper() == "COG":
        options = {
            "COMPRESS": compress.upper(),
            "BLOCKSIZE": src.block_shapes[0][1] if src.count else 512,
            "BIGTIFF": "IF_SAFER",
            "OVERVIEWS": "FORCE_USE_EXISTING" if overviews else "NONE",
            **lossless_predictor,
        }
        return "COG", options
    keys = ("compress", "tiled", "blockxsize", "blockysize", "interleave", "photometric", "BIGTIFF")
    options = {k: profile[k] for k in keys if profile.get(k) is not None}
    if not options.get("tiled"):
        options.pop("blockxsize", None)
    if overviews:
        options["COPY_SRC_OVERVIEWS"] = "YES"
    return "GTiff", {**options, **lossless_predictor}


def _finish_output(tmp_tif: Path, output_path: Path, src: Any, world_out: Path | None) -> None:
    """Copy the finished scratch GeoTIFF to ``output_path`` once, with GDAL (GeoTIFF in the
    input's layout or COG: :func:`_creation_options`; PNG for a ``.png`` output).

    The copy is written under a temporary name in the output's folder and then replaces
    ``output_path`` (:func:`aerial_inpainting.output_files.atomic_output`), so a failed copy
    leaves an existing output as it was. GDAL's ``.aux.xml`` sidecar (what the format cannot
    hold: a PNG's CRS or GCPs) follows the output when the raster is georeferenced, and so
    does the world file GDAL writes when ``world_out`` is given (the input had one).
    """
    from rasterio.shutil import copy as gdal_copy

    from aerial_inpainting.output_files import atomic_output

    png = output_path.suffix.lower() == ".png"
    with atomic_output(output_path) as tmp_out:
        sidecars = {
            tmp_out.with_name(tmp_out.name + ".aux.xml"): output_path.with_name(
                output_path.name + ".aux.xml"
            )
        }
        if world_out is not None:
            sidecars[tmp_out.with_suffix(".wld" if png else ".tfw")] = world_out
        try:
            if png:
                options = {"WORLDFILE": "YES"} if world_out is not None else {}
                gdal_copy(tmp_tif, tmp_out, driver="PNG", **options)
            else:
                with _quiet_rasterio():
                    import rasterio

                    with rasterio.open(tmp_tif) as scratch:
                        has_overviews = bool(scratch.count and scratch.overviews(1))
                driver, options = _creation_options(src, has_overviews)
                if world_out is not None:
                    options["TFW"] = "YES"
                gdal_copy(tmp_tif, tmp_out, driver=driver, **options)
            keep_aux = _has_georeferencing(src) or not png
            for made, final in sidecars.items():
                if made.exists() and (final == world_out or keep_aux):
                    os.replace(made, final)
        finally:
            for made in sidecars:
                made.unlink(missing_ok=True)


def _open(rasterio: Any, path: Path, what: str, stack: contextlib.ExitStack) -> Any:
    if not path.is_file():
        raise InpaintingInputError(f"{what} {path}: file not found")
    try:
        return stack.enter_context(rasterio.open(path))
    except rasterio.errors.RasterioIOError as exc:
        raise InpaintingInputError(f"{what} {path}: not a readable raster ({exc})") from exc


def _round_up(value: int, multiple: int) -> int:
    return -(-int(value) // multiple) * multiple


def _version() -> str:
    from aerial_inpainting import __version__

    return __version__


def _process_window(
    model: torch.nn.Module,
    device: Any,
    reader: _RasterReader,
    dst: Any,
    grid: _WindowGrid,
    r: int,
    c: int,
    overview: dict[str, Any],
    tiling: dict[str, Any],
    multiple: int,
) -> int:
    """Inpaint window (``r``, ``c``) of ``grid``, blend it into ``dst``; returns its core's
    number of hole pixels. ``tiling``: ``tile_size``, ``overlap``, ``max_size`` of
    :func:`fill_holes`."""
    from rasterio.windows import Window

    ry0, ry1, wy0, wy1 = grid.rows[r]
    rx0, rx1, wx0, wx1 = grid.cols[c]
    arrays = reader.read(Window(rx0, ry0, rx1 - rx0, ry1 - ry0))
    valid, data = arrays["valid"], arrays["data"]
    # Pixels kept as they are: valid ones, and the no-data collar (unless it is filled too).
    kept = valid if reader.collar is None else valid | reader.collar[ry0:ry1, rx0:rx1]
    sy, sx = slice(wy0 - ry0, wy1 - ry0), slice(wx0 - rx0, wx1 - rx0)
    cy0, cx0, core = r * grid.core, c * grid.core, grid.core
    core_kept = kept[
        cy0 - ry0 : min(cy0 + core, ry1) - ry0, cx0 - rx0 : min(cx0 + core, rx1) - rx0
    ]
    holes = int((~core_kept).sum())
    out = data[:, sy, sx].copy()
    write_window = Window(wx0, wy0, wx1 - wx0, wy1 - wy0)
    if kept[sy, sx].all():
        dst.write(out, window=write_window)
        return holes
    if valid.any():
        wanted = np.zeros(valid.shape, dtype=bool)  # only the holes this window writes
        wanted[sy, sx] = ~kept[sy, sx]
        filled = fill_holes(
            model,
            arrays["rgb"],
            valid,
            device,
            **tiling,
            progress=False,
            name=reader.name,
            targets=wanted,
        )[sy, sx]
    else:
        filled = _from_overview(
            model,
            device,
            reader,
            overview,
            (wy0, wy1, wx0, wx1),
            tiling["tile_size"],
            tiling["overlap"],
            tiling["max_size"],
            reader.name,
        )
    weight = (
        _blend_ramp(wy1 - wy0, 0, grid.feather, r > 0)[:, None]
        * _blend_ramp(wx1 - wx0, 0, grid.feather, c > 0)[None, :]
    )
    _write_blended(dst, out, filled, kept[sy, sx], weight, write_window, reader)
    return holes


def _write_blended(
    dst: Any,
    out: np.ndarray,
    filled: np.ndarray,
    write_valid: np.ndarray,
    weight: np.ndarray,
    write_window: Any,
    reader: _RasterReader,
) -> None:
    """Write ``out`` (the window's bands) with its holes taken from ``filled`` (uint8 RGB),
    blended by ``weight`` with what ``dst`` holds there already; a filled pixel never reads
    as nodata, and alpha becomes opaque on it."""
    bands = reader.bands
    new_colour = _colour_bands(filled, len(bands.colour))  # (b, h, w) float
    hole = ~write_valid
    if (weight < 1).any():
        old = dst.read([i for i in bands.colour], window=write_window).astype(np.float32)
        blended = weight * new_colour + (1 - weight) * old
    else:
        blended = new_colour
    result = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    if reader.nodata is not None:  # a filled pixel must not read as nodata
        nodata = np.array(reader.nodata, dtype=np.float64)[:, None, None]
        clash = hole & (result == nodata).all(axis=0)
        if clash.any():
            first = result[0]
            first[clash] = np.where(first[clash] < 255, first[clash] + 1, first[clash] - 1)
    for k, index in enumerate(i - 1 for i in bands.colour):
        out[index][hole] = result[k][hole]
    if bands.alpha is not None:
        out[bands.alpha - 1][hole] = 255
    dst.write(out, window=write_window)


def _colour_bands(filled: np.ndarray, count: int) -> np.ndarray:
    """uint8 (h, w, 3) prediction -> float (count, h, w): RGB, or ITU-R 601 luma for grey."""
    rgb = filled.astype(np.float32).transpose(2, 0, 1)
    if count == 3:
        return rgb
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return luma[None]


def _from_overview(
    model: torch.nn.Module,
    device: Any,
    reader: _RasterReader,
    overview: dict[str, Any],
    region: tuple[int, int, int, int],
    tile_size: int | None,
    overlap: int,
    max_size: int,
    name: str,
) -> np.ndarray:
    """uint8 (h, w, 3) of ``region`` from the filled overview of the whole raster (cached)."""
    src = reader.src
    if "filled" not in overview:
        scale = max(src.height, src.width) / float(max_size)
        factor = max(1.0, scale)
        shape = (max(1, math.ceil(src.height / factor)), max(1, math.ceil(src.width / factor)))
        arrays = reader.read(None, out_shape=shape)
        if not arrays["valid"].any():
            raise InpaintingInputError(
                f"{name}: no valid pixel (everything is nodata or a hole); nothing to inpaint from"
            )
        overview["filled"] = fill_holes(
            model,
            arrays["rgb"],
            arrays["valid"],
            device,
            tile_size,
            overlap,
            max_size=max_size,
            progress=False,
            name=f"{name} (overview)",
        )
        logger.info(
            "%s: windows without any valid pixel are filled from a %sx%s overview",
            name,
            shape[1],
            shape[0],
        )
    small = overview["filled"]
    y0, y1, x0, x1 = region
    fy, fx = small.shape[0] / src.height, small.shape[1] / src.width
    # Map the region's pixel centres into the overview and sample bilinearly.
    ys = ((np.arange(y0, y1) + 0.5) * fy - 0.5).astype(np.float32)
    xs = ((np.arange(x0, x1) + 0.5) * fx - 0.5).astype(np.float32)
    map_x, map_y = np.meshgrid(xs, ys)
    return cv2.remap(small, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
