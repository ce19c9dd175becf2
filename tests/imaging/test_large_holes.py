"""Large compact holes (issue 14): checked against their definition with scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import label, regionprops

from aerial_inpainting.imaging.large_holes import large_hole_mask, large_hole_masks

SIZE = 64


def _hole(mask: np.ndarray):
    labels = label(mask == 0, connectivity=1)
    assert labels.max() == 1, "exactly one compact hole"
    return regionprops(labels)[0]


@pytest.mark.parametrize("index", range(0, 20, 2))
def test_even_indices_are_rectangles_up_to_half_the_side(index):
    mask = large_hole_mask(SIZE, seed=3, index=index)
    assert mask.dtype == np.uint8 and mask.shape == (SIZE, SIZE)
    assert set(np.unique(mask)) == {0, 1}
    hole = _hole(mask)
    top, left, bottom, right = hole.bbox
    assert hole.area == (bottom - top) * (right - left)  # the hole fills its box: a rectangle
    assert 16 <= bottom - top <= 32 and 16 <= right - left <= 32  # [1/4, 1/2] of the side


@pytest.mark.parametrize("index", range(1, 20, 2))
def test_odd_indices_are_compact_blobs_up_to_half_the_side(index):
    mask = large_hole_mask(SIZE, seed=3, index=index)
    hole = _hole(mask)
    top, left, bottom, right = hole.bbox
    assert max(bottom - top, right - left) <= 32
    assert max(bottom - top, right - left) >= 15
    assert hole.solidity > 0.85  # compact: close to its convex hull
    assert hole.area < (bottom - top) * (right - left)  # not a rectangle


def test_seeded_by_seed_and_index_only():
    ids = [f"img{i}" for i in range(10)]
    few, _ = large_hole_masks(ids[:3], SIZE, seed=5)
    many, index = large_hole_masks(ids, SIZE, seed=5)
    for key in few:
        np.testing.assert_array_equal(few[key], many[key])
    other, _ = large_hole_masks(ids, SIZE, seed=6)
    assert any(not np.array_equal(many[k], other[k]) for k in many)
    assert index["kind"].tolist() == ["rectangle", "blob"] * 5
    ratios = [1 - many[k].mean() for k in index["mask_id"]]
    np.testing.assert_allclose(index["hole_ratio"], ratios)
    assert index["image_id"].tolist() == ids
    assert (index["hole_ratio"] <= 0.25).all()  # at most (side / 2)^2


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="min_fraction"):
        large_hole_mask(SIZE, 0, 0, min_fraction=0.6, max_fraction=0.5)
    with pytest.raises(ValueError, match="size"):
        large_hole_mask(2, 0, 0)
