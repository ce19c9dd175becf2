"""Kedro hooks of the project."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
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


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # MLflow 3: which view the UI opens
EXPERIMENT_KIND = "custom_model_development"  # the model-training view, not the GenAI one


class MlflowRunHook:
    """What the MLflow run of a ``kedro run`` (opened by kedro-mlflow) says about itself.

    * the run's name says what ran (:func:`run_name`: pipelines, environment, data source,
      network size, steps) instead of kedro-mlflow's default, the pipeline name: it is given
      to kedro-mlflow's configuration (``context.mlflow``) before the run starts, unless
      ``mlflow.yml`` names the run (``tracking.run.name``); the data source is added once
      ingestion has told it, and the steps actually trained once ``train_model`` has run
      (``"219 of 6000 steps, cut short at 6 min"`` when the wall-time budget ended it);
    * the experiment is tagged ``mlflow.experimentKind=custom_model_development`` (MLflow
      3's "model training" kind); MLflow 3.17's UI picks its view (GenAI, the default, or
      Model training) from a per-browser switch or the link's ``workflowType`` instead, so
      the log ends with the run's link in the model-training view (:func:`mlflow_ui_link`);
    * tags ``data_source`` (``real``/``synthetic``) and ``n_images`` after ingestion;
    * before ``train_model``, the training split as an MLflow dataset input (context
      ``training``; :func:`training_dataset`), so runs on different data are told apart;
      before the evaluation, the test split (context ``evaluation``; the large-hole subset:
      ``evaluation_large_holes``), which the evaluation metrics name;
    * once kedro-mlflow has logged the model (catalog ``mlflow_model``), it becomes MLflow's
      active model, so the evaluation metrics logged next belong to it
      (:mod:`aerial_inpainting.logged_model`): the model's page shows them and its dataset;
    * the tag ``runner`` is the runner's class name (``SequentialRunner``):
      :class:`MlflowRunnerTagHook`.

    Tracking never breaks the pipeline: MLflow errors are logged as warnings.
    """

    def __init__(self) -> None:
        self._context = None
        self._name_parts: dict[str, Any] | None = None

    @hook_impl
    def after_context_created(self, context) -> None:
        self._context = context  # kedro-mlflow stores its configuration on it: context.mlflow

    @hook_impl(tryfirst=True)  # before kedro-mlflow's hook starts the run
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        self._name_parts = None
        config = getattr(self._context, "mlflow", None)
        if config is None:  # kedro-mlflow not active
            return
        _safely("tag the experiment", _tag_experiment_kind, config.tracking.experiment.name)
        if config.tracking.run.name is not None:  # named in mlflow.yml
            return
        names = run_params.get("pipeline_names") or run_params.get("pipeline_name")
        names = [names] if isinstance(names, str) else list(names or ["__default__"])
        parameters = catalog.load("parameters") if "parameters" in catalog else {}
        trains = "model" in pipeline.all_outputs()
        data_source = None
        if "image_index" not in pipeline.all_outputs() and catalog.exists("image_index"):
            data_source = _data_source(catalog.load("image_index"))
        evaluates = "evaluation_summary" in pipeline.all_outputs()
        choice = (parameters.get("evaluate") or {}).get("model") if evaluates else None
        self._name_parts = {
            "pipelines": names,
            "env": run_params.get("env"),
            "training": (parameters.get("training") or {}) if trains else None,
            "data_source": data_source,
            "evaluated_model": choice if choice != "trained" else None,
        }
        config.tracking.run.name = run_name(**self._name_parts)

    @hook_impl
    def after_node_run(self, node: Node, outputs: dict[str, Any]) -> None:
        if node.name == "train_model" and "model_metadata" in outputs:
            self._name_steps_trained(outputs["model_metadata"])
            return
        if node.name != "ingest_images" or "image_index" not in outputs:
            return
        index = outputs["image_index"]
        data_source = _data_source(index)
        run = _active_run()
        if run is None:
            return
        tags = {"data_source": data_source, "n_images": str(len(index))}
        if self._name_parts is not None:  # the run's name, now with its data source
            self._name_parts["data_source"] = data_source
            tags["mlflow.runName"] = run_name(**self._name_parts)
        _safely("record the data source", _set_tags, run.info.run_id, tags)

    def _name_steps_trained(self, metadata: dict[str, Any]) -> None:
        """The run's name, now with the steps ``train_model`` trained (its metadata's
        ``info.final_step``), unless ``mlflow.yml`` named the run."""
        info = (metadata or {}).get("info") or {}
        if self._name_parts is None or not self._name_parts.get("training"):
            return
        if "final_step" not in info:
            return
        run = _active_run()
        if run is None:
            return
        self._name_parts["steps_trained"] = int(info["final_step"])
        name = run_name(**self._name_parts)
        _safely(
            "name the run after the steps trained",
            _set_tags,
            run.info.run_id,
            {"mlflow.runName": name},
        )

    @hook_impl
    def before_node_run(self, node: Node, catalog, inputs: dict[str, Any]) -> None:
        evaluation = EVALUATION_CONTEXTS.get(node.name)
        if node.name == "train_model" and "train_split" in inputs:
            split, images = inputs["train_split"], inputs.get("images")
            context, split_name = "training", "train split"
        elif evaluation is not None and node.inputs and node.inputs[0] in inputs:
            split, (context, split_name) = inputs[node.inputs[0]], evaluation
            images = catalog.load("images") if catalog.exists("images") else None
        else:
            return
        if _active_run() is None:
            return
        raw = catalog.get("raw_aerial_landscapes") if "raw_aerial_landscapes" in catalog else None
        location = (raw._describe() or {}).get("path") if raw is not None else None
        dataset = training_dataset(split, images, location, split_name)
        _safely(f"log the {split_name} dataset", _log_input, dataset, context)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str) -> None:
        if dataset_name != "mlflow_model" or _active_run() is None:
            return
        from aerial_inpainting.logged_model import activate_last_logged_model

        _safely("make the logged model the active one", activate_last_logged_model)

    @hook_impl(tryfirst=True)  # before kedro-mlflow's hook ends the run
    def after_pipeline_run(self) -> None:
        run = _active_run()
        config = getattr(self._context, "mlflow", None)
        if run is not None and config is not None:
            base = f"http://{config.ui.host}:{config.ui.port}"
            logger.info(
                "MLflow: this run in the UI's model-training view (`kedro mlflow ui`): %s",
                mlflow_ui_link(base, run.info.experiment_id, run.info.run_id),
            )
        _safely("clear the active model", _clear_active_model)

    @hook_impl
    def on_pipeline_error(self) -> None:
        _safely("clear the active model", _clear_active_model)


class MlflowRunnerTagHook:
    """The MLflow run's tag ``runner`` is the runner's class name (``SequentialRunner``).

    Kedro's run parameters give the runner as its repr (``<kedro.runner.sequential_runner.
    SequentialRunner object at 0x7f...>``), which kedro-mlflow logs as a tag as it is. The
    run parameters themselves stay as they are (kedro-viz reads that repr); once
    kedro-mlflow has started the run (this hook runs last), the tag is replaced.
    """

    @hook_impl(trylast=True)
    def before_pipeline_run(self, run_params: dict[str, Any]) -> None:
        runner = run_params.get("runner")
        run = _active_run()
        if run is None or not isinstance(runner, str) or runner_name(runner) == runner:
            return
        _safely("tag the runner", _set_tags, run.info.run_id, {"runner": runner_name(runner)})


# The evaluation nodes that first read a test split (their first input), with the context
# their dataset input is logged under (catalog evaluation_metrics: dataset_context) and the
# dataset's name ("synthetic (test split)", "Aerial_Landscapes (test split, large holes)").
EVALUATION_CONTEXTS = {
    "prepare_evaluation_set": ("evaluation", "test split"),
    "large_holes.prepare_evaluation_set": ("evaluation_large_holes", "test split, large holes"),
}


def mlflow_ui_link(base: str, experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI's page of an experiment (or of one of its runs) in the model-training
    view: ``http://127.0.0.1:5000/#/experiments/1/runs/<run_id>?workflowType=machine_learning``.
    MLflow 3.17's UI opens experiments in its GenAI view unless the browser's switch says
    otherwise or the link names the view (``workflowType``, from the UI's source)."""
    page = f"{base.rstrip('/')}/#/experiments/{experiment_id}"
    if run_id:
        page += f"/runs/{run_id}"
    return f"{page}?workflowType=machine_learning"


