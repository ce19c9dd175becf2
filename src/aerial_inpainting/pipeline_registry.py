"""Project pipelines: every folder under ``pipelines/`` plus the default DAG."""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

# The main job (`kedro run`): data -> training -> evaluation. `inpaint` works on the
# user's own images and runs only when asked for (`kedro run --pipelines=inpaint`).
DEFAULT_PIPELINES = ("data_processing", "training", "evaluate")


def register_pipelines() -> dict[str, Pipeline]:
    """Register the project's pipelines; ``__default__`` is the main DAG."""
    pipelines = find_pipelines(raise_errors=True)
    pipelines["__default__"] = sum(
        (pipelines[name] for name in DEFAULT_PIPELINES if name in pipelines), Pipeline([])
    )
    return pipelines
