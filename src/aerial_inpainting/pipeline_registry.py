"""The project's pipelines by name, for ``kedro run --pipelines=<name>``."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from aerial_inpainting.pipelines import data_processing, evaluate, inpaint, training


def register_pipelines() -> dict[str, Pipeline]:
    """Every pipeline by name; ``__default__`` (plain ``kedro run``) is data -> training ->
    evaluation. ``inpaint`` fills the user's own images and runs only when asked for."""
    pipelines = {
        "data_processing": data_processing.create_pipeline(),
        "training": training.create_pipeline(),
        "evaluate": evaluate.create_pipeline(),
        "inpaint": inpaint.create_pipeline(),
    }
    default = pipelines["data_processing"] + pipelines["training"] + pipelines["evaluate"]
    return {**pipelines, "__default__": default}