def runner_name(runner: str) -> str:
    """``"<kedro.runner.sequential_runner.SequentialRunner object at 0x7f...>"`` ->
    ``"SequentialRunner"``; any other text is returned as it is."""
    import re

    found = re.fullmatch(r"<(?:[\w.]+\.)?(\w+) object at 0x[0-9a-fA-F]+>", runner.strip())
    return found.group(1) if found else runner


def run_name(
    pipelines: list[str],
    env: str | None = None,
    training: dict[str, Any] | None = None,
    data_source: str | None = None,
    evaluated_model: str | None = None,
    steps_trained: int | None = None,
) -> str:
    """``"training | env gpu | real data | U-Net depth 7, 64-512 ch | 243000 steps, 110 min"``:
    the pipelines (``__default__`` is ``default``), the environment unless ``local``, the
    data source when known, for a run that trains (``training`` = ``params:training``)
    the network and its step budget (and wall-time budget, ``max_minutes``), and for a run
    that evaluates another model than the one just trained, ``evaluate.model``
    (``"evaluate | real data | pretrained model"``). ``steps_trained``: the steps the run
    trained, once known; fewer than configured reads ``"219 of 6000 steps, cut short at
    6 min"`` (``"219 of 6000 steps"`` without a wall-time budget: an interrupted run)."""
    parts = ["+".join("default" if p == "__default__" else p for p in pipelines)]
    if env and env != "local":
        parts.append(f"env {env}")
    if data_source:
        parts.append(f"{data_source} data")
    if training:
        model = training.get("model") or {}
        parts.append(
            f"U-Net depth {model.get('depth')}, "
            f"{model.get('base_channels')}-{model.get('max_channels')} ch"
        )
        configured = int(training["steps_stage1"]) + int(training["steps_stage2"])
        budget = f"{training['max_minutes']:g} min" if training.get("max_minutes") else None
        if steps_trained is not None and steps_trained < configured:
            steps = f"{steps_trained} of {configured} steps"
            if budget:
                steps += f", cut short at {budget}"
        else:
            steps = f"{configured} steps" + (f", {budget}" if budget else "")
        parts.append(steps)
    if evaluated_model:
        parts.append(f"{evaluated_model} model")
    return " | ".join(parts)


