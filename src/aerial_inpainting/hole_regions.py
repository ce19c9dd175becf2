"""Hole-aware network calls: the U-Net runs only on regions holding holes (issue 30).

An output pixel of a PConvUNet depends only on the input within its *receptive radius*
``R`` (:func:`receptive_radius`, an upper bound). So a crop of the (padded) image gives the
same output as the whole image on every pixel farther than ``R`` from the crop's border, or
whose nearby crop border is the image's own border, provided the crop's origin is a multiple
of the network's ``2**depth`` (so its strided layers sample the same grid). Padding and
BatchNorm change nothing then: BatchNorm runs in eval mode (a per-channel affine map), and
zero padding reaches only ``R`` pixels inwards.

:func:`hole_regions` turns a hole mask into such crops:

1. the image is cut into cells of ``2**depth`` pixels; a cell holding a hole pixel is a
   *hole cell*;
2. the cells holding a pixel within ``R`` of a hole pixel are marked; each connected
   component of them is a region (its bounding box is the crop, its hole cells are the
   pixels it *owns*: the pixels whose prediction is taken from it);
3. regions are merged while one box around two costs no more pixels than the two apart;
4. a region with a side above ``max_side`` is split into cores of ``max_side - 2 k`` cells,
   each taken with ``k = ceil(R / 2**depth)`` cells of context.

Every hole pixel is owned by exactly one crop, whose border is farther than ``R`` pixels
from it (or is the image's border). :func:`predict_in_regions` runs the network on
the crops, batching crops of equal shape, and assembles the predictions; pixels outside every
crop are never computed. For a network with ``prefill="pushpull"`` the pull-push pre-fill
(an image-wide operation) is computed once on the whole image and only the U-Net runs on
crops. Source: Liu et al. 2018 (partial convolutions); receptive field arithmetic as in
Araujo et al., "Computing Receptive Fields of Convolutional Neural Networks", Distill 2019.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm


def receptive_radius(model: torch.nn.Module) -> int | None:
    """Upper bound (pixels) on how far an output pixel of a PConvUNet looks into its input.

    Encoder kernels (7, 5, 5, 3, ...) at strides 1, 2, 4, ..., the decoder's 3x3 layers at
    strides 2**(depth-1) .. 1, plus 2**depth for the nearest-neighbour upsampling; measured
    radii (22, 94, 318 px for depth 3, 5, 7) lie below it (tests/test_geotiff.py measures it
    by perturbing one pixel). None for a model without ``config.depth`` and
    ``config.encoder_kernel`` (a stand-in whose reach is unknown).
    """
    config = getattr(model, "config", None)
    depth = getattr(config, "depth", None)
    kernel = getattr(config, "encoder_kernel", None)
    if depth is None or kernel is None:
        return None
    depth = int(depth)
    encoder = sum((kernel(i) - 1) // 2 * 2**i for i in range(depth))
    decoder = sum(2**j for j in range(depth))
    return encoder + decoder + 2**depth


@dataclass(frozen=True)
class Region:
    """One crop: pixel rows ``y0:y1``, columns ``x0:x1`` (multiples of the cell size) and
    ``owned``, bool (rows, cols) in *cells* of the crop: the cells whose prediction is taken
    from this crop."""

    y0: int
    y1: int
    x0: int
    x1: int
    owned: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return (self.y1 - self.y0, self.x1 - self.x0)


def _cell_grid(holes: np.ndarray, cell: int) -> np.ndarray:
    """bool (H/cell, W/cell): cells holding at least one True of ``holes``."""
    height, width = holes.shape
    if height % cell or width % cell:
        raise ValueError(f"mask {width}x{height} is not a multiple of the cell size {cell}")
    return holes.reshape(height // cell, cell, width // cell, cell).any(axis=(1, 3))


def _area(box: tuple[int, int, int, int]) -> int:
    return (box[1] - box[0]) * (box[3] - box[2])


def _union(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, ...]:
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


def _merge_boxes(boxes: list[tuple[int, int, int, int]]) -> list[list[int]]:
    """Groups of box indexes whose union box costs no more than the boxes apart."""
    groups = [[i] for i in range(len(boxes))]
    current = list(boxes)
    merged = True
    while merged:
        merged = False
        for i in range(len(current)):
            for j in range(i + 1, len(current)):
                union = _union(current[i], current[j])
                if _area(union) <= _area(current[i]) + _area(current[j]):
                    current[i] = union  # type: ignore[assignment]
                    groups[i].extend(groups[j])
                    del current[j], groups[j]
                    merged = True
                    break
            if merged:
                break
    return groups


def hole_regions(holes: np.ndarray, cell: int, margin: int, max_side: int) -> list[Region]:
    """Crops covering every True pixel of ``holes`` (bool (H, W), sides multiples of
    ``cell``) with ``margin`` pixels of context (see the module docstring).

    ``cell``: the network's ``2**depth``; ``margin``: its receptive radius; ``max_side``:
    largest crop side in pixels (raised to ``(2 k + 2) * cell`` when smaller, so that a crop
    holds its context). Returns the regions in reading order; none when ``holes`` is empty.
    Raises ValueError when the sides are not multiples of ``cell``.
    """
    grid = _cell_grid(holes, cell)
    if not grid.any():
        return []
    k = max(0, math.ceil(margin / cell))
    side = max(int(max_side) // cell, 2 * k + 2)
    # Cells within ``margin`` px (chessboard distance: the receptive field is a square) of a
    # hole pixel: tighter than k whole cells around each hole cell.
    distance = cv2.distanceTransform((~holes).astype(np.uint8), cv2.DIST_C, 3)
    near = _cell_grid(distance <= margin, cell).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(near, connectivity=8)
    boxes = []
    for label in range(1, count):
        x, y, w, h = (int(v) for v in stats[label, :4])
        boxes.append((y, y + h, x, x + w))
    regions: list[Region] = []
    for group in _merge_boxes(boxes):
        component = np.isin(labels, [g + 1 for g in group])
        regions.extend(_split(component & grid, component, k, side, cell))
    regions.sort(key=lambda r: (r.y0, r.x0))
    return regions


def _split(owned: np.ndarray, component: np.ndarray, k: int, side: int, cell: int) -> list[Region]:
    """Crops (at most ``side`` cells a side) around the True cells of ``owned`` (a grid of
    cells): each crop is the bounding box of the ``component`` cells (those within the
    margin of its owned cells) within ``k`` cells of its owned cells."""
    ys, xs = np.nonzero(owned)
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    core = side - 2 * k
    if max(bottom - top, right - left) + 2 * k <= side:
        cores = [(top, bottom, left, right)]
    else:
        cores = [
            (y, min(y + core, bottom), x, min(x + core, right))
            for y in range(top, bottom, core)
            for x in range(left, right, core)
        ]
    regions = []
    for cy0, cy1, cx0, cx1 in cores:
        part = np.zeros_like(owned)
        part[cy0:cy1, cx0:cx1] = owned[cy0:cy1, cx0:cx1]
        if not part.any():
            continue
        py, px = np.nonzero(part)
        window = np.zeros_like(component)
        window[max(0, py.min() - k) : py.max() + 1 + k, max(0, px.min() - k) : px.max() + 1 + k] = (
            True
        )
        cy, cx = np.nonzero(component & window)
        y0, y1, x0, x1 = cy.min(), cy.max() + 1, cx.min(), cx.max() + 1
        regions.append(
            Region(y0 * cell, y1 * cell, x0 * cell, x1 * cell, part[y0:y1, x0:x1].copy())
        )
    return regions


def _owned_pixels(region: Region, cell: int) -> np.ndarray:
    return np.repeat(np.repeat(region.owned, cell, axis=0), cell, axis=1)


def uses_prefill(model: torch.nn.Module) -> bool:
    """Whether ``model`` starts from the pull-push pre-fill (``config.prefill != "none"``)."""
    return getattr(getattr(model, "config", None), "prefill", "none") != "none"


def predict_in_regions(
    model: torch.nn.Module,
    image: np.ndarray,
    valid: np.ndarray,
    device: torch.device,
    *,
    needed: np.ndarray | None = None,
    max_side: int = 1024,
    progress: bool | None = False,
    name: str = "image",
    on_call: Callable[[tuple[int, ...]], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The network's output on the hole pixels of one padded image, computed in crops.

    ``image``: uint8 (H, W, 3) with H, W multiples of the model's ``2**depth``; ``valid``:
    bool (H, W), True = known pixel. ``needed``: bool (H, W), the hole pixels wanted (default:
    every hole pixel). ``max_side``: largest crop side (memory bound; crops of equal shape
    are batched up to ``max_side**2`` pixels a call). Returns float32 (H, W, 3) in [0, 1] and
    bool (H, W) *reached* (the last layer's mask: True where the output is a prediction), as
    the network on the whole image would give them on every needed pixel (within float
    rounding); elsewhere 0 and False. Needed pixels beyond the receptive radius of every
    valid pixel cannot be reached and are not computed (except with a pre-fill, which reaches
    every pixel). ``on_call``: called with each batch's input shape (N, C, h, w).
    Raises ValueError for a model without a known receptive radius.
    """
    radius = receptive_radius(model)
    if radius is None:
        raise ValueError("hole-aware prediction needs a PConvUNet-like model (config.depth)")
    cell = 2 ** int(model.config.depth)
    height, width = valid.shape
    holes = ~valid if needed is None else (needed & ~valid)
    prefill = uses_prefill(model)
    if not prefill and holes.any():  # a pixel farther than R from every valid one: not reached
        distance = cv2.distanceTransform(
            (~valid).astype(np.uint8), cv2.DIST_C, 3, dstType=cv2.CV_32F
        )
        holes = holes & (distance <= radius)
    prediction = np.zeros((height, width, 3), dtype=np.float32)
    reached = np.zeros((height, width), dtype=bool)
    regions = hole_regions(holes, cell, radius, max_side)
    if not regions:
        return prediction, reached
    x_all = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    m_all = torch.from_numpy(np.ascontiguousarray(valid))[None, None]
    source = x_all.to(torch.float32) / 255.0
    mask = m_all.to(torch.float32)
    if prefill:
        from aerial_inpainting.pconv.pushpull import pull_push_fill

        with torch.inference_mode():
            source = pull_push_fill(source.to(device), mask.to(device)).cpu()
    by_shape: dict[tuple[int, int], list[Region]] = {}
    for region in regions:
        by_shape.setdefault(region.shape, []).append(region)
    batches = []
    for shape, group in by_shape.items():
        per_call = max(1, (int(max_side) ** 2) // (shape[0] * shape[1]))
        batches.extend(group[i : i + per_call] for i in range(0, len(group), per_call))
    for batch in tqdm(
        batches,
        desc=f"inpaint {name}",
        unit="batch",
        disable=None if progress is None else not progress,
        leave=False,
    ):
        x = torch.cat([source[:, :, r.y0 : r.y1, r.x0 : r.x1] for r in batch]).to(device)
        m = torch.cat([mask[:, :, r.y0 : r.y1, r.x0 : r.x1] for r in batch]).to(device)
        x = x.contiguous(memory_format=torch.channels_last)
        if on_call is not None:
            on_call(tuple(x.shape))
        with torch.inference_mode():
            if prefill:
                out, reach = model.forward_on_prefill(x, m)
            else:
                out, reach = model.forward_with_mask(x, m)
        out = out.clamp(0.0, 1.0).permute(0, 2, 3, 1).float().cpu().numpy()
        reach = (reach > 0).any(dim=1).cpu().numpy()
        for i, r in enumerate(batch):
            owned = _owned_pixels(r, cell)
            # With a pre-fill, the whole image holds a valid pixel: every pixel is predicted.
            reach_i = np.ones(owned.shape, dtype=bool) if prefill else reach[i]
            view_p = prediction[r.y0 : r.y1, r.x0 : r.x1]
            view_r = reached[r.y0 : r.y1, r.x0 : r.x1]
            view_p[owned] = out[i][owned]
            view_r[owned] = reach_i[owned]
    reached &= holes
    return prediction, reached
