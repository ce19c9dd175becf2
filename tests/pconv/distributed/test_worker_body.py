"""Both launch paths run one worker body, ``train_distributed.run_worker``.

Each path is run in this process as a world of one (no ``WORLD_SIZE`` in the environment),
with ``run_worker`` wrapped to record its calls; the 2-process runs of both paths are in
``test_launchers.py``.
"""

from __future__ import annotations

import json

import mlflow
import pytest

from aerial_inpainting.pconv import train_distributed
from aerial_inpainting.pconv.checkpoint import load_model

from .conftest import tiny_data, tiny_params, torchrun_params, torchrun_project


@pytest.fixture
def worker_calls(monkeypatch):
    """Records every ``run_worker`` call (its job) and runs the real body."""
    real = train_distributed.run_worker
    calls = []

    def recording(job):
        calls.append(job)
        return real(job)

    monkeypatch.setattr(train_distributed, "run_worker", recording)
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_elastic_launch_runs_the_worker_body_in_every_process(tmp_path, monkeypatch, worker_calls):
    launched = []

    def one_process_launch(n_procs, entry_fn, args=()):
        launched.append(n_procs)
        return {0: entry_fn(*args)}

    monkeypatch.setattr(train_distributed.ddp, "launch_local", one_process_launch)
    params = tiny_params(tmp_path, devices=2)
    result = train_distributed.train_multiprocess(params, tiny_data(), 2)

    assert launched == [2]
    (job,) = worker_calls
    assert job.params == params
    assert result.info["final_step"] == 5  # steps_stage1 + steps_stage2 of tiny_params
    assert result.history.step.tolist() == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_torchrun_entry_point_runs_the_worker_body(tmp_path, monkeypatch, worker_calls):
    from aerial_inpainting.torchrun_training import main

    project = torchrun_project(tmp_path, monkeypatch)
    params = torchrun_params(steps_stage1=2, steps_stage2=1, checkpoint_dir="null")

    assert main(["--project-dir", str(project), "--params", params, "--no-mlflow"]) == 0

    (job,) = worker_calls
    assert job.params["steps_stage1"] == 2 and job.params["model"]["depth"] == 2
    (version,) = list((project / "data/06_models/pconv_unet.safetensors").iterdir())
    saved = load_model(version / "pconv_unet.safetensors")
    metadata = json.loads(
        (project / "data/06_models/pconv_unet_metadata.json" / version.name)
        .joinpath("pconv_unet_metadata.json")
        .read_text()
    )
    assert saved.config.depth == 2 and metadata["info"]["final_step"] == 3
    assert mlflow.active_run() is None  # --no-mlflow: nothing was logged
    assert (project / "data/08_reporting/training_history.csv").is_file()
