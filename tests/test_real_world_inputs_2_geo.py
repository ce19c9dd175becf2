"""Issue 27, second round, rasters: F18 GCPs/RPCs, F19 world files, F20 overviews and COG,
F21 band order by colour interpretation, F23 the nodata collar, F24 a mask on another grid,
F25 output size.

Every raster is generated here with rasterio; "kept" is checked against the input file read
back by GDAL (rasterio), and fills against the colour the test model is built to predict
(:data:`COLOUR`), never against this code's own output.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_real_world_inputs_2 import COLOUR, colour_unet, one_line_error, run_cli, snapshot

rasterio = pytest.importorskip("rasterio")
from affine import Affine  # noqa: E402
from rasterio import shutil as gdal_shutil  # noqa: E402
from rasterio.control import GroundControlPoint  # noqa: E402
from rasterio.crs import CRS  # noqa: E402
from rasterio.enums import ColorInterp, Resampling  # noqa: E402
from rasterio.rpc import RPC  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402

from aerial_inpainting.pconv.checkpoint import save_model  # noqa: E402

UTM = "EPSG:32633"
T0 = from_origin(500000.0, 5600000.0, 0.5, 0.5)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return save_model(tmp_path / "models" / "colour.safetensors", colour_unet())


def texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 (3, H, W) in [1, 254] (never a nodata 0 or an opaque 255 by chance)."""
    return np.random.default_rng(seed).integers(1, 255, (3, height, width), dtype=np.uint8)


def geotiff(path: Path, bands: np.ndarray, *, crs=UTM, transform=T0, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    count, height, width = bands.shape
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=count, dtype="uint8",
        crs=crs, transform=transform, **options,
    ) as dst:  # fmt: skip
        dst.write(bands)
    return path


def mask_png(path: Path, height: int, width: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """White = keep, black = fill inside (top, left, bottom, right); returns the hole map."""
    mask = np.full((height, width), 255, np.uint8)
    top, left, bottom, right = box
    mask[top:bottom, left:right] = 0
    Image.fromarray(mask).save(path)
    return mask == 0


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


# ------------------------------------------------------------------ F18 GCPs and RPCs
GCPS = [
    GroundControlPoint(0, 0, 10.00, 50.00),
    GroundControlPoint(0, 64, 10.01, 50.00),
    GroundControlPoint(64, 0, 10.00, 49.99),
    GroundControlPoint(64, 64, 10.01, 49.99),
]
RPCS = RPC(
    height_off=300, height_scale=500, lat_off=49.995, lat_scale=0.005, long_off=10.005,
    long_scale=0.005, line_off=32, line_scale=32, samp_off=32, samp_scale=32,
    line_num_coeff=[0, 0, -1] + [0] * 17, line_den_coeff=[1] + [0] * 19,
    samp_num_coeff=[0, 1] + [0] * 18, samp_den_coeff=[1] + [0] * 19,
)  # fmt: skip


def _plain_tiff(path: Path, bands: np.ndarray) -> Path:
    with rasterio.open(
        path, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8", photometric="RGB"
    ) as dst:
        dst.write(bands)
    return path


@pytest.mark.parametrize("suffix", [".tif", ".png"])
@pytest.mark.parametrize("kind", ["gcps", "rpcs"])
def test_f18_gcps_and_rpcs_are_kept(tmp_path, model, capsys, kind, suffix):
    bands = texture(64, 64, 18)
    src = _plain_tiff(tmp_path / f"{kind}.tif", bands)
    with rasterio.open(src, "r+") as dst:
        if kind == "gcps":
            dst.gcps = (GCPS, CRS.from_epsg(4326))
        else:
            dst.rpcs = RPCS
    hole = mask_png(tmp_path / "mask.png", 64, 64, (20, 20, 40, 40))
    before = snapshot(tmp_path)
    out = tmp_path / "out" / f"{kind}{suffix}"
    code, err = run_cli(capsys, ["-q", "--model", model, src, tmp_path / "mask.png", "-o", out])
    assert code == 0, err
    assert err == ""  # no GDAL warning leaks through -q
    with rasterio.open(src) as a, rasterio.open(out) as b:
        if kind == "gcps":
            key = lambda g: (g.row, g.col, g.x, g.y)  # noqa: E731
            assert list(map(key, b.gcps[0])) == list(map(key, a.gcps[0]))
            assert b.gcps[1] == a.gcps[1]
        else:
            assert b.rpcs is not None and b.rpcs.to_dict() == a.rpcs.to_dict()
        result = b.read()
    np.testing.assert_array_equal(result[:, ~hole], bands[:, ~hole])
    assert (result[:, hole] == COLOUR[:, None]).all()
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith(("out", "models"))} == {
        k: v for k, v in before.items() if not k.startswith("models")
    }


