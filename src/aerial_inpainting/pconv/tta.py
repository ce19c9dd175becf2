"""Test-time augmentation over the dihedral group D4 (eight flips and quarter turns).

Aerial photographs have no "up": the network's fill of a hole should not depend on how the
photograph is turned. ``dihedral_mean`` runs the model on all eight orientations of the input
and averages the outputs turned back, at eight times the cost of one forward pass. An option of
evaluation (``evaluate.tta``) and inference, reported separately from the plain figure.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Element ``k`` (0..7) of D4 on the last two axes of ``x`` (..., H, W): ``k % 4``
    counter-clockwise quarter turns, then a left-right flip when ``k >= 4`` (``k = 0`` is the
    identity), as ``numpy.fliplr(numpy.rot90(a, k % 4))`` on an (H, W) array."""
    out = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(out, dims=(-1,)) if k >= 4 else out


def dihedral_inverse(x: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse of :func:`dihedral` ``(x, k)``."""
    out = torch.flip(x, dims=(-1,)) if k >= 4 else x
    return torch.rot90(out, -(k % 4), dims=(-2, -1))


def dihedral_mean(model: Model, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean over the eight D4 transforms of ``inverse(model(transform(images), transform(masks)))``.

    ``images`` (N, C, H, W) and ``masks`` (N, 1, H, W) as the model takes them (H and W
    multiples of the model's ``2**depth``, so that quarter turns of non-square inputs are valid
    too). Returns the mean shaped like the model's output (float32 under autocast).
    """
    total = None
    for k in range(8):
        out = model(dihedral(images, k), dihedral(masks, k))
        if out.dtype in (torch.float16, torch.bfloat16):  # sum the eight in float32
            out = out.float()
        out = dihedral_inverse(out, k)
        total = out if total is None else total + out
    return total / 8.0