def training_dataset(
    train_split: pd.DataFrame,
    images: np.ndarray | None,
    location: str | None,
    split_name: str = "train split",
) -> Any:
    """The training split (or another split: ``split_name``, e.g. ``"test split"``) as an
    MLflow dataset: one row per image (its profile's
    ``num_rows`` is the number of images), named after its source, with the source (the raw
    folder for real photographs; the generator for the synthetic stand-in) and a digest of
    the split table and of the pixels of up to 64 of its images (evenly spaced rows)."""
    import hashlib
    import json

    import mlflow
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import get_dataset_source_from_json

    from aerial_inpainting.project_paths import resolve_in_project

    data_source = _data_source(train_split)
    folder = str(resolve_in_project(location)) if location else None
    if data_source == "real" and folder:
        source = get_dataset_source_from_json(json.dumps({"uri": folder}), source_type="local")
        name = f"{Path(folder).name} ({split_name})"
    else:
        tags = {"data_source": data_source, "generator": "aerial_inpainting.imaging.synthetic"}
        source = CodeDatasetSource({**tags, **({"raw_folder": folder} if folder else {})})
        name = f"{data_source} ({split_name})"
    digest = hashlib.sha256(pd.util.hash_pandas_object(train_split, index=False).values.tobytes())
    if images is not None and "row" in train_split and len(train_split):
        rows = np.sort(train_split["row"].to_numpy(dtype=np.int64))
        sample = rows[np.linspace(0, len(rows) - 1, num=min(64, len(rows))).astype(np.int64)]
        digest.update(np.ascontiguousarray(images[sample]).tobytes())
    with warnings.catch_warnings():  # a hint for model signatures, not for a dataset record
        warnings.filterwarnings("ignore", message=".*[Ii]nferred schema contains integer")
        dataset = mlflow.data.from_pandas(
            train_split, source=source, name=name, digest=digest.hexdigest()[:8]
        )
        _ = dataset.schema  # inferred now (lazily otherwise, by log_input, unfiltered)
    return dataset


