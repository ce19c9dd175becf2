"""Scoring many test images: every baseline and every metric, chunk by chunk, in parallel.

Kept apart from the Kedro node so a notebook or the benchmark can score images without a
project. Work is cut into chunks of images; each chunk runs the baselines and the metrics of
every method (the model's outputs come precomputed). With ``workers > 1`` chunks go to a pool
of spawned processes with one thread each: the CPU work here is many small images, which
scale across processes far better than across threads inside one PyTorch op.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch

from . import baselines as bl
from .metrics import inpainting_metrics


@dataclass
class Chunk:
    """Images of one chunk: ground truth (n, H, W, 3) uint8, masks (n, H, W) True = valid."""

    positions: np.ndarray  # positions of these images in the evaluation set
    images: np.ndarray
    masks: np.ndarray
    model_outputs: np.ndarray | None = None  # uint8 (n, H, W, 3), or None: no model scores
    # {slow baseline: bool (n,)}: run it on these images only (baselines.SAMPLE_PARAMETERS);
    # a baseline not named here runs on every image
    samples: Mapping[str, np.ndarray] = field(default_factory=dict)
    methods: Sequence[str] = ()
    # the baselines' keys (telea_radius, ns_radius, patchmatch_patch_size, seed: see
    # baselines.get_baseline) and lpips_net ("alex", "vgg", None)
    params: Mapping[str, Any] = field(default_factory=dict)


def resolve_workers(workers: int | str | None) -> int:
    """``auto``/None -> the CPUs this process may use (at most 8); else the number given (>= 1)."""
    if workers in (None, "auto"):
        try:
            available = len(os.sched_getaffinity(0))
        except AttributeError:
            available = os.cpu_count() or 1
        return max(1, min(available, 8))
    return max(1, int(workers))


def _nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)


def _composite(outputs: np.ndarray, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Ground truth on valid pixels (mask True), the output in the hole; uint8 (n, H, W, 3)."""
    return np.where(masks[..., None], images, outputs)


def score_chunk(chunk: Chunk) -> dict[str, dict[str, np.ndarray]]:
    """{method: {"positions": ..., metric: values}} for the model (if given) and each baseline.

    With ``chunk.params["lpips_net"]`` ``"alex"`` or ``"vgg"`` (not None or ``"none"``) each method also gets
    ``lpips``: LPIPS of its composite against the ground truth (features of the ground truth
    computed once per chunk); else ``lpips`` is NaN.
    """
    gt_t = _nchw(chunk.images)
    mask_t = torch.from_numpy(np.ascontiguousarray(chunk.masks))[:, None]
    out: dict[str, dict[str, np.ndarray]] = {}
    lpips_net = chunk.params["lpips_net"]
    scorer = gt_feats = None
    if lpips_net not in (None, "none") and len(chunk.images):
        from .perceptual import get_scorer

        scorer = get_scorer(lpips_net)
        gt_feats = scorer.features(chunk.images)

    def lpips_of(filled: np.ndarray, keep: np.ndarray) -> np.ndarray:
        if scorer is None:
            return np.full(int(keep.sum()), np.nan)
        feats = scorer.features(_composite(filled, chunk.images[keep], chunk.masks[keep]))
        sel = torch.from_numpy(np.flatnonzero(keep))
        return scorer.distance(feats, [f.index_select(0, sel) for f in gt_feats])

    if chunk.model_outputs is not None:
        scores = inpainting_metrics(_nchw(chunk.model_outputs), gt_t, mask_t, raw_ssim=True)
        every = np.ones(len(chunk.images), dtype=bool)
        scores["lpips"] = lpips_of(chunk.model_outputs, every)
        out["model"] = {"positions": chunk.positions, **scores}
    for name in chunk.methods:
        keep = np.ones(len(chunk.images), dtype=bool)
        if chunk.samples.get(name) is not None:
            keep = np.asarray(chunk.samples[name], dtype=bool)
        if not keep.any():
            continue
        filled = bl.inpaint_batch(
            bl.get_baseline(name, chunk.params), chunk.images[keep], chunk.masks[keep]
        )
        scores = inpainting_metrics(_nchw(filled), gt_t[keep], mask_t[keep])
        scores["lpips"] = lpips_of(filled, keep)
        out[name] = {"positions": chunk.positions[keep], **scores}
    return out


def _init_worker() -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """PyTorch and OpenCV on one thread for the duration (restored afterwards)."""
    torch_threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    _init_worker()
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        cv2.setNumThreads(cv_threads)


def score_chunks(
    chunks: Iterable[Chunk], workers: int = 1
) -> Iterator[dict[str, dict[str, np.ndarray]]]:
    """Score chunks in order, in-process (``workers <= 1``) or on a pool of spawned processes.

    At most ``2 * workers`` chunks are in flight, so memory stays bounded however many images.
    """
    if workers <= 1:
        with single_threaded():
            for chunk in chunks:
                yield score_chunk(chunk)
        return
    # spawn, not fork: forking a process whose PyTorch/OpenMP threads already ran can hang.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker
    ) as pool:
        pending: deque[Future] = deque()
        for chunk in chunks:
            pending.append(pool.submit(score_chunk, chunk))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