# ------------------------------------------------------------------ F19 world files
WORLD = "0.5\n0.0\n0.0\n-0.5\n500000.25\n5599999.75\n"  # centre of the upper-left pixel
WORLD_TRANSFORM = Affine(0.5, 0, 500000, 0, -0.5, 5600000)


@pytest.mark.parametrize(
    ("image", "world", "out", "out_world"),
    [
        ("ortho.tif", "ortho.tfw", "res.tif", "res.tfw"),
        ("ortho.png", "ortho.pgw", "res.png", "res.pgw"),
        ("ortho.png", "ortho.wld", "res.tif", "res.tfw"),
        ("ortho.tif", "ortho.TFW", "res.png", "res.pgw"),
    ],
)
def test_f19_world_file_is_read_and_written_beside_the_output(
    tmp_path, model, capsys, image, world, out, out_world
):
    pixels = texture(48, 64, 19).transpose(1, 2, 0)
    Image.fromarray(pixels).save(tmp_path / image)  # Pillow: no georeferencing inside
    (tmp_path / world).write_text(WORLD)
    hole = mask_png(tmp_path / "mask.png", 48, 64, (10, 10, 30, 30))
    before = snapshot(tmp_path)
    code, err = run_cli(capsys, ["--model", model, tmp_path / image, tmp_path / "mask.png",
                                 "-o", tmp_path / "o" / out])  # fmt: skip
    assert code == 0, err
    with rasterio.open(tmp_path / "o" / out) as result:
        assert result.transform == WORLD_TRANSFORM  # GDAL reads the GeoTIFF tags or sidecar
        data = result.read()
    assert (tmp_path / "o" / out_world).is_file()
    with rasterio.open(tmp_path / image) as source:
        assert source.transform == WORLD_TRANSFORM  # the reference: GDAL's reading of the input
    np.testing.assert_array_equal(data[:, ~hole], pixels.transpose(2, 0, 1)[:, ~hole])
    assert (data[:, hole] == COLOUR[:, None]).all()
    after = {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("o/")}
    assert after == before


def test_f19_output_world_file_may_not_be_an_input_sidecar(tmp_path, model, capsys):
    Image.fromarray(texture(32, 32).transpose(1, 2, 0)).save(tmp_path / "a.tif")
    (tmp_path / "a.tfw").write_text(WORLD)
    mask_png(tmp_path / "mask.png", 32, 32, (5, 5, 10, 10))
    before = snapshot(tmp_path)
    out = tmp_path / "a.tiff"  # its world file would be a.tfw, the input's
    code, err = run_cli(capsys, ["-q", "--model", model, tmp_path / "a.tif", tmp_path / "mask.png",
                                 "-o", out])  # fmt: skip
    assert one_line_error(code, err, "a.tfw")
    assert not out.exists() and snapshot(tmp_path) == before


# ------------------------------------------------------------------ F20 overviews, COG
def _magenta_scene(path: Path) -> np.ndarray:
    bands = texture(512, 512, 20)
    bands[1] |= 0x80  # green >= 128: nothing magenta outside the hole
    bands[:, 192:320, 192:320] = np.array([255, 0, 255], np.uint8)[:, None, None]
    geotiff(path, bands, tiled=True, blockxsize=128, blockysize=128, compress="deflate")
    return bands