def _data_source(index: pd.DataFrame) -> str:
    """``real``, ``synthetic`` (or ``real+synthetic``) from an index's ``data_source`` column."""
    if not len(index) or "data_source" not in index:
        return "none"
    return "+".join(sorted(set(index["data_source"].astype(str))))


def _active_run():
    try:
        import mlflow
    except ImportError:  # pragma: no cover - mlflow is a dependency
        return None
    return mlflow.active_run()


def _tag_experiment_kind(name: str) -> None:
    import mlflow

    client = mlflow.MlflowClient()  # kedro-mlflow has set the tracking URI, made the experiment
    experiment = client.get_experiment_by_name(name)
    if experiment is not None and experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


def _set_tags(run_id: str, tags: dict[str, str]) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def _log_input(dataset: Any, context: str = "training") -> None:
    import mlflow

    mlflow.log_input(dataset, context=context)


def _clear_active_model() -> None:
    import mlflow

    if mlflow.get_active_model_id() is not None:
        mlflow.clear_active_model()


def _safely(what: str, fn, *args) -> None:
    """Tracking must never break the pipeline."""
    try:
        fn(*args)
    except Exception as exc:
        logger.warning("MLflow: could not %s (%s)", what, exc)


class PretrainedModelHook:
    """``evaluate.model`` / ``inpaint.model``: which model the run's ``model`` input is.

    ``trained``: the catalog's ``model`` (the latest model ``kedro run`` saved); ``pretrained``:
    the model shipped with the package (catalog ``pretrained_model``, ``MODEL_CARD.md``);
    ``auto``: the trained model when the run trains one, or when the saved one's recorded
    test score is not below the shipped model's (:func:`project_model_preferred`), else the
    pretrained one (the log says which and why); a path: that model file (e.g. one a GPU run returned), read-only. For a run that selects ``pretrained``, the catalog's ``model`` entry is
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
        verdict: list[tuple[bool, str]] = []  # `auto`'s verdict, once (empty: not asked)

        def trained_preferred() -> bool:
            if not verdict:
                verdict.append(project_model_preferred(catalog))
            return verdict[0][0]

        chosen = choose_model_source(users, parameters, trains, trained_preferred)
        why = f" [{verdict[0][1]}]" if verdict else ""
        if chosen is None:
            self.source = "trained"
            if verdict:
                logger.info("model auto: using the project's latest trained model%s", why)
            return
        # `auto` chose it: the log line says so
        label = chosen.replace("=pretrained", "=auto") if verdict else chosen
        from aerial_inpainting.datasets import ModelFileDataset, PretrainedModelDataset
        from aerial_inpainting.pretrained_model import DEFAULT_NAME, describe_pretrained

        target = chosen.split("=", 1)[1]
        if target != "pretrained":  # a model file named by its path
            dataset = ModelFileDataset(filepath=target)
            self._swap(catalog, dataset)
            self.source = f"file:{target}"
            logger.info("%s: using the model file %s", chosen.split("=", 1)[0], target)
            return
        dataset = catalog.get("pretrained_model") if "pretrained_model" in catalog else None
        if dataset is None:  # a catalog without the entry (it is declared in conf/base)
            dataset = PretrainedModelDataset(name=DEFAULT_NAME)
        self._swap(catalog, dataset)
        name = getattr(dataset, "_name", DEFAULT_NAME)
        self.source = f"pretrained:{name}"
        logger.info("%s: using the %s%s", label, describe_pretrained(name), why)

    @staticmethod
    def _swap(catalog, dataset) -> None:
        """The catalog's ``model`` becomes ``dataset``. The replacement is the point (logged
        by the caller); Kedro's own "Replacing dataset" warning would only repeat it."""
        catalog_logger = logging.getLogger("kedro.io.data_catalog")
        level = catalog_logger.level
        catalog_logger.setLevel(logging.ERROR)
        try:
            catalog["model"] = dataset
        finally:
            catalog_logger.setLevel(level)

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


