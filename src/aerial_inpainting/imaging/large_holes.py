"""Large compact holes: blobs and rectangles up to half the image side (issue 14).

The stroke/ellipse masks of :mod:`aerial_inpainting.imaging.masks` rarely leave a hole pixel
far from a valid one; users' holes often are compact and large (a cloud, a building to
remove, a no-data corner of an orthophoto), where a U-Net of depth D cannot reach the
centre (see :func:`aerial_inpainting.inference.fill_holes`). This family makes evaluation see
that kind, as its own rows.

Each mask is one compact hole, drawn from a generator seeded by ``(seed, index)`` only, so a
mask does not depend on how many others are drawn:

* even ``index``: an axis-aligned **rectangle**, each side uniform in
  ``[min_fraction, max_fraction] * size``;
* odd ``index``: a **blob**, a star-shaped region around a centre whose radius varies
  smoothly with the angle (a few random low harmonics), scaled so that its bounding box
  spans between ``min_fraction`` and ``max_fraction`` of the side.

The hole lies wholly inside the image. Masks are uint8 (size, size), 1 = valid, 0 = hole,
like every mask of the project.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

KINDS = ("rectangle", "blob")


def large_hole_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of mask ``index`` (independent of every other index)."""
    return np.random.default_rng([int(seed), int(index), 14])


def large_hole_mask(
    size: int,
    seed: int,
    index: int,
    min_fraction: float = 0.25,
    max_fraction: float = 0.5,
) -> np.ndarray:
    """One large compact hole in a ``size`` x ``size`` mask (uint8, 1 = valid, 0 = hole).

    Raises ValueError unless ``0 < min_fraction <= max_fraction <= 1`` and ``size >= 4``.
    """
    if size < 4:
        raise ValueError(f"size must be >= 4, got {size}")
    if not 0 < min_fraction <= max_fraction <= 1:
        raise ValueError(
            f"need 0 < min_fraction <= max_fraction <= 1, got {min_fraction}, {max_fraction}"
        )
    rng = large_hole_rng(seed, index)
    lo, hi = max(1, round(min_fraction * size)), max(1, int(max_fraction * size))
    lo = min(lo, hi)
    mask = np.ones((size, size), dtype=np.uint8)
    if index % 2 == 0:  # rectangle
        h, w = (int(v) for v in rng.integers(lo, hi + 1, size=2))
        top = int(rng.integers(0, size - h + 1))
        left = int(rng.integers(0, size - w + 1))
        mask[top : top + h, left : left + w] = 0
        return mask
    # blob: r(theta) = 1 + sum_k a_k cos(k theta + phi_k), k = 2..4, normalised to its extent
    extent = int(rng.integers(lo, hi + 1))  # bounding-box side (the larger of the two)
    harmonics = np.arange(2, 5)
    amplitude = rng.uniform(0.05, 0.2, size=harmonics.size)
    phase = rng.uniform(0, 2 * np.pi, size=harmonics.size)
    aspect = rng.uniform(0.6, 1.0)
    theta = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    radius = 1 + (amplitude[:, None] * np.cos(harmonics[:, None] * theta + phase[:, None])).sum(0)
    xs, ys = radius * np.cos(theta), aspect * radius * np.sin(theta)
    span = max(np.ptp(xs), np.ptp(ys))
    scale = (extent - 1) / span
    bw, bh = np.ptp(xs) * scale, np.ptp(ys) * scale
    cx = rng.uniform(-xs.min() * scale, size - 1 - xs.max() * scale)
    cy = rng.uniform(-ys.min() * scale, size - 1 - ys.max() * scale)
    assert bw <= size and bh <= size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dx, dy = (xx - cx) / scale, (yy - cy) / (scale * aspect)
    angle = np.mod(np.arctan2(dy, dx), 2 * np.pi)
    r_at = 1 + (
        amplitude[:, None, None] * np.cos(harmonics[:, None, None] * angle + phase[:, None, None])
    ).sum(0)
    mask[np.hypot(dx, dy) <= r_at] = 0
    return mask


def large_hole_masks(
    image_ids: Sequence[str],
    size: int,
    seed: int,
    min_fraction: float = 0.25,
    max_fraction: float = 0.5,
) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """One large-hole mask per image: ``({mask_id: mask}, index)``.

    ``mask_id`` is ``large_<i:05d>``; the index has columns ``mask_id``, ``image_id``,
    ``kind`` (rectangle/blob) and ``hole_ratio`` (fraction of hole pixels).
    """
    masks: dict[str, np.ndarray] = {}
    rows = []
    for i, image_id in enumerate(image_ids):
        mask_id = f"large_{i:05d}"
        mask = large_hole_mask(size, seed, i, min_fraction, max_fraction)
        masks[mask_id] = mask
        rows.append(
            {
                "mask_id": mask_id,
                "image_id": image_id,
                "kind": KINDS[i % 2],
                "hole_ratio": float(1.0 - mask.mean()),
            }
        )
    return masks, pd.DataFrame(rows, columns=["mask_id", "image_id", "kind", "hole_ratio"])
