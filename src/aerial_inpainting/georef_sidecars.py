"""Georeferencing kept in files beside an image: world files, GDAL ``.aux.xml``, RPC text files.

Many GIS exports are a plain TIFF, PNG or JPEG plus a *world file* (``.tfw``, ``.pgw``,
``.jgw``, ``.wld``, ...: six numbers, the affine transform of the pixel centres, ESRI's
format), a GDAL ``.aux.xml`` (CRS, geotransform, GCPs) or RPCs (``_rpc.txt``, ``.rpb``).
GDAL reads all of them as the image's georeferencing; :func:`georeferencing_sidecars` finds
them so such an image takes the raster path (:mod:`aerial_inpainting.geotiff`), and
:func:`world_file_for_output` names the world file written beside the result.

Works without rasterio (file names and a text search only).
"""

from __future__ import annotations

from pathlib import Path

# Markers of georeferencing in a GDAL PAM file (not just statistics or histograms).
_AUX_MARKERS = (b"<GeoTransform", b"<SRS", b"<GCPList", b'domain="RPC"')


def world_file_suffixes(suffix: str) -> list[str]:
    """World-file suffixes GDAL looks for beside an image with ``suffix`` (e.g. ``.tif``):
    first and last letter + ``w`` (``.tfw``), the suffix + ``w`` (``.tifw``), ``.wld``."""
    ext = suffix.lower().lstrip(".")
    if not ext:
        return [".wld"]
    found = [f".{ext[0]}{ext[-1]}w", f".{ext}w", ".wld"]
    return list(dict.fromkeys(found))


def find_world_file(path: str | Path) -> Path | None:
    """The world file beside ``path`` (any of :func:`world_file_suffixes`, lower or upper
    case), or None."""
    path = Path(path)
    for suffix in world_file_suffixes(path.suffix):
        for candidate in (path.with_suffix(suffix), path.with_suffix(suffix.upper())):
            if candidate.is_file():
                return candidate
    return None


def _georeferenced_aux(path: Path) -> Path | None:
    aux = path.with_name(path.name + ".aux.xml")
    try:
        data = aux.read_bytes() if aux.is_file() else b""
    except OSError:
        return None
    return aux if any(marker in data for marker in _AUX_MARKERS) else None


def _rpc_files(path: Path) -> list[Path]:
    names = [path.stem + "_rpc.txt", path.stem + "_RPC.TXT", path.stem + ".rpb", path.stem + ".RPB"]
    return [path.with_name(name) for name in names if path.with_name(name).is_file()]


def georeferencing_sidecars(path: str | Path) -> list[Path]:
    """The files beside ``path`` that GDAL reads as its georeferencing: a world file, a
    ``.aux.xml`` holding a geotransform, CRS, GCPs or RPCs, RPC text files. Empty: none."""
    path = Path(path)
    found = [find_world_file(path), _georeferenced_aux(path), *_rpc_files(path)]
    return [p for p in found if p is not None]


def world_file_for_output(output_path: str | Path) -> Path:
    """The world file written beside ``output_path``: ``.tfw`` for ``.tif``/``.tiff``,
    ``.pgw`` for ``.png`` (first and last letter of the suffix + ``w``; GDAL writes it,
    :func:`aerial_inpainting.geotiff.inpaint_raster`)."""
    output_path = Path(output_path)
    return output_path.with_suffix(world_file_suffixes(output_path.suffix)[0])

