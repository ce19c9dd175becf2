"""Baselines fill holes plausibly and never touch valid pixels."""

from __future__ import annotations

import numpy as np
import pytest

from aerial_inpainting.evaluation import baselines


def _scene(rng: np.random.Generator, h: int = 32, w: int = 40) -> np.ndarray:
    """A smooth colour gradient plus mild noise: a hole's neighbours predict it well."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([60 + 3 * xx, 40 + 4 * yy, 120 + 0 * xx], -1).astype(np.float64)
    return np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)


def _mask(h: int = 32, w: int = 40) -> np.ndarray:
    mask = np.ones((h, w), dtype=np.uint8)
    mask[8:16, 10:22] = 0
    mask[24:27, 2:38] = 0
    return mask


@pytest.mark.parametrize("name", baselines.BASELINES)
def test_valid_pixels_unchanged_and_holes_plausible(name: str) -> None:
    rng = np.random.default_rng(0)
    image, mask = _scene(rng), _mask()
    fn = baselines.get_baseline(name, {"telea_radius": 3, "ns_radius": 3})
    out = fn(image, mask)
    assert out.dtype == np.uint8 and out.shape == image.shape
    valid = mask.astype(bool)
    np.testing.assert_array_equal(out[valid], image[valid])
    # Filled values lie within the image's value range, and the diffusion methods recover
    # a smooth gradient far better than a flat colour does.
    hole = ~valid
    assert out[hole].min() >= image.min() - 5 and out[hole].max() <= image.max() + 5
    err = np.abs(out[hole].astype(float) - image[hole]).mean()
    if name != "mean_fill":
        assert err < 12, f"{name}: mean hole error {err:.1f}"


def test_mean_fill_is_the_exact_valid_mean() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (12, 10, 3)).astype(np.uint8)
    mask = rng.random((12, 10)) > 0.4
    out = baselines.mean_fill(image, mask)
    expected = np.rint(image[mask].astype(float).mean(axis=0))  # mean of valid pixels only
    np.testing.assert_array_equal(out[~mask], np.broadcast_to(expected, out[~mask].shape))
    np.testing.assert_array_equal(out[mask], image[mask])


def test_no_hole_returns_the_input_and_bad_input_is_named() -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    for name in baselines.BASELINES:
        fill = baselines.get_baseline(name, {"telea_radius": 3, "ns_radius": 3})
        np.testing.assert_array_equal(fill(image, np.ones((8, 8))), image)
    with pytest.raises(ValueError, match="Mask shape"):
        baselines.telea(image, np.ones((4, 4)))
    with pytest.raises(ValueError, match="Unknown baseline"):
        baselines.get_baseline("nope", {})
    with pytest.raises(
        ValueError, match=r"evaluate.ns_radius is missing \(conf/base/parameters_evaluate.yml\)"
    ):
        baselines.get_baseline("navier_stokes", {"telea_radius": 3})


def test_inpaint_batch_sequential_equals_pool() -> None:
    rng = np.random.default_rng(2)
    images = np.stack([_scene(rng) for _ in range(3)])
    masks = np.stack([_mask()] * 3)
    fn = baselines.get_baseline("telea", {"telea_radius": 3})
    seq = baselines.inpaint_batch(fn, images, masks)
    pooled = baselines.inpaint_batch(fn, images, masks, workers=2)
    np.testing.assert_array_equal(seq, pooled)
    np.testing.assert_array_equal(seq[1], baselines.telea(images[1], masks[1]))


@pytest.mark.parametrize("mask_dtype", [bool, np.uint8, np.float64])
def test_mean_fill_matches_the_numpy_mean_bit_for_bit(mask_dtype: type) -> None:
    """Full-size images, means that are exact halves (ties round to even), any mask dtype."""
    rng = np.random.default_rng(3)
    ties = 0
    for trial in range(12):
        image = rng.integers(0, 256, (256, 256, 3)).astype(np.uint8)
        valid = rng.random((256, 256)) < rng.choice([0.001, 0.3, 0.9])
        if trial % 2 == 0:  # levels v, v + 1 in alternate columns, whole valid rows: v + 0.5
            image[:] = rng.integers(0, 255, 3).astype(np.uint8)
            image[:, 1::2] += 1
            valid[:] = (rng.random(256) < 0.5)[:, None]
        if trial % 3 == 0:
            image, valid = image.transpose(1, 0, 2), valid.T  # not C-contiguous
        out = baselines.mean_fill(image, valid.astype(mask_dtype))
        mean = image[valid].astype(np.float64).mean(axis=0)
        ties += int(np.sum(mean % 1 == 0.5))
        expected = np.rint(mean).astype(np.uint8)
        np.testing.assert_array_equal(out[~valid], np.broadcast_to(expected, out[~valid].shape))
        np.testing.assert_array_equal(out[valid], image[valid])
    assert ties >= 9


def test_mean_fill_without_valid_pixels_is_mid_grey() -> None:
    image = np.full((8, 6, 3), 17, np.uint8)
    out = baselines.mean_fill(image, np.zeros((8, 6), np.uint8))
    np.testing.assert_array_equal(out, np.full_like(image, 128))  # rint(127.5) = 128
