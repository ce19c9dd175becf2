"""Test-data helpers for the inpaint tests (deterministic images, masks, PNG files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth uint8 RGB test scene (gradients and waves), deterministic."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    phase = rng.uniform(0, 2 * np.pi, 3)
    channels = [
        128 + 90 * np.sin(xx / 9.0 + phase[0]),
        128 + 90 * np.cos(yy / 11.0 + phase[1]),
        128 + 60 * np.sin((xx + yy) / 15.0 + phase[2]),
    ]
    return np.clip(np.rint(np.stack(channels, axis=-1)), 0, 255).astype(np.uint8)


def box_mask(height: int, width: int, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    """uint8 (H, W) mask, 1 = valid, 0 inside each (top, left, bottom, right) box."""
    mask = np.ones((height, width), dtype=np.uint8)
    for top, left, bottom, right in boxes:
        mask[top:bottom, left:right] = 0
    return mask


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image).copy()
