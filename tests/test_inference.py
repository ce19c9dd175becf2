"""inpaint_image: any size, tiling, exact valid pixels, mask and colour-mode handling."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from support.images import box_mask, smooth_image

from aerial_inpainting.inference import (
    InpaintingInputError,
    NonBinaryMaskWarning,
    inpaint_image,
    prepare_mask,
    to_rgb_uint8,
)


class NegativeModel(torch.nn.Module):
    """A pointwise stand-in for the U-Net: output = 1 - image, whatever the mask.

    Being pointwise, its filled pixels have a closed form (255 - input), so any mistake in
    padding, cropping, tile placement or blend weights shows up as a wrong pixel. It records
    the input sizes it was called with.
    """

    def __init__(self, depth: int = 3) -> None:
        super().__init__()
        self.config = SimpleNamespace(depth=depth)
        self.calls: list[tuple[int, int]] = []

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        assert image.shape[-2:] == mask.shape[-2:] and mask.shape[1] == 1
        self.calls.append(tuple(image.shape[-2:]))
        return 1.0 - image


class ExplodingModel(NegativeModel):
    def forward(self, image, mask):  # pragma: no cover - must not be called
        raise AssertionError("the model must not run when there is no hole")


def _random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(("height", "width"), [(37, 53), (8, 8), (1, 9), (64, 17)])
def test_any_size_padded_and_cropped_back(height, width):
    model = NegativeModel(depth=3)
    image = _random_image(height, width)
    mask = np.random.default_rng(1).random((height, width)) > 0.3
    mask[0, 0] = False
    mask[-1, -1] = True
    out = inpaint_image(model, image, mask)
    assert out.shape == (height, width, 3) and out.dtype == np.uint8
    # the model only ever sees sides that are multiples of 2**depth = 8
    assert all(h % 8 == 0 and w % 8 == 0 for h, w in model.calls)
    np.testing.assert_array_equal(out[mask], image[mask])
    np.testing.assert_array_equal(out[~mask], 255 - image[~mask])


@pytest.mark.parametrize(("tile", "overlap"), [(32, 8), (24, 16), (40, 0)])
def test_tiles_cover_every_hole_pixel_with_weights_summing_to_one(tile, overlap):
    model = NegativeModel(depth=3)
    image = _random_image(101, 90, seed=2)
    mask = np.random.default_rng(3).random((101, 90)) > 0.5
    out = inpaint_image(model, image, mask, tile_size=tile, overlap=overlap)
    assert len(model.calls) > 1
    assert all(call[0] <= tile and call[1] <= tile for call in model.calls)
    np.testing.assert_array_equal(out[mask], image[mask])
    np.testing.assert_array_equal(out[~mask], 255 - image[~mask])


def test_large_images_are_tiled_automatically():
    model = NegativeModel(depth=3)
    image = _random_image(70, 50)
    mask = box_mask(70, 50, [(10, 10, 60, 40)])
    out = inpaint_image(model, image, mask, max_size=32, overlap=8)
    assert len(model.calls) > 1 and max(max(c) for c in model.calls) <= 32
    np.testing.assert_array_equal(out[mask == 0], 255 - image[mask == 0])


def test_real_unet_odd_size_keeps_valid_pixels_bit_identical(tiny_model):
    image = smooth_image(37, 53)
    mask = box_mask(37, 53, [(5, 7, 20, 30), (25, 40, 36, 52)])
    out = inpaint_image(tiny_model, image, mask)
    assert out.shape == image.shape
    np.testing.assert_array_equal(out[mask == 1], image[mask == 1])
    assert not np.array_equal(out[mask == 0], image[mask == 0])


def test_real_unet_tiled_matches_untiled(tiny_model):
    image = smooth_image(150, 170, seed=4)
    rng = np.random.default_rng(5)
    boxes = []
    for _ in range(25):
        y, x = int(rng.integers(0, 144)), int(rng.integers(0, 164))
        boxes.append((y, x, y + 6, x + 6))
    mask = box_mask(150, 170, boxes)
    full = inpaint_image(tiny_model, image, mask)
    tiled = inpaint_image(tiny_model, image, mask, tile_size=96, overlap=48)
    np.testing.assert_array_equal(tiled[mask == 1], image[mask == 1])
    diff = np.abs(full.astype(int) - tiled.astype(int))[mask == 0]
    # Only the receptive field near tile borders differs; far below the fill error itself.
    fill_error = np.abs(full.astype(int) - image.astype(int))[mask == 0].mean()
    assert diff.mean() < 0.5 and diff.max() <= 8
    assert diff.mean() < fill_error / 20


def test_mask_encodings_are_equivalent():
    image = _random_image(16, 24)
    valid = np.random.default_rng(6).random((16, 24)) > 0.4
    results = [
        inpaint_image(NegativeModel(), image, m)
        for m in (valid, valid.astype(np.uint8), valid.astype(np.uint8) * 255, valid * 1.0)
    ]
    for other in results[1:]:
        np.testing.assert_array_equal(results[0], other)
    inverted = inpaint_image(NegativeModel(), image, ~valid, invert_mask=True)
    np.testing.assert_array_equal(results[0], inverted)


def test_non_binary_mask_is_thresholded_with_a_warning():
    gray = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (4, 1))  # 4 x 16 grey ramp
    with pytest.warns(NonBinaryMaskWarning, match="not binary"):
        valid = prepare_mask(gray, (4, 16), threshold=128)
    np.testing.assert_array_equal(valid, gray >= 128)
    with pytest.raises(InpaintingInputError, match="not binary"):
        prepare_mask(gray, (4, 16), threshold=None)


def test_size_mismatch_is_refused():
    with pytest.raises(InpaintingInputError, match=r"mask is 5x4 .* image is 6x4"):
        inpaint_image(NegativeModel(), _random_image(4, 6), np.ones((4, 5), np.uint8))


def test_no_hole_returns_image_unchanged_without_running_the_model():
    image = _random_image(9, 11)
    out = inpaint_image(ExplodingModel(), image, np.full((9, 11), 255, np.uint8))
    np.testing.assert_array_equal(out, image)


def test_no_valid_pixel_is_refused():
    with pytest.raises(InpaintingInputError, match="no valid pixel"):
        inpaint_image(NegativeModel(), _random_image(8, 8), np.zeros((8, 8), np.uint8))


def test_grayscale_and_rgba_inputs_are_converted():
    gray = np.random.default_rng(7).integers(0, 256, (10, 12), dtype=np.uint8)
    mask = box_mask(10, 12, [(2, 2, 6, 6)])
    out = inpaint_image(NegativeModel(), gray, mask)
    expected = np.repeat(gray[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(out[mask == 1], expected[mask == 1])
    np.testing.assert_array_equal(out[mask == 0], 255 - expected[mask == 0])

    rgba = np.random.default_rng(8).integers(0, 256, (10, 12, 4), dtype=np.uint8)
    premultiplied = np.floor(rgba[..., :3] * (rgba[..., 3:] / 255.0) + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(to_rgb_uint8(rgba), premultiplied)
    pil = Image.fromarray(gray, mode="L")
    np.testing.assert_array_equal(to_rgb_uint8(pil), expected)


def test_bad_image_shape_is_refused():
    with pytest.raises(InpaintingInputError, match="expected an image"):
        to_rgb_uint8(np.zeros((4, 4, 5), np.uint8))


def test_real_unet_output_equals_a_direct_float64_forward(tiny_model):
    """inpaint_image (channels_last, float32) = the model called in NCHW float64, in the holes."""
    image = _random_image(32, 40, seed=5)
    valid = np.ones((32, 40), dtype=bool)
    valid[8:20, 10:30] = False
    reference = copy.deepcopy(tiny_model).double().eval()
    with torch.no_grad():
        x = torch.from_numpy(image).permute(2, 0, 1)[None].double() / 255.0
        m = torch.from_numpy(valid).double()[None, None]
        want = reference(x, m)[0].clamp(0, 1).mul(255).round().permute(1, 2, 0).numpy()
    got = inpaint_image(tiny_model, image, valid.astype(np.uint8) * 255)
    assert np.abs(got[~valid].astype(int) - want[~valid].astype(int)).max() <= 1
    np.testing.assert_array_equal(got[valid], image[valid])
