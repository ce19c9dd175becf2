"""Kedro hooks of the project."""

from __future__ import annotations

import logging
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.pipeline.node import Node

logger = logging.getLogger(__name__)

MODEL_CHOICES = ("trained", "pretrained", "auto")


class ProjectRootHook:
    """Records the session's project root, so parameters' relative paths resolve against it
    (:func:`aerial_inpainting.project_paths.project_root`), from any working directory."""

    @hook_impl(tryfirst=True)
    def after_context_created(self, context) -> None:
        from aerial_inpainting.project_paths import set_session_root

        set_session_root(context.project_path)


class DataSourceHook:
    """Records with the MLflow run whether the images were real SkyView or synthetic."""

    @hook_impl
    def after_node_run(self, node: Node, outputs: dict[str, Any]) -> None:
        if node.name != "ingest_images" or "image_index" not in outputs:
            return
        index = outputs["image_index"]
        sources = sorted(set(index["data_source"])) if len(index) else ["none"]
        data_source = "+".join(sources)
        try:
            import mlflow

            if mlflow.active_run() is not None:
                mlflow.set_tag("data_source", data_source)
                mlflow.set_tag("n_images", str(len(index)))
        except Exception as exc:  # tracking must never break the pipeline
            logger.warning("Could not record data_source=%s in MLflow: %s", data_source, exc)


class PretrainedModelHook:
    """``evaluate.model`` / ``inpaint.model``: which model the run's ``model`` input is.

    ``trained``: the catalog's ``model`` (the latest model ``kedro run`` saved); ``pretrained``:
    the model shipped with the package (catalog ``pretrained_model``, ``MODEL_CARD.md``);
    ``auto``: the trained model when there is one (or the run trains one), else the
    pretrained one. For a run that selects ``pretrained``, the catalog's ``model`` entry is
    replaced by the read-only pretrained dataset before any node runs, so the trained model
    is never opened; the MLflow run gets the tag ``model_source``.
    """

    def __init__(self) -> None:
        self.source: str | None = None

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        self.source = None
        users = [node for node in pipeline.nodes if "model" in node.inputs]
        if not users:
            return
        parameters = catalog.load("parameters") if "parameters" in catalog else {}
        trains = "model" in pipeline.all_outputs()
        chosen = choose_model_source(users, parameters, trains, lambda: catalog.exists("model"))
        if chosen is None:
            self.source = "trained"
            return
        from aerial_inpainting.datasets import PretrainedModelDataset
        from aerial_inpainting.pretrained_model import DEFAULT_NAME, describe_pretrained

        dataset = catalog.get("pretrained_model") if "pretrained_model" in catalog else None
        if dataset is None:  # a catalog without the entry (it is declared in conf/base)
            dataset = PretrainedModelDataset(name=DEFAULT_NAME)
        catalog["model"] = dataset
        name = getattr(dataset, "_name", DEFAULT_NAME)
        self.source = f"pretrained:{name}"
        logger.info("%s: using the %s", chosen, describe_pretrained(name))

    @hook_impl
    def before_node_run(self, node: Node) -> None:
        if self.source is None or "model" not in node.inputs:
            return
        try:
            import mlflow

            if mlflow.active_run() is not None:
                mlflow.set_tag("model_source", self.source)
        except Exception as exc:  # tracking must never break the pipeline
            logger.warning("Could not record model_source=%s in MLflow: %s", self.source, exc)


def choose_model_source(users, parameters, trains: bool, trained_exists) -> str | None:
    """The parameter that selects the pretrained model for this run (e.g.
    ``"evaluate.model=pretrained"``), or None when the run uses the trained ``model``.

    ``users``: the run's nodes reading ``model`` (their tag, ``evaluate`` or ``inpaint``,
    names the parameter section); ``trains``: the run also writes ``model``;
    ``trained_exists``: a callable saying whether a trained model is saved. Raises
    ValueError for an unknown value, for ``pretrained`` in a run that trains, and for two
    sections asking for different models in one run.
    """
    resolved: dict[str, str] = {}
    for node in users:
        section = next((t for t in ("evaluate", "inpaint") if t in node.tags), None)
        if section is None:
            resolved[f"{node.name} (untagged)"] = "trained"
            continue
        value = str((parameters.get(section) or {}).get("model", "trained")).strip().lower()
        if value not in MODEL_CHOICES:
            raise ValueError(
                f"{section}.model: expected one of {', '.join(MODEL_CHOICES)}, got {value!r}"
            )
        if value == "auto":
            value = "trained" if trains or trained_exists() else "pretrained"
        resolved[f"{section}.model"] = value
    if "pretrained" not in resolved.values():
        return None
    selectors = sorted(k for k, v in resolved.items() if v == "pretrained")
    if trains:
        raise ValueError(
            f"{selectors[0]}=pretrained, but this run also trains a model (it writes "
            "`model`); run the pipeline alone, e.g. `kedro run --pipelines=evaluate "
            "--params evaluate.model=pretrained`"
        )
    others = sorted(k for k, v in resolved.items() if v != "pretrained")
    if others:
        raise ValueError(
            f"{selectors[0]}=pretrained but {others[0]} uses the trained model, in one run: "
            "run the pipelines separately or choose the same model"
        )
    return f"{selectors[0]}=pretrained"
