"""Baselines fill holes plausibly and never touch valid pixels."""

from __future__ import annotations

import numpy as np
import pytest

from aerial_inpainting.evaluation import baselines

PARAMS = {"telea_radius": 3, "ns_radius": 3, "patchmatch_patch_size": 3, "seed": 0}
needs_patchmatch = pytest.mark.skipif(
    baselines.unavailable_reason("patchmatch") is not None,
    reason=f"pypatchmatch unavailable: {baselines.unavailable_reason('patchmatch')}",
)


def _runs_here(name: str):
    """The baseline's name, skipped as a test case where it cannot run (PatchMatch)."""
    return pytest.param(name, marks=needs_patchmatch) if name == "patchmatch" else name


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


@pytest.mark.parametrize("name", [_runs_here(n) for n in baselines.BASELINES])
def test_valid_pixels_unchanged_and_holes_plausible(name: str) -> None:
    rng = np.random.default_rng(0)
    image, mask = _scene(rng), _mask()
    fn = baselines.get_baseline(name, PARAMS)
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
        fill = baselines.get_baseline(name, PARAMS)
        np.testing.assert_array_equal(fill(image, np.ones((8, 8))), image)
    with pytest.raises(ValueError, match="Mask shape"):
        baselines.telea(image, np.ones((4, 4)))
    with pytest.raises(ValueError, match="Unknown baseline"):
        baselines.get_baseline("nope", {})
    with pytest.raises(
        ValueError, match=r"evaluate.ns_radius is missing \(conf/base/parameters_evaluate.yml\)"
    ):
        baselines.get_baseline("navier_stokes", {"telea_radius": 3})
    with pytest.raises(ValueError, match=r"evaluate.patchmatch_patch_size is missing"):
        baselines.get_baseline("patchmatch", {"seed": 0})


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


def _periodic(kind: str, size: int = 64) -> np.ndarray:
    """A hand-made periodic texture, uint8 (size, size, 3): vertical stripes 3 px wide
    (period 6) in two complementary colours, or a checkerboard of 4 px squares (period 8)."""
    yy, xx = np.mgrid[0:size, 0:size]
    on = (xx // 3) % 2 == 0 if kind == "stripes" else ((xx // 4) + (yy // 4)) % 2 == 0
    return np.stack(
        [np.where(on, 220, 30), np.where(on, 40, 200), np.full_like(xx, 100)], -1
    ).astype(np.uint8)


@needs_patchmatch
@pytest.mark.parametrize("kind", ["stripes", "checkerboard"])
def test_patchmatch_continues_a_periodic_texture_into_the_hole(kind: str) -> None:
    """Exemplar-based fill copies the pattern: its hole error against the known pattern is a
    small fraction of mean fill's (which must guess one flat colour for a two-colour texture)."""
    truth = _periodic(kind)
    valid = np.ones(truth.shape[:2], dtype=bool)
    valid[22:42, 19:41] = False  # 20 x 22 px, not aligned with the period
    image = truth.copy()
    image[~valid] = 0  # nothing of the truth left in the hole
    out = baselines.patchmatch(image, valid, patch_size=3, seed=0)
    np.testing.assert_array_equal(out[valid], truth[valid])
    err_pm = np.abs(out[~valid].astype(float) - truth[~valid]).mean()
    err_mean = np.abs(
        baselines.mean_fill(image, valid)[~valid].astype(float) - truth[~valid]
    ).mean()
    assert err_mean > 50  # both colours in the hole: half their distance, (190 + 160 + 0) / 6 = 58
    assert err_pm < 0.1 * err_mean, f"{kind}: PatchMatch {err_pm:.1f} vs mean fill {err_mean:.1f}"


@needs_patchmatch
def test_patchmatch_is_seeded_and_order_independent() -> None:
    """The same image, mask, patch size and seed give the same bytes, whatever ran before."""
    rng = np.random.default_rng(4)
    image, mask = _scene(rng, 48, 48), np.ones((48, 48), bool)
    mask[10:30, 12:34] = False
    first = baselines.patchmatch(image, mask, 3, seed=7)
    baselines.patchmatch(image, mask, 3, seed=8)  # another seed in between
    np.testing.assert_array_equal(baselines.patchmatch(image, mask, 3, seed=7), first)
    pooled = baselines.inpaint_batch(
        baselines.get_baseline("patchmatch", PARAMS | {"seed": 7}),
        np.stack([image, image]),
        np.stack([mask, mask]),
        workers=2,
    )
    np.testing.assert_array_equal(pooled[1], first)  # in another process too


def test_patchmatch_unavailable_is_named(monkeypatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "patchmatch", None)  # import fails
    reason = baselines.unavailable_reason("patchmatch")
    assert reason is not None and "pip install pypatchmatch" in reason
    assert baselines.unavailable_reason("telea") is None
    image, mask = np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), bool)
    mask[2:4, 2:4] = False
    with pytest.raises(RuntimeError, match="patchmatch cannot run: the pypatchmatch package"):
        baselines.patchmatch(image, mask)
