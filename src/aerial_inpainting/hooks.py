"""Kedro hooks of the project."""

from __future__ import annotations

import logging
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.pipeline.node import Node

logger = logging.getLogger(__name__)


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
