"""Irregular hole masks with a hole ratio inside a chosen bucket.

Shape kinds: ``stroke`` (polylines of a random width, as in Liu et al. 2018), ``circle`` and
``ellipse`` (filled), ``arc`` (thick elliptical arcs), ``rectangle`` (filled, rotated),
``walk`` (random walks: many short steps) and ``blob`` (large compact star-shaped blobs with a
smooth random outline). ``MaskShapeConfig.kinds`` says which kinds grow a mask and how often.

Convention: the returned mask is uint8 (H, W) with 1 = valid pixel and 0 = hole, as the
paper's M. Shape sizes are fractions of the mask side so one configuration serves 32 px
tests and 256 px training alike. Every mask is drawn from its own generator, seeded by
(seed, stream, index), so masks do not depend on generation order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import cv2
import numpy as np

from aerial_inpainting.imaging.buckets import BUCKET_LABELS, bucket_bounds

# Independent random streams for the two mask sets.
TEST_STREAM = 0
TRAIN_STREAM = 1
VAL_STREAM = 2

SHAPE_KINDS = ("stroke", "circle", "ellipse", "arc", "rectangle", "walk", "blob")


@dataclass(frozen=True)
class MaskShapeConfig:
    """Shape counts and sizes (fractions of the mask side) for one round of drawing."""

    stroke_count: tuple[int, int] = (1, 4)
    stroke_vertices: tuple[int, int] = (3, 8)
    stroke_step: tuple[float, float] = (0.05, 0.25)  # segment length
    stroke_thickness: tuple[float, float] = (0.02, 0.08)
    circle_count: tuple[int, int] = (0, 3)
    circle_radius: tuple[float, float] = (0.02, 0.10)
    ellipse_count: tuple[int, int] = (0, 3)
    ellipse_axis: tuple[float, float] = (0.03, 0.15)
    arc_count: tuple[int, int] = (0, 0)
    arc_axis: tuple[float, float] = (0.1, 0.4)
    arc_span: tuple[float, float] = (60.0, 300.0)  # degrees
    rectangle_count: tuple[int, int] = (0, 0)
    rectangle_side: tuple[float, float] = (0.05, 0.35)
    walk_count: tuple[int, int] = (0, 0)
    walk_steps: tuple[int, int] = (20, 80)
    walk_step: tuple[float, float] = (0.01, 0.04)
    blob_count: tuple[int, int] = (0, 0)
    blob_radius: tuple[float, float] = (0.08, 0.3)
    # Kinds that grow a mask towards its target ratio, drawn uniformly (repeat one to weight it).
    kinds: tuple[str, ...] = ("stroke", "stroke", "circle", "ellipse")
    max_attempts: int = 400

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> MaskShapeConfig:
        """Build from a parameters mapping (lists become tuples; unknown keys are an error)."""
        params = dict(params or {})
        known = {f.name for f in fields(cls)}
        unknown = set(params) - known
        if unknown:
            raise ValueError(
                f"Unknown mask shape parameters {sorted(unknown)}; known: {sorted(known)}"
            )
        values = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in params.items()}
        config = cls(**values)
        bad_kinds = sorted(set(config.kinds) - set(SHAPE_KINDS))
        if not config.kinds or bad_kinds:
            raise ValueError(
                f"Mask parameter kinds {list(config.kinds)}: use some of {SHAPE_KINDS}"
            )
        for name in known - {"max_attempts", "kinds"}:
            lo, hi = getattr(config, name)
            if lo > hi or lo < 0:
                raise ValueError(f"Mask parameter {name} must be [low, high] with 0 <= low <= high")
        return config


def mask_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The generator of one mask, fixed by (seed, stream, index) alone."""
    return np.random.default_rng([int(seed), int(stream), int(index)])


