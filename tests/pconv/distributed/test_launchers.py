"""The two ways in: the Kedro node with ``training.devices=2`` (elastic launch from Python) and
the torchrun command line; each must write one MLflow run and one set of checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mlflow
import pandas as pd
import pytest

from aerial_inpainting.pconv.checkpoint import list_checkpoints, load_model
from aerial_inpainting.pipelines.training.nodes import train_model

from .conftest import (
    GLOBAL_BATCH,
    tiny_catalog_inputs,
    tiny_params,
    torchrun_params,
    torchrun_project,
)


def _one_run(tracking_uri: str):
    client = mlflow.MlflowClient(tracking_uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return client, runs[0]


def _assert_state_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        diff = float((a[key].double() - b[key].double()).abs().max())
        assert diff <= atol, (key, diff)


def test_node_with_two_devices_logs_one_run_and_writes_one_checkpoint(tmp_path):
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    params = tiny_params(
        tmp_path,
        devices=2,
        sync_batchnorm=True,
        checkpoint_dir=str(tmp_path / "ck"),
        checkpoint_every=2,
        keep_checkpoints=1,
    )
    try:
        with mlflow.start_run(experiment_id=experiment) as run:
            model, _, history, _, grids, _ = train_model(**tiny_catalog_inputs(), params=params)
    finally:
        mlflow.set_tracking_uri(None)

    client, logged = _one_run(tracking_uri)
    assert logged.info.run_id == run.info.run_id
    assert logged.data.tags["training.world_size"] == "2"
    for key in ("loss_total", "loss_hole", "loss_valid"):  # once per step, not once per rank
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == [1, 2, 3, 4, 5], key
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_psnr")] == [2, 4, 5]
    assert len(grids) == 3  # rank 0's grids come back to the node (the catalog logs them)
    (run_dir,) = [d for d in (tmp_path / "ck").iterdir() if d.is_dir()]
    assert [step for step, _ in list_checkpoints(run_dir)] == [5]
    assert history.step.tolist() == [1, 2, 3, 4, 5]

    # Reference: the same node in this process, one device, the same global batch.
    single = {**params, "devices": 1, "batch_size": GLOBAL_BATCH, "checkpoint_dir": None}
    reference, _, ref_history, *_ = train_model(**tiny_catalog_inputs(), params=single)
    _assert_state_close(model.state_dict(), reference.state_dict(), atol=1e-4)
    cols = ["step", "loss_total", "loss_hole"]
    pd.testing.assert_frame_equal(history[cols], ref_history[cols], rtol=1e-4)


@pytest.mark.slow
def test_torchrun_entry_point_trains_from_the_catalog(tmp_path, monkeypatch):
    """``torchrun --standalone --nproc_per_node=2 -m aerial_inpainting.torchrun_training``."""
    project = torchrun_project(tmp_path, monkeypatch)
    overrides = torchrun_params(
        steps_stage1=3,
        steps_stage2=2,
        log_every=1,
        val_every=5,
        checkpoint_every=2,
        sync_batchnorm="true",
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)  # mlflow.yml (rewritten into tmp) decides
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "aerial_inpainting.torchrun_training", "--project-dir", str(project),
         "--params", overrides],
        cwd=tmp_path, env=env, check=True, timeout=300,
    )  # fmt: skip

    client, run = _one_run(f"sqlite:///{project / 'mlflow.db'}")
    assert run.info.status == "FINISHED"
    assert run.data.params["training.sync_batchnorm"] == "True"
    assert run.data.tags["training.world_size"] == "2"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss_total")]
    assert sorted(steps) == [1, 2, 3, 4, 5]
    (run_dir,) = list((project / "data/06_models/checkpoints").iterdir())
    assert [step for step, _ in list_checkpoints(run_dir)] == [4, 5]  # keep_checkpoints: 2
    (version,) = list((project / "data/06_models/pconv_unet.safetensors").iterdir())
    saved = load_model(version / "pconv_unet.safetensors")
    (metadata,) = (project / "data/06_models/pconv_unet_metadata.json").glob("*/*.json")
    assert saved.config.depth == 2 and json.loads(metadata.read_text())["info"]["final_step"] == 5
    assert (project / "data/08_reporting/training_history.csv").is_file()
    assert (project / "data/08_reporting/loss_curve.png").stat().st_size > 0
