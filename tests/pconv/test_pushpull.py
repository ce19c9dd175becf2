"""pull_push_fill against a direct NumPy evaluation of the pull-push formulas (loops over
pixels, no convolution or interpolation routine), and the properties any fill must have.

Tests taking ``device`` run on the CPU and, when present, on CUDA.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aerial_inpainting.pconv.pushpull import pull_push_fill

TAPS = np.array([1.0, 3.0, 3.0, 1.0]) / 8.0


def reference_pull(values: np.ndarray) -> np.ndarray:
    """4 * sum_{i,j} k_i k_j v[clamp(2y - 1 + i), clamp(2x - 1 + j)] for a 2-D ``values``."""
    h, w = values.shape
    oh, ow = (h + 2 - 4) // 2 + 1, (w + 2 - 4) // 2 + 1
    out = np.zeros((oh, ow))
    for y in range(oh):
        for x in range(ow):
            total = 0.0
            for i in range(4):
                for j in range(4):
                    yy = min(max(2 * y - 1 + i, 0), h - 1)
                    xx = min(max(2 * x - 1 + j, 0), w - 1)
                    total += TAPS[i] * TAPS[j] * values[yy, xx]
            out[y, x] = 4.0 * total
    return out


def reference_bilinear(values: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resampling with half-pixel centres (source = (dst + 0.5) * in/out - 0.5,
    clamped at 0, the last pixel repeated), written out."""
    h, w = values.shape
    out = np.zeros((out_h, out_w))
    for y in range(out_h):
        sy = max((y + 0.5) * h / out_h - 0.5, 0.0)
        y0 = min(math.floor(sy), h - 1)
        y1, fy = min(y0 + 1, h - 1), sy - y0
        for x in range(out_w):
            sx = max((x + 0.5) * w / out_w - 0.5, 0.0)
            x0 = min(math.floor(sx), w - 1)
            x1, fx = min(x0 + 1, w - 1), sx - x0
            top = (1 - fx) * values[y0, x0] + fx * values[y0, x1]
            bottom = (1 - fx) * values[y1, x0] + fx * values[y1, x1]
            out[y, x] = (1 - fy) * top + fy * bottom
    return out


def reference_fill(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pull-push of one channel ``image`` (H, W) with weights ``mask`` (H, W), in float64."""
    levels = []
    x, w = image.astype(np.float64), mask.astype(np.float64)
    while min(x.shape) > 1:
        levels.append((x, w))
        weight = reference_pull(w)
        total = reference_pull(w * x)
        x = np.where(weight > 0, total / np.where(weight > 0, weight, 1.0), 0.0)
        w = np.minimum(weight, 1.0)
    y = np.where(w > 0, x, 0.0)
    for x_l, w_l in reversed(levels):
        y = w_l * x_l + (1 - w_l) * reference_bilinear(y, *x_l.shape)
    return y


@pytest.mark.parametrize("shape", [(16, 16), (13, 10), (5, 32)])
def test_matches_the_formulas_written_out(shape):
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, size=(3, *shape))
    mask = (rng.uniform(size=shape) > 0.6).astype(np.float64)
    mask[: shape[0] // 2, : shape[1] // 2] = 0.0  # a large hole too
    got = pull_push_fill(torch.from_numpy(image)[None], torch.from_numpy(mask)[None, None])
    assert got.dtype == torch.float64
    expected = np.stack([reference_fill(channel, mask) for channel in image])
    np.testing.assert_allclose(got[0].numpy(), expected, rtol=0, atol=1e-12)


def test_valid_pixels_unchanged_and_holes_inside_the_valid_range(device):
    rng = np.random.default_rng(1)
    image = torch.from_numpy(rng.uniform(0.2, 0.7, size=(2, 3, 64, 48))).float()
    mask = torch.ones(2, 1, 64, 48)
    mask[:, :, 8:56, 4:40] = 0.0  # most of the image, one hole far from some pixels
    out = pull_push_fill((image * mask).to(device), mask.to(device)).cpu()
    valid = mask.expand_as(image) > 0
    assert torch.equal(out[valid], image[valid])
    hole = out[~valid]
    # every fill is a weighted mean of valid pixels: inside their range, per channel
    assert hole.min() >= image[valid].min() - 1e-6 and hole.max() <= image[valid].max() + 1e-6


def test_a_constant_image_is_filled_with_its_constant(device):
    image = torch.full((1, 3, 40, 40), 0.25, device=device)
    mask = torch.zeros(1, 1, 40, 40, device=device)
    mask[:, :, 37:, 37:] = 1.0  # a few valid pixels in one corner
    out = pull_push_fill(image * mask, mask)
    torch.testing.assert_close(out, image, rtol=0, atol=1e-6)


def test_no_valid_pixel_gives_zeros_and_bad_shapes_are_refused():
    out = pull_push_fill(torch.rand(1, 3, 8, 8), torch.zeros(1, 1, 8, 8))
    assert torch.equal(out, torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"mask \(N, 1, H, W\)"):
        pull_push_fill(torch.rand(1, 3, 8, 8), torch.ones(1, 3, 8, 8))
    with pytest.raises(ValueError, match="does not match"):
        pull_push_fill(torch.rand(1, 3, 8, 8), torch.ones(1, 1, 8, 4))


def test_float32_on_device_matches_the_float64_cpu_result(device):
    rng = np.random.default_rng(2)
    image = torch.from_numpy(rng.uniform(0, 1, size=(2, 3, 32, 32)))
    mask = torch.from_numpy((rng.uniform(size=(2, 1, 32, 32)) > 0.5).astype(np.float64))
    reference = pull_push_fill(image, mask)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):  # ignored inside: float32
        got = pull_push_fill(image.float().to(device), mask.float().to(device))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.cpu().double(), reference, rtol=0, atol=1e-5)
