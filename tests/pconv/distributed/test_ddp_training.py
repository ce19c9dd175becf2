"""Two gloo processes on the CPU train the tiny U-Net with DDP through the shared loop.

The runs come from the shared launch (``two_process_job`` in conftest.py); the references are
single-process runs of the same loop, in this process, with the same global batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from aerial_inpainting.pconv import distributed as ddp
from aerial_inpainting.pconv.checkpoint import load_model, save_model
from aerial_inpainting.pconv.train import TrainConfig, train
from aerial_inpainting.pconv.unet import PConvUNet

from .conftest import GLOBAL_BATCH, tiny_data, tiny_params


def single_process(tmp: Path, **overrides: Any):
    cfg = TrainConfig.from_params(tiny_params(tmp, batch_size=GLOBAL_BATCH, **overrides))
    return train(cfg, tiny_data())


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(
        float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point()
    )


def parameters_only(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if "running" not in k and "num_batches" not in k}


def test_both_ranks_end_with_identical_weights(two_process_job):
    _, load = two_process_job
    nosync, sync = load("nosync"), load("sync")
    for key, value in parameters_only(nosync[0]["state_dict"]).items():
        assert torch.equal(value, nosync[1]["state_dict"][key]), key
    # With SyncBatchNorm even the running statistics agree (same global batch statistics).
    for key, value in sync[0]["state_dict"].items():
        assert torch.allclose(value.double(), sync[1]["state_dict"][key].double(), atol=1e-6), key
    assert sync[0]["info"]["world_size"] == 2 and sync[0]["info"]["sync_batchnorm"]
    assert sync[0]["info"]["final_step"] == 5


def test_sync_batchnorm_run_matches_single_process_with_the_same_global_batch(
    two_process_job, tmp_path
):
    _, load = two_process_job
    single = single_process(tmp_path)
    reference = single.model.state_dict()
    start = TrainConfig.from_params(tiny_params(tmp_path)).model
    torch.manual_seed(3)  # training.seed: the initial weights of both runs
    initial = PConvUNet(start).state_dict()
    moved = max_diff(reference, initial)
    sync_gap = max_diff(load("sync")[0]["state_dict"], reference)
    nosync_gap = max_diff(load("nosync")[0]["state_dict"], reference)
    assert moved > 1e-3  # training did change the weights
    assert sync_gap < 1e-4, (sync_gap, moved)
    # Without SyncBatchNorm each rank normalises with its own half-batch: clearly different.
    assert nosync_gap > 20 * sync_gap, (nosync_gap, sync_gap)
    # Logged losses are averaged over ranks: the global batch's loss, as in the single run.
    two = load("sync")[0]["history"]
    one = single.history.to_dict(orient="records")
    assert [r["step"] for r in two] == [r["step"] for r in one]
    for a, b in zip(two, one, strict=True):
        assert a["loss_total"] == pytest.approx(b["loss_total"], rel=1e-4, abs=1e-6)


def test_resumed_two_process_run_reaches_the_uninterrupted_weights(two_process_job):
    _, load = two_process_job
    full, interrupted, resumed = load("sync"), load("interrupted"), load("resumed")
    assert interrupted[0]["info"]["final_step"] == 3
    assert resumed[0]["info"]["resumed_from_step"] == 2  # last checkpoint before the stop
    for rank in range(2):
        for key, value in full[rank]["state_dict"].items():
            assert torch.equal(value, resumed[rank]["state_dict"][key]), (rank, key)


def test_only_rank_0_writes_checkpoints_in_the_single_process_format(two_process_job):
    tmp, load = two_process_job
    calls = (tmp / "checkpoint_calls_rank0.txt").read_text().split()
    assert calls == ["2", "4", "5", "2", "4", "5"]  # sync; interrupted (stop at 3); resumed
    assert not (tmp / "checkpoint_calls_rank1.txt").exists()
    fingerprint_dirs = [d for d in (tmp / "ck_sync").iterdir() if d.is_dir()]
    assert len(fingerprint_dirs) == 1
    final = fingerprint_dirs[0] / "ckpt-000000005.pt"
    model = load_model(final)  # plain PConvUNet, BatchNorm2d: loadable without a process group
    assert not ddp.has_sync_batchnorm(model)
    for key, value in model.state_dict().items():
        assert torch.equal(value, load("sync")[0]["state_dict"][key]), key
    # Same keys as a model file written by a single process.
    save_model(tmp / "m.safetensors", model)
    assert set(load_model(tmp / "m.safetensors").state_dict()) == set(model.state_dict())


@pytest.mark.parametrize("env", ["base", "gpu"])
def test_parameter_files_carry_the_data_parallel_keys(env):
    """Kedro replaces the whole `training:` block between environments: both need the keys."""
    path = Path(__file__).resolve().parents[3] / "conf" / env / "parameters_training.yml"
    params = yaml.safe_load(path.read_text())["training"]
    cfg = TrainConfig.from_params(params)
    assert (cfg.devices, cfg.backend, cfg.sync_batchnorm) == (1, "auto", False)


def test_data_parallel_config_checks(tmp_path):
    for bad, match in (
        ({"devices": 0}, r"training\.devices"),
        ({"devices": "4"}, r"training\.devices"),
        ({"backend": "mpi"}, r"training\.backend"),
        ({"sync_batchnorm": "yes"}, r"training\.sync_batchnorm"),
    ):
        with pytest.raises(ValueError, match=match):
            TrainConfig.from_params(tiny_params(tmp_path, **bad))
    cfg = TrainConfig.from_params(tiny_params(tmp_path))
    # A single process keeps the fingerprint fields it had before data-parallel training ...
    assert "world_size" not in cfg.fingerprint_fields()
    # ... and a data-parallel run cannot resume another world size's checkpoint.
    assert cfg.fingerprint_fields(2)["world_size"] == 2
