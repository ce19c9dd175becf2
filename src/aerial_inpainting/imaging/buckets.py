"""The paper's six hole-ratio buckets, shared by mask generation and evaluation.

Hole ratio = fraction of hole pixels (mask value 0). Buckets are open on the left and
closed on the right, as in Liu et al. (2018): (0.01, 0.1], (0.1, 0.2], ..., (0.5, 0.6].
"""

from __future__ import annotations

import numpy as np

BUCKET_BOUNDS: tuple[tuple[float, float], ...] = (
    (0.01, 0.1),
    (0.1, 0.2),
    (0.2, 0.3),
    (0.3, 0.4),
    (0.4, 0.5),
    (0.5, 0.6),
)
BUCKET_LABELS: tuple[str, ...] = tuple(f"{lo:g}-{hi:g}" for lo, hi in BUCKET_BOUNDS)


def hole_ratio(valid_mask: np.ndarray) -> float:
    """Fraction of hole pixels in a mask where 1/True = valid and 0 = hole."""
    mask = np.asarray(valid_mask)
    return float(np.count_nonzero(mask == 0)) / float(mask.size)


def bucket_of(ratio: float) -> str | None:
    """Label of the bucket holding ``ratio``, or None when it lies outside (0.01, 0.6]."""
    for (lo, hi), label in zip(BUCKET_BOUNDS, BUCKET_LABELS, strict=True):
        if lo < ratio <= hi:
            return label
    return None


def bucket_bounds(label: str) -> tuple[float, float]:
    """(low, high] bounds of a bucket given its label, e.g. ``"0.1-0.2"``."""
    try:
        return BUCKET_BOUNDS[BUCKET_LABELS.index(label)]
    except ValueError as exc:
        raise ValueError(
            f"Unknown hole-ratio bucket {label!r}; expected one of {BUCKET_LABELS}"
        ) from exc
