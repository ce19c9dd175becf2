"""Dihedral test-time augmentation against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aerial_inpainting.pconv.tta import dihedral, dihedral_inverse, dihedral_mean


@pytest.mark.parametrize("k", range(8))
def test_dihedral_matches_numpy_and_inverts(k):
    a = torch.arange(12.0).reshape(1, 1, 3, 4)
    expected = np.rot90(a[0, 0].numpy(), k % 4)
    expected = np.fliplr(expected) if k >= 4 else expected
    np.testing.assert_array_equal(dihedral(a, k)[0, 0].numpy(), expected)
    torch.testing.assert_close(dihedral_inverse(dihedral(a, k), k), a)


def test_mean_of_an_orientation_biased_model_by_hand():
    # f(x, m) = x + j / (W - 1), a left-to-right ramp. Turned back, the eight orientations see
    # the ramps j, i, W-1-j, H-1-i (twice each) over W - 1: on a square their mean is 1/2.
    size = 6
    ramp = torch.arange(size, dtype=torch.float64) / (size - 1)

    def model(x, m):
        return x + ramp.expand_as(x)

    x = torch.rand(2, 3, size, size, dtype=torch.float64)
    m = torch.ones(2, 1, size, size, dtype=torch.float64)
    torch.testing.assert_close(dihedral_mean(model, x, m), x + 0.5)


def test_an_invariant_model_is_unchanged():
    x = torch.rand(1, 3, 8, 8)
    m = (torch.rand(1, 1, 8, 8) > 0.5).float()
    torch.testing.assert_close(dihedral_mean(lambda a, b: a * b, x, m), x * m)
