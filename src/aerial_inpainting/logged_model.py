"""The MLflow 3 logged model of a ``kedro run``, with its evaluation metrics and dataset.

MLflow 3 shows a logged model's metrics ("Metrics") and the datasets they were computed on
("Datasets used") only when each metric is logged with the model's id and the dataset's name
and digest (``mlflow.log_metric(..., model_id=..., dataset=...)``); a plain run metric is not
shown there. In a run that trains and evaluates (``kedro run``):

* :class:`aerial_inpainting.hooks.MlflowRunHook` makes the model kedro-mlflow has just logged
  (catalog ``mlflow_model``) the *active model* (:func:`activate_last_logged_model`), and logs
  the test split as a dataset input of the run (context ``evaluation``; the large-hole subset:
  ``evaluation_large_holes``) before the evaluation scores it;
* :class:`LoggedModelMetricsDataset` (catalog ``evaluation_metrics``) logs the evaluation's
  metrics as kedro-mlflow's ``MlflowMetricsHistoryDataset`` does, plus the active model's id
  and the run's dataset input of its ``dataset_context``.

A run without a logged model (``kedro run --pipelines=evaluate``) logs plain run metrics
(with the dataset), as before. Source: MLflow 3 "logged models"
(https://mlflow.org/docs/latest/ml/model/#logged-models).
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import mlflow
from kedro.io.core import DatasetError
from kedro_mlflow.io.metrics import MlflowMetricsHistoryDataset

CONTEXT_TAG = "mlflow.data.context"  # the tag log_input(context=...) gives a dataset input


def activate_last_logged_model() -> str | None:
    """Make the model last logged in this process MLflow's active model, so metrics logged
    next carry its id; returns the id (None when no model was logged)."""
    model = mlflow.last_logged_model()
    if model is None:
        return None
    mlflow.set_active_model(model_id=model.model_id)
    return model.model_id


def run_dataset(run_id: str, context: str) -> tuple[str, str] | None:
    """(name, digest) of the run's dataset input logged with ``context``, the last one when
    several were; None when there is none."""
    run = mlflow.MlflowClient().get_run(run_id)
    found = None
    for dataset_input in run.inputs.dataset_inputs if run.inputs else []:
        if any(t.key == CONTEXT_TAG and t.value == context for t in dataset_input.tags):
            found = (dataset_input.dataset.name, dataset_input.dataset.digest)
    return found


class LoggedModelMetricsDataset(MlflowMetricsHistoryDataset):
    """kedro-mlflow's metrics dataset whose metrics also belong to the active logged model
    and name the dataset they were computed on.

    ``dataset_context``: the context of the run's dataset input the metrics were computed on
    (``evaluation``); no such input -> metrics without a dataset. Other arguments as
    ``MlflowMetricsHistoryDataset`` (``prefix``, ``run_id``). Data: ``{key: {"value": v,
    "step": s}}`` or ``{key: [{"value": v, "step": s}, ...]}``.
    """

    def __init__(
        self,
        run_id: str | None = None,
        prefix: str | None = None,
        dataset_context: str | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        super().__init__(run_id=run_id, prefix=prefix, metadata=metadata)
        self._dataset_context = dataset_context

    def _save(self, data: dict[str, Any]) -> None:
        if not self._logging_activated:
            return
        try:
            run_id = self.run_id
        except DatasetError:  # no active run: as kedro-mlflow, let MLflow start one
            run_id = mlflow.start_run().info.run_id
        model_id = mlflow.get_active_model_id()
        found = run_dataset(run_id, self._dataset_context) if self._dataset_context else None
        name, digest = found if found else (None, None)
        client = mlflow.MlflowClient()
        metrics = (self._build_args_list_from_metric_item(k, v) for k, v in data.items())
        for key, value, step in chain.from_iterable(metrics):
            client.log_metric(
                run_id,
                key,
                value,
                step=step,
                model_id=model_id,
                dataset_name=name,
                dataset_digest=digest,
            )

    def _describe(self) -> dict[str, Any]:
        return {**super()._describe(), "dataset_context": self._dataset_context}