@pytest.mark.parametrize("layout", ["cog", "overviews"])
def test_f20_overviews_are_rebuilt_and_cog_stays_cog(tmp_path, model, capsys, layout):
    _magenta_scene(tmp_path / "plain.tif")
    src = tmp_path / f"{layout}.tif"
    if layout == "cog":
        gdal_shutil.copy(tmp_path / "plain.tif", src, driver="COG", compress="DEFLATE",
                             blocksize=128, overview_resampling="AVERAGE")  # fmt: skip
    else:
        shutil.copy(tmp_path / "plain.tif", src)
        with rasterio.open(src, "r+") as dst:
            dst.build_overviews([2, 4, 8], Resampling.average)
    mask_png(tmp_path / "mask.png", 512, 512, (192, 192, 320, 320))
    out = tmp_path / "out.tif"
    code, err = run_cli(capsys, ["-q", "--model", model, src, tmp_path / "mask.png", "-o", out])
    assert code == 0, err
    with rasterio.open(src) as a, rasterio.open(out) as b:
        assert a.overviews(1) and b.overviews(1) == a.overviews(1)
        assert b.compression == a.compression and b.block_shapes == a.block_shapes
        for factor in a.overviews(1):
            side = 512 // factor
            small = b.read(out_shape=(3, side, side)).astype(int)
            magenta = (small[0] > 200) & (small[1] < 60) & (small[2] > 200)
            assert not magenta.any(), factor
        layout_in = a.tags(ns="IMAGE_STRUCTURE").get("LAYOUT")
        layout_out = b.tags(ns="IMAGE_STRUCTURE").get("LAYOUT")
    assert (layout_in == "COG") == (layout == "cog")
    if layout_in == "COG":
        assert layout_out == "COG"


# ------------------------------------------------------------------ F21 band order
def test_f21_colour_bands_are_found_by_colour_interpretation(tmp_path, model, capsys):
    rgb = texture(64, 64, 21)
    nir = np.full((1, 64, 64), 77, np.uint8)
    geotiff(tmp_path / "rgb.tif", rgb, photometric="RGB")
    with rasterio.open(tmp_path / "bgrn.tif", "w", driver="GTiff", width=64, height=64, count=4,
                       dtype="uint8", crs=UTM, transform=T0, photometric="MINISBLACK") as dst:  # fmt: skip
        dst.write(np.concatenate([rgb[[2, 1, 0]], nir]))
        dst.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red,
                           ColorInterp.undefined]  # fmt: skip
    hole = mask_png(tmp_path / "mask.png", 64, 64, (20, 20, 44, 44))
    for name in ("rgb", "bgrn"):
        code, err = run_cli(capsys, ["-q", "--model", model, tmp_path / f"{name}.tif",
                                     tmp_path / "mask.png", "-o", tmp_path / f"out_{name}.tif"])  # fmt: skip
        assert code == 0, err
    a, b = read(tmp_path / "out_rgb.tif"), read(tmp_path / "out_bgrn.tif")
    assert (a[:, hole] == COLOUR[:, None]).all()  # red, green, blue of the prediction
    assert (b[:3, hole] == COLOUR[::-1, None]).all()  # blue, green, red in file order
    np.testing.assert_array_equal(b[[2, 1, 0]], a)
    np.testing.assert_array_equal(b[3], nir[0])
    with rasterio.open(tmp_path / "out_bgrn.tif") as out:
        assert out.colorinterp[:3] == (ColorInterp.blue, ColorInterp.green, ColorInterp.red)


# ------------------------------------------------------------------ F23 nodata collar
def _collar_scene(tmp_path: Path, alpha: bool = False):
    h = w = 192
    bands = texture(h, w, 23)
    y, x = np.mgrid[0:h, 0:w]
    collar = (x + y < 50) | (x - y > 140) | (y - x > 150)  # rotated footprint
    gap = np.zeros((h, w), bool)
    gap[110:122, 50:60] = True  # a no-data gap inside the data
    cloud = mask_png(tmp_path / "mask.png", h, w, (90, 90, 104, 104))
    if alpha:
        a = np.where(collar | gap, 0, 255).astype(np.uint8)[None]
        bands = np.concatenate([bands, a])
        path = geotiff(tmp_path / "ortho.tif", bands, photometric="RGB",
                       extrasamples="unassalpha")  # fmt: skip
        with rasterio.open(path, "r+") as dst:
            dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue,
                               ColorInterp.alpha]  # fmt: skip
    else:
        bands[:, collar | gap] = 0
        path = geotiff(tmp_path / "ortho.tif", bands, nodata=0, tiled=True, blockxsize=64,
                       blockysize=64)  # fmt: skip
    return path, bands, collar, gap, cloud


