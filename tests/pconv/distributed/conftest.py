"""Tiny inputs and one shared 2-process gloo launch for the data-parallel tests (CPU only).

``two_process_job`` starts the 2 processes once per test session (process start-up is what
costs time) and runs, in one process group: the collectives, a SyncBatchNorm layer, and the
trainings of ``RUNS``. The tests compare what each rank saved with references computed here
in one process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import complete_training_params, make_kedro_project

from aerial_inpainting.pconv import distributed as ddp
from aerial_inpainting.pconv.data import InpaintingTrainDataset
from aerial_inpainting.pconv.train import TrainingData
from aerial_inpainting.pconv.train_distributed import save_bundle

from .ddp_workers import job_worker

GLOBAL_BATCH = 4


def tiny_images(n: int, size: int, seed: int) -> np.ndarray:
    """Smooth colour ramps with a little noise (uint8 RGB)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    coef = rng.uniform(-1, 1, size=(n, 3, 3))
    base = 0.5 + 0.25 * (coef[:, 0, :, None, None] * xx + coef[:, 1, :, None, None] * yy)
    noisy = base + 0.05 * rng.normal(size=(n, 3, size, size))
    return (np.clip(noisy, 0, 1) * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)


def tiny_masks(n: int, size: int, seed: int) -> list[np.ndarray]:
    """Masks (1 = valid) with one rectangular hole each."""
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(n):
        m = np.ones((size, size), dtype=np.uint8)
        top, left = rng.integers(0, size // 2, size=2)
        m[top : top + size // 3, left : left + size // 2] = 0
        masks.append(m)
    return masks


def tiny_params(tmp: Path, **overrides: Any) -> dict[str, Any]:
    """``params:training`` for a depth-2 U-Net on 16 px crops, 3 + 2 steps, per-rank batch 2."""
    params: dict[str, Any] = {
        "seed": 3,
        "device": "cpu",
        "precision": "fp32",  # not `auto` (bf16 on CPUs with native bf16): runs are compared
        "model": {"depth": 2, "base_channels": 4, "max_channels": 8},
        "train_size": 16,
        "batch_size": GLOBAL_BATCH // 2,  # per process
        "steps_stage1": 3,
        "steps_stage2": 2,  # the stage switch rebuilds DDP (encoder BatchNorm frozen)
        "lr_stage1": 2e-3,
        "lr_stage2": 1e-3,
        "vgg_weights": "none",
        "vgg_offline_fallback": "disable",
        "num_workers": 0,
        "log_every": 1,
        "val_every": 2,  # rank 0 validates alone mid-run: must not stall the others
        "val_images": 2,
        "checkpoint_dir": None,
        "progress_bar": False,
        "backend": "gloo",
    }
    params.update(overrides)
    return complete_training_params(params)


def tiny_data() -> TrainingData:
    images = tiny_images(8, 20, seed=0)  # 20 px images, 16 px random crops
    dataset = InpaintingTrainDataset(images, list(range(6)), tiny_masks(4, 16, 1), size=16, seed=5)
    val = torch.from_numpy(images[6:8, :16, :16]).permute(0, 3, 1, 2).float() / 255
    val_masks = torch.from_numpy(np.stack(tiny_masks(2, 16, 2))).float()[:, None]
    return TrainingData(dataset, val, val_masks, {"test": "tiny"})


def tiny_catalog_inputs() -> dict[str, Any]:
    """The training node's catalog inputs: 10 images of 20 px (8 train, 2 test), masks."""
    images = tiny_images(10, 20, seed=0)
    ids = [f"img_{i:02d}" for i in range(10)]
    frame = pd.DataFrame({"image_id": ids, "class_name": "Synthetic", "row": range(10)})
    test_masks = {f"t_{i}": m for i, m in enumerate(tiny_masks(2, 20, seed=2))}
    return {
        "images": images,
        "train_split": frame.iloc[:8].reset_index(drop=True),
        "val_split": frame.iloc[8:].reset_index(drop=True),
        "train_masks": {f"m_{i}": m for i, m in enumerate(tiny_masks(4, 16, seed=1))},
        "val_masks": test_masks,
        "val_mask_index": pd.DataFrame(
            {
                "mask_id": list(test_masks),
                "image_id": ids[8:],
                "hole_ratio": [1 - m.mean() for m in test_masks.values()],
                "bucket": "0.1-0.2",
            }
        ),
    }


def bn_input() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, 5, 6, generator=gen, dtype=torch.float64).float() * 2 + 0.5


def _runs(tmp: Path) -> list[dict[str, Any]]:
    """Without and with SyncBatchNorm; then the latter interrupted after step 3 and resumed."""
    ckpt = {"checkpoint_every": 2, "keep_checkpoints": 0}
    sync = {"sync_batchnorm": True, **ckpt}
    return [
        {"name": "nosync", "params": tiny_params(tmp, sync_batchnorm=False)},
        {"name": "sync", "params": tiny_params(tmp, checkpoint_dir=str(tmp / "ck_sync"), **sync)},
        {"name": "interrupted", "stop_at_step": 3,
         "params": tiny_params(tmp, checkpoint_dir=str(tmp / "ck_int"), **sync)},
        {"name": "resumed", "params": tiny_params(tmp, checkpoint_dir=str(tmp / "ck_int"), **sync)},
    ]  # fmt: skip


@pytest.fixture(scope="session")
def two_process_job(tmp_path_factory):
    """(out_dir, load) after one 2-process launch; ``load(name)`` -> both ranks' saved runs."""
    tmp = tmp_path_factory.mktemp("ddp")
    save_bundle(tmp / "bundle", tiny_data())
    returned = ddp.launch_local(
        2, job_worker, (bn_input(), _runs(tmp), str(tmp / "bundle"), str(tmp))
    )
    assert returned == {0: "rank 0 done", 1: "rank 1 done"}

    def load(name: str) -> list[dict[str, Any]]:
        return [torch.load(tmp / f"{name}_rank{r}.pt", weights_only=False) for r in range(2)]

    return tmp, load


# The tiny network and run of the torchrun tests, as `kedro run --params` items.
TORCHRUN_OVERRIDES = {
    "device": "cpu",
    "model.depth": 2,
    "model.base_channels": 4,
    "model.max_channels": 8,
    "train_size": 16,
    "batch_size": 2,
    "vgg_weights": "none",
    "val_images": 2,
    "progress_bar": "false",
}


def torchrun_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A generated Kedro project (cwd) whose catalog holds the training node's tiny inputs."""
    from aerial_inpainting.torchrun_training import load_context

    project = make_kedro_project(tmp_path / "project")
    monkeypatch.chdir(project)  # torchrun_training.main() changes into the project
    catalog = load_context(project, None, {}).catalog
    for name, value in tiny_catalog_inputs().items():
        catalog.save(name, value)
    return project


def torchrun_params(**changes: Any) -> str:
    """``TORCHRUN_OVERRIDES`` with ``changes``, as the ``--params`` string of torchrun_training."""
    items = {**TORCHRUN_OVERRIDES, **changes}
    return ",".join(f"training.{key}={value}" for key, value in items.items())
