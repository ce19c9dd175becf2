"""The learning-rate schedule, the run's progress and the weights' moving average."""

from __future__ import annotations

import math

import torch

from aerial_inpainting.pconv.config import TrainConfig


def run_progress(step: int, total_steps: int, elapsed_s: float, max_minutes: float | None) -> float:
    """How much of the run is done, in [0, 1]: steps done, or the wall-time budget used when
    ``max_minutes`` is set and that is further along. The run ends at 1."""
    progress = step / max(total_steps, 1)
    if max_minutes:
        progress = max(progress, elapsed_s / (60.0 * float(max_minutes)))
    return min(progress, 1.0)


def learning_rate(cfg: TrainConfig, step: int, progress: float, stage: int) -> float:
    """The learning rate of the next step.

    ``constant``: the paper's ``lr_stage1`` then ``lr_stage2``. ``cosine``: a linear warm-up
    over ``warmup_steps`` to ``lr_stage1``, then half a cosine from ``lr_stage1`` to 0 over the
    run's progress (Loshchilov & Hutter, "SGDR", ICLR 2017), capped at ``lr_stage2`` in stage 2.
    """
    if cfg.lr_schedule == "constant":
        return float(cfg.lr_stage1 if stage == 1 else cfg.lr_stage2)
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    lr = float(cfg.lr_stage1) * warm * 0.5 * (1.0 + math.cos(math.pi * progress))
    return min(lr, float(cfg.lr_stage2)) if stage == 2 else lr


def stage2_due(cfg: TrainConfig, step: int, progress: float) -> bool:
    """Whether fine-tuning (stage 2) starts at this step: after ``steps_stage1`` steps, or at
    the same share of the run's progress when the wall-time budget runs ahead of the steps."""
    return step >= cfg.steps_stage1 or progress >= cfg.steps_stage1 / cfg.total_steps


def train_size_at(cfg: TrainConfig, progress: float) -> int:
    """The crop size (pixels) of the next step: ``train_size``, then ``late_train_size`` once
    the run's progress reaches ``late_train_size_from`` (a crop-size curriculum: small, cheap
    crops early, larger ones with more context at the end; ``late_train_size: null`` = none)."""
    if cfg.late_train_size is not None and progress >= cfg.late_train_size_from:
        return int(cfg.late_train_size)
    return int(cfg.train_size)


def make_ema(model: torch.nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of the weights and BatchNorm statistics (PyTorch's
    ``AveragedModel``): after update ``n`` (counted from 0),
    ``ema = d_n * ema + (1 - d_n) * weights`` with ``d_n = min(decay, (1 + n) / (10 + n))``,
    the warm-up of TensorFlow's ``ExponentialMovingAverage(num_updates=...)``, so that a short
    run's average is not dominated by its first, untrained weights."""
    cap = float(decay)

    def ema_update(averaged: list, current: list, num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        d = min(cap, (1.0 + n) / (10.0 + n))
        pairs = [(a, c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()]
        if pairs:
            torch._foreach_lerp_([a for a, _ in pairs], [c for _, c in pairs], 1.0 - d)
        for a, c in zip(averaged, current, strict=True):
            if not a.is_floating_point():  # BatchNorm's num_batches_tracked: the latest count
                a.copy_(c)

    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=ema_update, use_buffers=True)