@pytest.mark.parametrize("alpha", [False, True], ids=["nodata-value", "alpha-band"])
def test_f23_collar_stays_nodata_and_inner_holes_are_filled(tmp_path, model, capsys, alpha):
    src, bands, collar, gap, cloud = _collar_scene(tmp_path, alpha)
    out = tmp_path / "out.tif"
    code, err = run_cli(capsys, ["--model", model, "--window-size", "96", "--window-halo", "16",
                                 src, tmp_path / "mask.png", "-o", out])  # fmt: skip
    assert code == 0, err
    result = read(out)
    np.testing.assert_array_equal(result[:, collar], bands[:, collar])  # exactly as it was
    assert (result[:3, gap | cloud] == COLOUR[:, None]).all()
    keep = ~(collar | gap | cloud)
    np.testing.assert_array_equal(result[:, keep], bands[:, keep])
    with rasterio.open(out) as o:
        assert o.nodata == (None if alpha else 0)
    assert f"{int(collar.sum())} no-data pixels connected to the raster border" in err


def test_f23_fill_nodata_all_fills_the_collar_too(tmp_path, model, capsys):
    src, _, collar, gap, cloud = _collar_scene(tmp_path)
    out = tmp_path / "out.tif"
    code, err = run_cli(capsys, ["-q", "--model", model, "--fill-nodata", "all", src,
                                 tmp_path / "mask.png", "-o", out])  # fmt: skip
    assert code == 0, err
    result = read(out)
    assert (result[:, collar | gap | cloud] == COLOUR[:, None]).all()


# ------------------------------------------------------------------ F24 mask grid
@pytest.mark.parametrize(
    ("kind", "needle"),
    [("shift", "transform"), ("wgs84", "CRS"), ("coarser", "transform")],
)
def test_f24_mask_on_another_grid_is_refused(tmp_path, model, capsys, kind, needle):
    geotiff(tmp_path / "ortho.tif", texture(64, 64, 24))
    mask = np.full((1, 64, 64), 255, np.uint8)
    mask[0, 20:30, 20:30] = 0
    grids = {
        "shift": {"transform": from_origin(500016.0, 5600000.0, 0.5, 0.5)},  # 32 px east
        "wgs84": {"crs": "EPSG:4326", "transform": from_origin(14.99, 50.53, 6e-6, 4e-6)},
        "coarser": {"transform": from_origin(500000.0, 5600000.0, 1.0, 1.0)},
    }
    mask_path = geotiff(tmp_path / f"mask_{kind}.tif", mask, **grids[kind])
    before = snapshot(tmp_path)
    out = tmp_path / "out.tif"
    code, err = run_cli(capsys, ["-q", "--model", model, tmp_path / "ortho.tif", mask_path,
                                 "-o", out])  # fmt: skip
    assert one_line_error(code, err, mask_path.name, needle)
    assert not out.exists() and snapshot(tmp_path) == before
    assert not [p for p in os.listdir(tmp_path) if "partial" in p]


@pytest.mark.parametrize("kind", ["same", "plain"])
def test_f24_mask_on_the_same_grid_or_without_georeferencing_works(tmp_path, model, capsys, kind):
    bands = texture(64, 64, 24)
    geotiff(tmp_path / "ortho.tif", bands)
    mask = np.full((64, 64), 255, np.uint8)
    mask[20:30, 20:30] = 0
    if kind == "same":
        mask_path = geotiff(tmp_path / "mask.tif", mask[None])
    else:
        mask_path = tmp_path / "mask.png"
        Image.fromarray(mask).save(mask_path)
    code, err = run_cli(capsys, ["-q", "--model", model, tmp_path / "ortho.tif", mask_path,
                                 "-o", tmp_path / "out.tif"])  # fmt: skip
    assert code == 0, err
    changed = (read(tmp_path / "out.tif") != bands).any(axis=0)
    np.testing.assert_array_equal(changed, mask == 0)


