"""Tiny synthetic inputs for the training tests (16-32 px images, depth-2 models).

The fixtures here are imported by the conftest.py of tests/pconv and tests/pipelines/training."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import complete_training_params


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny tensors: one intra-op thread is faster, and immune to a CPU shared with others."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def smooth_images(n: int, size: int, seed: int) -> np.ndarray:
    """Smooth colour gradients plus a little noise: inpaintable, unlike pure noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        a, b, c = rng.uniform(-1, 1, size=(3, 3))
        base = 0.5 + 0.25 * (a[:, None, None] * xx + b[:, None, None] * yy) + 0.1 * c[:, None, None]
        noise = rng.normal(0, 0.02, size=(3, size, size))
        out[i] = (np.clip(base + noise, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)
    return out


def box_masks(n: int, size: int, seed: int) -> dict[str, np.ndarray]:
    """Masks (1 = valid) with one or two rectangular holes, ids mask_000..."""
    rng = np.random.default_rng(seed)
    masks = {}
    for i in range(n):
        m = np.ones((size, size), dtype=np.uint8)
        for _ in range(int(rng.integers(1, 3))):
            h, w = rng.integers(size // 6, size // 2, size=2)
            top, left = rng.integers(0, size - h), rng.integers(0, size - w)
            m[top : top + h, left : left + w] = 0
        masks[f"mask_{i:03d}"] = m
    return masks


def _tiny_params(tmp_path, **overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "seed": 7,
        "device": "cpu",
        # fp32 whatever the CPU: `auto` means bf16 on CPUs with native bf16, and these runs are
        # compared with each other at tight tolerances (precision has its own tests)
        "precision": "fp32",
        "model": {"depth": 2, "base_channels": 4, "max_channels": 16},
        "train_size": 16,
        "batch_size": 2,
        "steps_stage1": 4,
        "steps_stage2": 3,
        "lr_stage1": 2e-3,
        "lr_stage2": 5e-4,
        "vgg_weights": "none",
        "vgg_offline_fallback": "disable",
        "num_workers": 0,
        "log_every": 1,
        "val_every": 3,
        "val_images": 2,
        "checkpoint_dir": str(tmp_path / "checkpoints"),
        "checkpoint_every": 1,
        "keep_checkpoints": 2,
        "resume": True,
        "progress_bar": False,
    }
    params.update(overrides)
    return complete_training_params(params)


@pytest.fixture
def make_params(tmp_path):
    """Factory: ``make_params(**overrides)`` -> tiny CPU training params under ``tmp_path``."""
    return lambda **overrides: _tiny_params(tmp_path, **overrides)


@pytest.fixture
def tiny_inputs() -> dict[str, Any]:
    """Catalog-shaped inputs of the train_model node: 12 images of 32 px, 6 train masks."""
    images = smooth_images(12, 32, seed=0)
    ids = [f"img_{i:02d}" for i in range(12)]
    frame = pd.DataFrame({"image_id": ids, "class_name": "Synthetic", "row": range(12)})
    test_masks = {f"t_{i:02d}": m for i, m in enumerate(box_masks(4, 32, seed=2).values())}
    test_mask_index = pd.DataFrame(
        {
            "mask_id": list(test_masks),
            "image_id": ids[8:],
            "hole_ratio": [1 - m.mean() for m in test_masks.values()],
            "bucket": "0.1-0.2",
        }
    )
    return {
        "images": images,
        "train_split": frame.iloc[:8].reset_index(drop=True),
        "val_split": frame.iloc[8:].reset_index(drop=True),
        "train_masks": box_masks(6, 32, seed=1),
        "val_masks": test_masks,
        "val_mask_index": test_mask_index,
    }


class _StepClock:
    """A stand-in for the loop's ``time`` module: the clock moves ``seconds_per_step`` per
    training step and not otherwise, so a wall-time budget ends the run at a known step."""

    def __init__(self, seconds_per_step: float) -> None:
        self.now, self.seconds_per_step = 1000.0, seconds_per_step

    def perf_counter(self) -> float:
        return self.now

    def tick(self) -> None:
        self.now += self.seconds_per_step


def steps_take(monkeypatch, seconds: float) -> None:
    """Every training step of :func:`aerial_inpainting.pconv.train.train` takes ``seconds``
    of (fake) wall time: a wall-time budget then ends the run at a step known in advance."""
    from aerial_inpainting.pconv import train as T

    clock = _StepClock(seconds)
    real_step = T._train_step

    def timed_step(*args, **kwargs):
        losses = real_step(*args, **kwargs)
        clock.tick()
        return losses

    monkeypatch.setattr(T, "time", clock)
    monkeypatch.setattr(T, "_train_step", timed_step)
