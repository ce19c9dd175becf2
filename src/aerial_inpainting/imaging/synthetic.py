"""Seeded procedural aerial-like scenes: the built-in stand-in when SkyView is absent.

These are NOT real photographs. They exist so that a fresh clone without the Kaggle data
can run the whole DAG; they are structured (field stripes, tree crowns, shorelines, road
networks, building blocks, dunes) so that inpainting them is a learnable task. Each image
depends only on (seed, class, index), never on generation order.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

SYNTHETIC_CLASSES: tuple[str, ...] = (
    "Agriculture",
    "Desert",
    "Forest",
    "Highway",
    "Lake",
    "Residential",
)

Scene = Callable[[np.random.Generator, int], np.ndarray]


def _smooth_noise(rng: np.random.Generator, size: int, cell: int) -> np.ndarray:
    """Value noise in [0, 1): random values on a coarse grid, bicubically upsampled."""
    cells = max(2, size // max(1, cell) + 1)
    grid = rng.random((cells, cells), dtype=np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


def _fractal_noise(rng: np.random.Generator, size: int, cells: Sequence[int]) -> np.ndarray:
    """Sum of value-noise octaves, normalised to zero mean and unit-ish range."""
    total = np.zeros((size, size), np.float32)
    weight = 1.0
    for cell in cells:
        total += weight * (_smooth_noise(rng, size, cell) - 0.5)
        weight *= 0.5
    return total


def _colour(base: Sequence[float], shade: np.ndarray, amount: float) -> np.ndarray:
    """An (H, W, 3) float image: a base colour modulated by a shading field."""
    base_arr = np.asarray(base, np.float32)
    return base_arr[None, None, :] * (1.0 + amount * shade[..., None])


def _jitter(rng: np.random.Generator, colour: Sequence[float], spread: float) -> tuple:
    return tuple(float(c) for c in np.asarray(colour) * (1 + rng.uniform(-spread, spread, 3)))


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cached (yy, xx) pixel coordinates, float32, read-only."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def _agriculture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Rectangular parcels, each with its crop colour and ploughing stripes, then rotated."""
    big = int(size * 1.42) + 2
    yy, xx = _grid(big)
    palette = np.array(
        [
            [96, 128, 60],
            [130, 150, 70],
            [170, 160, 95],
            [120, 100, 70],
            [200, 180, 110],
            [80, 110, 55],
            [150, 135, 90],
        ],
        np.float32,
    )
    inner = np.arange(big // 8, big - big // 8)
    n_cols = int(rng.integers(2, 5))
    col_edges = np.sort(rng.choice(inner, n_cols - 1, replace=False))
    col_of = np.searchsorted(col_edges, np.arange(big), side="right")  # per x
    max_rows = 4
    row_of = np.empty((n_cols, big), np.int64)  # per column, row index of each y
    for col in range(n_cols):
        row_edges = np.sort(rng.choice(inner, int(rng.integers(1, max_rows)), replace=False))
        row_of[col] = np.searchsorted(row_edges, np.arange(big), side="right")
    label = col_of[None, :] * max_rows + row_of[col_of].T  # (y, x)
    n_labels = n_cols * max_rows
    colours = palette[rng.integers(len(palette), size=n_labels)] * rng.uniform(
        0.9, 1.1, (n_labels, 3)
    )
    freq = (2 * np.pi / rng.uniform(size / 60, size / 20, n_labels)).astype(np.float32)
    amp = rng.uniform(0.05, 0.15, n_labels).astype(np.float32)
    along_x = rng.random(n_labels) < 0.5
    coord = np.where(along_x[label], xx, yy)
    stripes = 1 + amp[label] * np.sin(coord * freq[label])
    image = colours.astype(np.float32)[label] * stripes[..., None]
    # dirt tracks along parcel borders
    for edge in col_edges:
        cv2.line(image, (int(edge), 0), (int(edge), big), (150, 135, 110), max(1, size // 100))
    angle = float(rng.uniform(-45, 45))
    rot = cv2.getRotationMatrix2D((big / 2, big / 2), angle, 1.0)
    rot[:, 2] -= (big - size) / 2
    image = cv2.warpAffine(
        image, rot, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )
    shade = _fractal_noise(rng, size, (size // 4, size // 16))
    return image * (1 + 0.25 * shade[..., None])


def _forest(rng: np.random.Generator, size: int) -> np.ndarray:
    """Dark canopy with blobby crowns and clearings."""
    crowns = _fractal_noise(rng, size, (max(2, size // 40), max(2, size // 16)))
    large = _fractal_noise(rng, size, (size // 3, size // 8))
    base = _jitter(rng, (45, 80, 40), 0.15)
    image = _colour(base, crowns, 1.4) * (1 + 0.5 * large[..., None])
    clearing = large > rng.uniform(0.2, 0.35)
    image[clearing] = image[clearing] * 0.6 + np.float32([120, 130, 80]) * 0.4
    return image


def _lake(rng: np.random.Generator, size: int) -> np.ndarray:
    """Land texture around a smooth water body, with a sandy shore band."""
    shape = _fractal_noise(rng, size, (size // 2, size // 6))
    yy, xx = (g / size for g in _grid(size))
    cx, cy = rng.uniform(0.3, 0.7, 2)
    radial = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    field = radial - 0.6 * shape
    level = rng.uniform(0.25, 0.4)
    water = field < level
    shore = (field >= level) & (field < level + 0.03)
    land_noise = _fractal_noise(rng, size, (size // 8, max(2, size // 32)))
    land = _colour(_jitter(rng, (90, 115, 60), 0.15), land_noise, 1.2)
    water_noise = _fractal_noise(rng, size, (size // 4,))
    depth = np.clip((level - field) * 4, 0, 1)[..., None]
    shallow = np.float32(_jitter(rng, (60, 100, 110), 0.1))
    deep = np.float32(_jitter(rng, (25, 50, 75), 0.1))
    water_img = (shallow * (1 - depth) + deep * depth) * (1 + 0.15 * water_noise[..., None])
    image = np.where(water[..., None], water_img, land)
    image[shore] = np.float32([175, 160, 125])
    return image


def _road(image: np.ndarray, p0: tuple, p1: tuple, width: int, lanes: bool, size: int) -> None:
    cv2.line(image, p0, p1, (95, 95, 100), width + 2, cv2.LINE_AA)
    cv2.line(image, p0, p1, (70, 70, 75), width, cv2.LINE_AA)
    if lanes and width >= 6:
        (x0, y0), (x1, y1) = p0, p1
        steps = max(2, int(np.hypot(x1 - x0, y1 - y0) / max(4, size // 20)))
        for k in range(0, steps, 2):
            a, b = k / steps, (k + 1) / steps
            q0 = (int(x0 + a * (x1 - x0)), int(y0 + a * (y1 - y0)))
            q1 = (int(x0 + b * (x1 - x0)), int(y0 + b * (y1 - y0)))
            cv2.line(image, q0, q1, (220, 220, 210), max(1, width // 10))


def _highway(rng: np.random.Generator, size: int) -> np.ndarray:
    """A main road with lane markings crossing fields, plus a side road."""
    noise = _fractal_noise(rng, size, (size // 4, max(2, size // 24)))
    image = np.ascontiguousarray(_colour(_jitter(rng, (110, 125, 75), 0.15), noise, 1.0))
    width = max(3, int(size * rng.uniform(0.06, 0.12)))
    angle = rng.uniform(0, np.pi)
    centre = rng.uniform(0.3, 0.7, 2) * size
    dx, dy = np.cos(angle) * size, np.sin(angle) * size
    p0 = (int(centre[0] - dx), int(centre[1] - dy))
    p1 = (int(centre[0] + dx), int(centre[1] + dy))
    _road(image, p0, p1, width, True, size)
    side = angle + np.pi / 2 + rng.uniform(-0.4, 0.4)
    q1 = (int(centre[0] + np.cos(side) * size), int(centre[1] + np.sin(side) * size))
    _road(image, (int(centre[0]), int(centre[1])), q1, max(2, width // 2), False, size)
    return image


def _residential(rng: np.random.Generator, size: int) -> np.ndarray:
    """A street grid; blocks filled with roofed houses casting shadows, and a few trees."""
    noise = _fractal_noise(rng, size, (max(2, size // 16),))
    image = np.ascontiguousarray(_colour((105, 120, 80), noise, 0.8))
    block = int(size * rng.uniform(0.25, 0.4))
    street = max(2, size // 40)
    roofs = np.float32(
        [[150, 70, 60], [120, 120, 125], [170, 150, 130], [90, 80, 80], [190, 190, 185]]
    )
    house = max(3, block // 4)
    for by in range(-int(rng.integers(0, block)), size, block):
        for bx in range(-int(rng.integers(0, block)), size, block):
            for hy in range(by + street + 1, by + block - house, house + 2):
                for hx in range(bx + street + 1, bx + block - house, house + 2):
                    if rng.random() < 0.15:
                        continue
                    w = int(house * rng.uniform(0.6, 1.0))
                    h = int(house * rng.uniform(0.6, 1.0))
                    sh = max(1, house // 5)
                    cv2.rectangle(
                        image, (hx + sh, hy + sh), (hx + w + sh, hy + h + sh), (40, 45, 35), -1
                    )
                    colour = tuple(float(c) for c in roofs[rng.integers(len(roofs))])
                    cv2.rectangle(image, (hx, hy), (hx + w, hy + h), colour, -1)
            cv2.rectangle(image, (bx, by), (bx + block, by + street), (80, 80, 85), -1)
            cv2.rectangle(image, (bx, by), (bx + street, by + block), (80, 80, 85), -1)
    for _ in range(int(rng.integers(3, 12))):
        centre = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        cv2.circle(image, centre, max(1, int(size * rng.uniform(0.01, 0.03))), (50, 85, 45), -1)
    return image


def _desert(rng: np.random.Generator, size: int) -> np.ndarray:
    """Sand with wind ripples and dunes bent by low-frequency noise."""
    yy, xx = _grid(size)
    angle = rng.uniform(0, np.pi)
    along = xx * np.cos(angle) + yy * np.sin(angle)
    warp = _fractal_noise(rng, size, (size // 3, size // 8))
    period = rng.uniform(size / 8, size / 4)
    dunes = np.sin((along + warp * size * 0.4) * (2 * np.pi / period))
    ripples = np.sin((along + warp * size * 0.2) * (2 * np.pi / (period / 7)))
    fine = _fractal_noise(rng, size, (max(2, size // 64),))
    shade = 0.12 * dunes + 0.04 * ripples + 0.2 * fine
    return _colour(_jitter(rng, (205, 175, 130), 0.08), shade, 1.0)


SCENES: dict[str, Scene] = {
    "Agriculture": _agriculture,
    "Desert": _desert,
    "Forest": _forest,
    "Highway": _highway,
    "Lake": _lake,
    "Residential": _residential,
}


def scene_rng(seed: int, class_name: str, index: int) -> np.random.Generator:
    """The generator of one scene, fixed by (seed, class, index) alone."""
    return np.random.default_rng([int(seed), zlib.crc32(class_name.encode()), int(index)])


def generate_scene(class_name: str, rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """One synthetic scene of ``class_name`` as uint8 (size, size, 3) RGB."""
    if class_name not in SCENES:
        raise ValueError(f"Unknown synthetic class {class_name!r}; choose from {sorted(SCENES)}")
    if size < 8:
        raise ValueError(f"Synthetic scenes need size >= 8, got {size}")
    image = SCENES[class_name](rng, size)
    image += rng.normal(0.0, 3.0, (size, size, 1)).astype(np.float32)  # sensor grain
    return np.clip(image, 0, 255).astype(np.uint8)


def iter_synthetic_scenes(
    seed: int,
    classes: Sequence[str] = SYNTHETIC_CLASSES,
    images_per_class: int = 40,
    size: int = 256,
) -> Iterator[tuple[str, int, np.ndarray]]:
    """Yield (class_name, index, image) for every scene, classes in the given order."""
    for class_name in classes:
        for index in range(images_per_class):
            yield (
                class_name,
                index,
                generate_scene(class_name, scene_rng(seed, class_name, index), size),
            )


def synthetic_file_name(index: int) -> str:
    """Kaggle-style file name of the index-th image of a class (``001.jpg``, ...)."""
    return f"{index + 1:03d}.jpg"


def write_synthetic_dataset(
    root: str | Path,
    seed: int = 0,
    classes: Sequence[str] = SYNTHETIC_CLASSES,
    images_per_class: int = 40,
    size: int = 256,
    quality: int = 95,
) -> list[Path]:
    """Write synthetic scenes in the Kaggle layout ``root/<Class>/<NNN>.jpg`` (tests, demos)."""
    root = Path(root)
    written = []
    for class_name, index, image in iter_synthetic_scenes(seed, classes, images_per_class, size):
        folder = root / class_name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / synthetic_file_name(index)
        Image.fromarray(image).save(path, format="JPEG", quality=quality)
        written.append(path)
    return written