# ------------------------------------------------------------------ F25 output size
def test_f25_output_has_no_dead_space_and_the_cache_does_not_change_pixels(
    tmp_path, model, capsys, monkeypatch
):
    bands = texture(512, 512, 25)
    src = geotiff(tmp_path / "big.tif", bands, tiled=True, blockxsize=128, blockysize=128,
                  compress="deflate")  # fmt: skip
    mask = np.full((512, 512), 255, np.uint8)
    for r in range(40, 512, 150):
        for c in range(40, 512, 150):
            mask[r : r + 20, c : c + 20] = 0
    Image.fromarray(mask).save(tmp_path / "mask.png")
    args = ["-q", "--model", model, "--window-size", "96", "--window-halo", "16", src,
            tmp_path / "mask.png", "-o"]  # fmt: skip
    monkeypatch.setenv("GDAL_CACHEMAX", "1")
    with rasterio.Env(GDAL_CACHEMAX=1):
        assert run_cli(capsys, [*args, tmp_path / "small.tif"])[0] == 0
    monkeypatch.delenv("GDAL_CACHEMAX")
    assert run_cli(capsys, [*args, tmp_path / "default.tif"])[0] == 0
    for name in ("small", "default"):
        out = tmp_path / f"{name}.tif"
        with rasterio.open(out) as o:
            assert o.compression == rasterio.enums.Compression.deflate
            interleave = o.profile["interleave"]
        compact = tmp_path / f"{name}_compact.tif"
        gdal_shutil.copy(out, compact, driver="GTiff", compress="deflate", tiled=True,
                             blockxsize=128, blockysize=128, interleave=interleave)  # fmt: skip
        assert os.path.getsize(out) / os.path.getsize(compact) <= 1.10
    np.testing.assert_array_equal(read(tmp_path / "small.tif"), read(tmp_path / "default.tif"))


def test_f24_mask_grid_equal_up_to_rounding_of_its_world_file_is_accepted(tmp_path, model, capsys):
    bands = texture(64, 64, 24)
    geotiff(tmp_path / "ortho.tif", bands)
    mask = np.full((64, 64), 255, np.uint8)
    mask[8:16, 8:16] = 0
    Image.fromarray(mask).save(tmp_path / "mask.png")
    # The image's grid written with 10 decimals, as GDAL and ArcGIS write world files.
    (tmp_path / "mask.pgw").write_text("0.5000000000\n0\n0\n-0.5000000000\n500000.2500000001\n5599999.75\n")
    code, err = run_cli(capsys, ["-q", "--model", model, tmp_path / "ortho.tif",
                                 tmp_path / "mask.png", "-o", tmp_path / "out.tif"])  # fmt: skip
    assert code == 0, err
    np.testing.assert_array_equal((read(tmp_path / "out.tif") != bands).any(axis=0), mask == 0)


def test_f19_world_file_without_rasterio_is_refused_not_dropped(
    tmp_path, model, capsys, monkeypatch
):
    from aerial_inpainting import geotiff as geotiff_module

    monkeypatch.setattr(geotiff_module, "has_rasterio", lambda: False)
    Image.fromarray(texture(32, 32).transpose(1, 2, 0)).save(tmp_path / "a.png")
    (tmp_path / "a.pgw").write_text(WORLD)
    mask_png(tmp_path / "mask.png", 32, 32, (5, 5, 10, 10))
    out = tmp_path / "out.png"
    code, err = run_cli(capsys, ["-q", "--model", model, tmp_path / "a.png", tmp_path / "mask.png",
                                 "-o", out])  # fmt: skip
    assert one_line_error(code, err, "a.png", "georeferenced", "geo")
    assert not out.exists()