def _int_in(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    return int(rng.integers(bounds[0], bounds[1] + 1))


def _draw_shape(
    holes: np.ndarray, rng: np.random.Generator, config: MaskShapeConfig, kind: str, scale: float
) -> None:
    """Draw one shape of ``kind`` as 1s into ``holes`` (uint8), sizes multiplied by ``scale``."""
    size = holes.shape[0]

    def length(bounds: tuple[float, float]) -> float:
        return rng.uniform(*bounds) * size * scale

    if kind == "stroke":
        n_vertices = max(2, _int_in(rng, config.stroke_vertices))
        thickness = max(1, round(length(config.stroke_thickness)))
        point = rng.uniform(0, size, 2)
        angle = rng.uniform(0, 2 * np.pi)
        points = [point.copy()]
        for _ in range(n_vertices - 1):
            angle += rng.uniform(-np.pi / 2, np.pi / 2)
            point = np.clip(
                point + length(config.stroke_step) * np.array([np.cos(angle), np.sin(angle)]),
                0,
                size - 1,
            )
            points.append(point.copy())
        polyline = np.round(np.array(points)).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(holes, [polyline], False, 1, thickness)
        for vertex in polyline[:, 0]:  # round joints
            cv2.circle(holes, (int(vertex[0]), int(vertex[1])), thickness // 2, 1, -1)
    elif kind == "circle":
        centre = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        cv2.circle(holes, centre, max(1, round(length(config.circle_radius))), 1, -1)
    elif kind == "ellipse":
        centre = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        axes = (
            max(1, round(length(config.ellipse_axis))),
            max(1, round(length(config.ellipse_axis))),
        )
        cv2.ellipse(holes, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    elif kind == "arc":
        centre = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        axes = (max(1, round(length(config.arc_axis))), max(1, round(length(config.arc_axis))))
        start = float(rng.uniform(0, 360))
        span = float(rng.uniform(*config.arc_span))
        thickness = max(1, round(length(config.stroke_thickness)))
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(holes, centre, axes, angle, start, start + span, 1, thickness)
    elif kind == "rectangle":
        centre = (float(rng.uniform(0, size)), float(rng.uniform(0, size)))
        sides = (max(1.0, length(config.rectangle_side)), max(1.0, length(config.rectangle_side)))
        box = cv2.boxPoints((centre, sides, float(rng.uniform(0, 90))))
        cv2.fillPoly(holes, [np.round(box).astype(np.int32)], 1)
    elif kind == "walk":
        thickness = max(1, round(length(config.stroke_thickness)))
        n_steps = _int_in(rng, config.walk_steps)
        angles = rng.uniform(0, 2 * np.pi, n_steps)
        steps = np.stack([np.cos(angles), np.sin(angles)], 1) * length(config.walk_step)
        points = np.clip(rng.uniform(0, size, 2) + np.cumsum(steps, 0), 0, size - 1)
        polyline = np.round(points).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(holes, [polyline], False, 1, thickness)
    elif kind == "blob":
        # Star-shaped: radius r(t) = R (1 + sum_k a_k cos(k t + phi_k)), k = 2..4, a_k < 0.15.
        radius = length(config.blob_radius)
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        r = np.ones_like(t)
        for k in (2, 3, 4):
            r += rng.uniform(0, 0.15) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
        centre = rng.uniform(0, size, 2)
        outline = centre + (radius * r)[:, None] * np.stack([np.cos(t), np.sin(t)], 1)
        cv2.fillPoly(holes, [np.round(outline).astype(np.int32)], 1)
    else:
        raise ValueError(f"Unknown shape kind {kind!r}")


def random_holes(rng: np.random.Generator, size: int, config: MaskShapeConfig) -> np.ndarray:
    """One round of shapes with the configured counts: uint8 (size, size), 1 = hole."""
    holes = np.zeros((size, size), np.uint8)
    for kind, bounds in (
        ("stroke", config.stroke_count),
        ("circle", config.circle_count),
        ("ellipse", config.ellipse_count),
        ("arc", config.arc_count),
        ("rectangle", config.rectangle_count),
        ("walk", config.walk_count),
        ("blob", config.blob_count),
    ):
        if kind not in ("stroke", "circle", "ellipse") and bounds == (0, 0):
            continue  # no draw from rng: configurations without the newer kinds stay as they were
        for _ in range(_int_in(rng, bounds)):
            _draw_shape(holes, rng, config, kind, 1.0)
    return holes


def mask_in_bucket(
    size: int,
    bucket: str | tuple[float, float],
    rng: np.random.Generator,
    config: MaskShapeConfig | None = None,
) -> np.ndarray:
    """A valid-pixel mask (uint8, 1 = valid) whose hole ratio lies in (low, high].

    Grows the hole set shape by shape towards a random target ratio inside the bucket; a
    shape that would overshoot the bucket is retried smaller, so the loop ends inside the
    bucket for any image size.
    """
    config = config or MaskShapeConfig()
    low, high = bucket_bounds(bucket) if isinstance(bucket, str) else bucket
    if not 0 <= low < high <= 1:
        raise ValueError(f"Bad hole-ratio bounds ({low}, {high}]")
    total = size * size
    lo_count, hi_count = low * total, high * total
    if np.floor(hi_count) <= lo_count:
        raise ValueError(f"A {size}x{size} mask cannot have a hole ratio in ({low}, {high}]")
    # Aim at a random ratio inside the bucket so ratios spread over it, not at its floor.
    target_count = max(lo_count, rng.uniform(low, high) * total)
    holes = random_holes(rng, size, config)
    if np.count_nonzero(holes) > hi_count:  # first round too big: grow from nothing
        holes = np.zeros((size, size), np.uint8)
    kinds = config.kinds
    scale = 1.0
    for _ in range(config.max_attempts):
        count = np.count_nonzero(holes)
        # Done at the target, or inside the bucket once shapes had to shrink a lot to fit.
        if count > lo_count and (count >= target_count or scale < 0.25):
            break
        candidate = holes.copy()
        _draw_shape(candidate, rng, config, kinds[int(rng.integers(len(kinds)))], scale)
        if np.count_nonzero(candidate) <= hi_count:
            holes = candidate
        else:
            scale = max(scale * 0.7, 1.0 / size)
    need = int(np.floor(lo_count)) + 1 - int(np.count_nonzero(holes))
    if need > 0:  # pathological configuration: finish with single-pixel dots (keeps the contract)
        free = np.flatnonzero(holes.ravel() == 0)
        holes.ravel()[rng.choice(free, need, replace=False)] = 1
    return (1 - holes).astype(np.uint8)


def random_mask(
    rng: np.random.Generator, height: int, width: int, config: MaskShapeConfig | None = None
) -> np.ndarray:
    """A mask for one training sample: a hole-ratio bucket drawn uniformly, then
    :func:`mask_in_bucket` at the image's scale. uint8 (height, width), 1 = valid.

    Non-square images get the top-left ``height x width`` window of a square mask.
    """
    label = BUCKET_LABELS[int(rng.integers(len(BUCKET_LABELS)))]
    side = max(int(height), int(width))
    return mask_in_bucket(side, label, rng, config)[:height, :width]
