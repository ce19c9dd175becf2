"""Hole-aware filling (issue 30): crops around the holes give the whole image's prediction.

The reference is the network called directly on the whole (reflect-padded) image, not
through the region logic; results must agree within one grey level on every hole pixel.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.images import smooth_image

from aerial_inpainting import hole_regions
from aerial_inpainting.hole_regions import hole_regions as make_regions
from aerial_inpainting.hole_regions import predict_in_regions, receptive_radius
from aerial_inpainting.inference import fill_holes
from aerial_inpainting.pconv.unet import PConvUNet, UNetConfig


class CallCounter:
    """Wraps a PConvUNet's forward methods and records the input shape of every call."""

    def __init__(self, model: PConvUNet) -> None:
        self.shapes: list[tuple[int, ...]] = []
        for method in ("forward_with_mask", "forward_on_prefill"):
            original = getattr(model, method)

            def counted(x, m, _original=original):
                self.shapes.append(tuple(x.shape))
                return _original(x, m)

            setattr(model, method, counted)

    @property
    def pixels(self) -> int:
        return sum(n * h * w for n, _, h, w in self.shapes)


def _whole_image_fill(model: PConvUNet, rgb: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3): the network on the whole image (reflect-padded bottom/right to a
    multiple of 2**depth), rounded; asserts that it reaches every hole pixel."""
    multiple = 2**model.config.depth
    height, width = valid.shape
    pad = ((0, -height % multiple), (0, -width % multiple))
    image = np.pad(rgb, (*pad, (0, 0)), mode="reflect")
    mask = np.pad(valid, pad, mode="reflect")
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    m = torch.from_numpy(mask)[None, None].float()
    with torch.inference_mode():
        out, reach = model.forward_with_mask(x, m)
    assert bool(reach[0, 0].numpy()[:height, :width][~valid].all())
    out = out[0].clamp(0, 1).permute(1, 2, 0).numpy()[:height, :width]
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def _textured(height: int, width: int, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(-40, 41, (height, width, 3))
    return np.clip(smooth_image(height, width, seed).astype(int) + noise, 0, 255).astype(np.uint8)


def _holes(height: int, width: int, layout: str, seed: int) -> np.ndarray:
    """bool (H, W) valid mask: ``scattered`` small boxes, ``clustered`` blobs in one corner,
    ``border`` boxes touching the image's edges."""
    rng = np.random.default_rng(seed)
    valid = np.ones((height, width), dtype=bool)
    if layout == "scattered":
        for _ in range(10):
            y, x = int(rng.integers(0, height - 20)), int(rng.integers(0, width - 20))
            valid[y : y + int(rng.integers(3, 20)), x : x + int(rng.integers(3, 20))] = False
    elif layout == "clustered":
        yy, xx = np.mgrid[0:height, 0:width]
        for _ in range(6):
            cy, cx = rng.integers(0, height // 3), rng.integers(0, width // 3)
            valid &= np.hypot(yy - cy, xx - cx) > rng.uniform(4, 12)
    else:
        valid[:5, 30:60] = False
        valid[-9:, -20:] = False
        valid[40:60, :3] = False
    return valid


def _tiny(depth: int = 3, prefill: str = "none") -> PConvUNet:
    torch.manual_seed(0)
    model = PConvUNet(UNetConfig(depth=depth, base_channels=4, max_channels=8, prefill=prefill))
    if prefill != "none":  # its last layer starts at zero: give it a correction to make
        torch.nn.init.normal_(model.dec_convs[-1].weight, std=0.05)
    return model.eval()


@pytest.mark.parametrize("layout", ["scattered", "clustered", "border"])
@pytest.mark.parametrize("max_size", [64, 1024])
def test_hole_aware_fill_equals_the_whole_image_pass(layout, max_size):
    model = _tiny()
    rgb, valid = _textured(150, 190, seed=1), _holes(150, 190, layout, seed=2)
    reference = _whole_image_fill(model, rgb, valid)
    counter = CallCounter(model)
    out = fill_holes(model, rgb, valid, "cpu", max_size=max_size)
    diff = np.abs(out.astype(int) - reference.astype(int))[~valid]
    assert diff.max() <= 1
    np.testing.assert_array_equal(out[valid], rgb[valid])
    assert counter.shapes and all(h <= max(max_size, 80) for _, _, h, _ in counter.shapes)


def test_the_context_margin_matters(monkeypatch):
    """Without the receptive radius of context, crops do change the result: the equality
    above is not a property of this network and these holes."""
    model = _tiny()
    rgb, valid = _textured(150, 190, seed=1), _holes(150, 190, "scattered", seed=2)
    reference = _whole_image_fill(model, rgb, valid)
    original = hole_regions.hole_regions
    monkeypatch.setattr(
        hole_regions,
        "hole_regions",
        lambda holes, cell, _margin, side: original(holes, cell, 0, side),
    )
    out = fill_holes(model, rgb, valid, "cpu")
    assert np.abs(out.astype(int) - reference.astype(int))[~valid].max() > 1


def test_shipped_model_hole_aware_equals_whole_image():
    from aerial_inpainting.pretrained_model import load_pretrained

    model = load_pretrained().eval()
    rgb = _textured(480, 544, seed=3)
    valid = _holes(480, 544, "scattered", seed=4) & _holes(480, 544, "clustered", seed=5)
    reference = _whole_image_fill(model, rgb, valid)
    counter = CallCounter(model)
    out = fill_holes(model, rgb, valid, "cpu", max_size=320)
    assert np.abs(out.astype(int) - reference.astype(int))[~valid].max() <= 1
    assert len(counter.shapes) > 1  # cut into crops, not one call on the whole image


def test_prefilled_network_hole_aware_equals_whole_image():
    """The pull-push pre-fill is image-wide: computed on the whole image, the U-Net on crops."""
    model = _tiny(prefill="pushpull")
    rgb, valid = _textured(150, 190, seed=6), _holes(150, 190, "scattered", seed=7)
    reference = _whole_image_fill(model, rgb, valid)
    out = fill_holes(model, rgb, valid, "cpu", max_size=64)
    assert np.abs(out.astype(int) - reference.astype(int))[~valid].max() <= 1


def test_far_from_the_holes_nothing_is_computed():
    model = _tiny()
    rgb = _textured(400, 400, seed=8)
    valid = np.ones((400, 400), dtype=bool)
    valid[200:205, 100:110] = False  # one small hole
    counter = CallCounter(model)
    fill_holes(model, rgb, valid, "cpu")
    radius = receptive_radius(model)
    # one crop: the hole's cells plus ceil(R / 8) cells of context on each side
    side = 8 * (2 * -(-radius // 8) + 3)
    assert counter.pixels <= side * side < 400 * 400 / 4


def test_hole_free_image_makes_no_network_call():
    model = _tiny()
    counter = CallCounter(model)
    rgb = _textured(64, 64, seed=9)
    out = fill_holes(model, rgb, np.ones((64, 64), dtype=bool), "cpu")
    np.testing.assert_array_equal(out, rgb)
    prediction, reached = predict_in_regions(
        model, rgb, np.ones((64, 64), dtype=bool), torch.device("cpu")
    )
    assert counter.shapes == [] and not reached.any() and not prediction.any()


def test_hole_free_raster_window_makes_no_network_call(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from aerial_inpainting.geotiff import inpaint_raster

    model = _tiny()
    image = _textured(96, 200, seed=10).transpose(2, 0, 1)
    image = np.maximum(image, 1)
    image[:, 10:14, 150:160] = 0  # nodata hole in the right-hand window only
    path = tmp_path / "in.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=200, height=96, count=3, dtype="uint8", nodata=0
    ) as dst:
        dst.write(image)
    counter = CallCounter(model)
    inpaint_raster(model, path, tmp_path / "out.tif", window_size=96, halo=24)
    # windows of 48-px cores: only those whose written part holds the hole call the network
    assert 1 <= len(counter.shapes) <= 2
    counter.shapes.clear()
    image[image == 0] = 5
    with rasterio.open(
        path, "w", driver="GTiff", width=200, height=96, count=3, dtype="uint8", nodata=0
    ) as dst:
        dst.write(image)
    inpaint_raster(model, path, tmp_path / "out2.tif", window_size=96, halo=24)
    assert counter.shapes == []


@pytest.mark.parametrize("seed", range(4))
def test_every_hole_cell_is_owned_once_with_its_context(seed):
    """Checked pixel by pixel: each hole pixel lies in exactly one region's owned cells, at
    least ``margin`` px from that crop's border unless the border is the image's; crops are
    aligned to the cell size and at most ``max_side`` a side."""
    rng = np.random.default_rng(seed)
    cell, margin, max_side = 8, 20, 96
    holes = rng.random((160, 200)) > 0.997
    holes[100:130, 20:180] = seed % 2 == 0  # a wide hole to split
    regions = make_regions(holes, cell, margin, max_side)
    owners = np.zeros(holes.shape, dtype=int)
    for region in regions:
        assert region.y0 % cell == 0 and region.x0 % cell == 0
        assert region.y1 % cell == 0 and region.x1 % cell == 0
        assert max(region.shape) <= max_side
        owned = np.kron(region.owned, np.ones((cell, cell), dtype=int)).astype(bool)
        owners[region.y0 : region.y1, region.x0 : region.x1] += (
            owned & holes[region.y0 : region.y1, region.x0 : region.x1]
        )
        owned_holes = owned & holes[region.y0 : region.y1, region.x0 : region.x1]
        for y, x in zip(*np.nonzero(owned_holes), strict=True):
            gy, gx = y + region.y0, x + region.x0
            assert region.y0 == 0 or gy - region.y0 >= margin
            assert region.x0 == 0 or gx - region.x0 >= margin
            assert region.y1 == holes.shape[0] or region.y1 - 1 - gy >= margin
            assert region.x1 == holes.shape[1] or region.x1 - 1 - gx >= margin
    np.testing.assert_array_equal(owners, holes.astype(int))
