"""What the MLflow UI shows about a run's model (issue 29): the logged model's page lists the
evaluation metrics and the test split they were computed on; the run's `runner` tag is a
class name; the warnings every `kedro` command printed about third-party code are gone."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from kedro.pipeline import Node

from aerial_inpainting.hooks import MlflowRunHook, MlflowRunnerTagHook, runner_name
from aerial_inpainting.logged_model import LoggedModelMetricsDataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    """A sqlite MLflow store in tmp_path as the tracking URI, with an experiment of its own
    made active (an experiment id left active by an earlier test names another store's); the
    client on it."""
    previous = mlflow.get_tracking_uri()
    for variable in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(variable, raising=False)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_experiment("logged_model_test")
    try:
        yield mlflow.MlflowClient()
    finally:
        if mlflow.active_run() is not None:
            mlflow.end_run()
        if mlflow.get_active_model_id() is not None:
            mlflow.clear_active_model()
        mlflow.set_tracking_uri(previous)


class _Catalog:
    """The little of a DataCatalog the hook reads before the evaluation: `images`."""

    def __init__(self, images: np.ndarray) -> None:
        self._images = images

    def __contains__(self, name: str) -> bool:
        return name == "images"

    def exists(self, name: str) -> bool:
        return name == "images"

    def load(self, name: str) -> np.ndarray:
        assert name == "images"
        return self._images


def _prepare_node() -> Node:
    return Node(
        func=lambda split, index, masks: (split, masks),
        inputs=["test_split", "test_mask_index", "test_masks"],
        outputs=["evaluation_set", "evaluation_masks"],
        name="prepare_evaluation_set",
    )


def _test_split(n: int = 3) -> pd.DataFrame:
    return pd.DataFrame(
        {"image_id": [f"s_{i}" for i in range(n)], "data_source": "synthetic", "row": range(n)}
    )


def test_evaluation_metrics_belong_to_the_logged_model_and_name_the_test_split(tracking):
    hook = MlflowRunHook()
    images = np.arange(3 * 4 * 4 * 3, dtype=np.uint8).reshape(3, 4, 4, 3)
    with mlflow.start_run() as run:
        model = mlflow.initialize_logged_model(name="model", source_run_id=run.info.run_id)
        hook.after_dataset_saved("mlflow_model")  # kedro-mlflow has just logged it
        assert mlflow.get_active_model_id() == model.model_id
        split = _test_split()
        hook.before_node_run(_prepare_node(), _Catalog(images), {"test_split": split})
        LoggedModelMetricsDataset(prefix="evaluate", dataset_context="evaluation").save(
            {
                "model.psnr_mean": {"value": 27.5, "step": 0},
                "telea.psnr_mean": {"value": 26.25, "step": 0},
            }
        )
        hook.after_pipeline_run()
    assert mlflow.get_active_model_id() is None  # not carried into the next run

    logged = tracking.get_logged_model(model.model_id)
    by_key = {m.key: m for m in logged.metrics}
    assert set(by_key) == {"evaluate.model.psnr_mean", "evaluate.telea.psnr_mean"}
    assert by_key["evaluate.model.psnr_mean"].value == 27.5
    (dataset_input,) = tracking.get_run(run.info.run_id).inputs.dataset_inputs
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "evaluation"
    assert dataset_input.dataset.name == "synthetic (test split)"
    # the UI's "Datasets used" of a logged model: its metrics' dataset name and digest
    assert {(m.dataset_name, m.dataset_digest) for m in logged.metrics} == {
        ("synthetic (test split)", dataset_input.dataset.digest)
    }
    assert tracking.get_run(run.info.run_id).data.metrics["evaluate.model.psnr_mean"] == 27.5


def test_without_a_logged_model_the_metrics_are_plain_run_metrics(tracking):
    with mlflow.start_run() as run:
        LoggedModelMetricsDataset(prefix="evaluate", dataset_context="evaluation").save(
            {"model.ssim_mean": [{"value": 0.5, "step": 0}, {"value": 0.75, "step": 1}]}
        )
    history = tracking.get_metric_history(run.info.run_id, "evaluate.model.ssim_mean")
    assert [(m.step, m.value) for m in history] == [(0, 0.5), (1, 0.75)]
    assert all(m.model_id is None and m.dataset_name is None for m in history)


def test_the_runner_tag_is_the_runner_class_name(tracking):
    assert runner_name("<kedro.runner.sequential_runner.SequentialRunner object at 0x7f3a>") == (
        "SequentialRunner"
    )
    assert runner_name("ParallelRunner") == "ParallelRunner"
    repr_ = "<kedro.runner.thread_runner.ThreadRunner object at 0x7F00ab>"
    run_params = {"runner": repr_}
    with mlflow.start_run() as run:
        mlflow.set_tag("runner", repr_)  # as kedro-mlflow tags it
        MlflowRunnerTagHook().before_pipeline_run(run_params)
    assert tracking.get_run(run.info.run_id).data.tags["runner"] == "ThreadRunner"
    assert run_params["runner"] == repr_  # left as it is for the other hooks (kedro-viz)


def test_kedro_commands_print_no_third_party_warning():
    """`kedro registry list` in the project: no MLflow "Add type hints" nor OmegaConf
    "register_new_resolver() is deprecated" warning (both are about other packages' code)."""
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "COLUMNS": "2000"}
    done = subprocess.run(
        [sys.executable, "-m", "kedro", "registry", "list"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-2000:]
    assert "Warning" not in log and "WARNING" not in log, log


def test_the_settings_filters_drop_only_the_known_third_party_warnings():
    import aerial_inpainting.settings  # noqa: F401  (installs the filters)

    record = logging.LogRecord(
        "py.warnings",
        logging.WARNING,
        __file__,
        1,
        "/x/mlflow/pyfunc/utils/data_validation.py:187: UserWarning: \x1b[33mAdd type hints to "
        "the `predict` method to enable data validation",
        None,
        None,
    )
    other = logging.LogRecord(
        "py.warnings", logging.WARNING, __file__, 1, "/x/ours.py:3: UserWarning: hole", None, None
    )
    kept = logging.getLogger("py.warnings").filter
    assert not kept(record) and kept(other)


def test_the_run_link_opens_the_model_training_view():
    # MLflow 3.17's UI: the view is the link's `workflowType` (machine_learning = "Model
    # training"), else the browser's switch, GenAI by default (checked in Chromium:
    # benchmarks/mlflow_ui_screenshots.py, benchmarks/results/mlflow_ui_check.json).
    from aerial_inpainting.hooks import mlflow_ui_link

    assert mlflow_ui_link("http://127.0.0.1:5000/", "1", "abc") == (
        "http://127.0.0.1:5000/#/experiments/1/runs/abc?workflowType=machine_learning"
    )
    assert mlflow_ui_link("http://h:1", "7") == (
        "http://h:1/#/experiments/7?workflowType=machine_learning"
    )