def project_model_preferred(catalog) -> tuple[bool, str]:
    """``auto``: whether the catalog's ``model`` (the project's latest trained model) is to
    be used rather than the shipped one, and why: only when its recorded test score
    (catalog ``model_scores``) is not below the shipped model's on the same test split
    (:mod:`aerial_inpainting.model_selection`)."""
    if not catalog.exists("model"):
        return False, "no trained model saved"
    from aerial_inpainting.model_selection import SCORE_FORMAT, select_latest

    try:
        model = catalog.load("model")
    except Exception as exc:  # a bad file: the shipped model, and the line says why
        return False, f"the latest trained model cannot be loaded ({exc})"
    records = []
    if "model_scores" in catalog and catalog.exists("model_scores"):
        for load in catalog.load("model_scores").values():
            try:
                record = load()
            except Exception:  # an unreadable record is no evidence
                continue
            if isinstance(record, dict) and record.get("format") == SCORE_FORMAT:
                records.append(record)
    verdict = select_latest(model, records)
    return verdict.use_project, verdict.reason


def _model_value(section: str, raw: Any) -> str:
    """``trained``, ``pretrained``, ``auto``, or the absolute path of an existing model file."""
    value = str(raw).strip()
    if value.lower() in MODEL_CHOICES:
        return value.lower()
    from aerial_inpainting.project_paths import resolve_in_project

    path = Path(resolve_in_project(value))
    if path.is_file():
        return str(path)
    raise ValueError(
        f"{section}.model: expected one of {', '.join(MODEL_CHOICES)} or the path of a model "
        f"file, got {value!r} (no such file: {path})"
    )


def choose_model_source(users, parameters, trains: bool, trained_preferred) -> str | None:
    """The parameter that selects another model than the trained one for this run (e.g.
    ``"evaluate.model=pretrained"``, or ``"evaluate.model=/abs/path/model.safetensors"`` for a
    model file), or None when the run uses the trained ``model``.

    ``users``: the run's nodes reading ``model`` (their tag, ``evaluate`` or ``inpaint``,
    names the parameter section); ``trains``: the run also writes ``model``;
    ``trained_preferred``: a callable saying whether ``auto`` takes the saved trained model
    (:func:`project_model_preferred`; asked only for ``auto`` in a run that does not train). Raises
    ValueError for an unknown value (neither a choice nor an existing file), for another
    model in a run that trains, and for two sections asking for different models in one run.
    """
    resolved: dict[str, str] = {}
    for node in users:
        section = next((t for t in ("evaluate", "inpaint") if t in node.tags), None)
        if section is None:
            resolved[f"{node.name} (untagged)"] = "trained"
            continue
        value = _model_value(section, (parameters.get(section) or {}).get("model", "trained"))
        if value == "auto":
            value = "trained" if trains or trained_preferred() else "pretrained"
        resolved[f"{section}.model"] = value
    chosen = sorted({v for v in resolved.values() if v != "trained"})
    if not chosen:
        return None
    selectors = sorted(k for k, v in resolved.items() if v != "trained")
    if trains:
        raise ValueError(
            f"{selectors[0]}={resolved[selectors[0]]}, but this run also trains a model (it "
            "writes `model`); run the pipeline alone, e.g. `kedro run --pipelines=evaluate "
            "--params evaluate.model=pretrained`"
        )
    others = sorted(k for k, v in resolved.items() if v != resolved[selectors[0]])
    if others:
        raise ValueError(
            f"{selectors[0]}={resolved[selectors[0]]} but {others[0]} uses "
            f"{'the trained model' if resolved[others[0]] == 'trained' else resolved[others[0]]}"
            ", in one run: run the pipelines separately or choose the same model"
        )
    return f"{selectors[0]}={resolved[selectors[0]]}"
