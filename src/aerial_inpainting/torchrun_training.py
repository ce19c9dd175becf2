"""The `training` pipeline under torchrun: data-parallel training on one node or several.

One node, 4 GPUs (what ``kedro run --params training.devices=4`` also does)::

    torchrun --standalone --nproc_per_node=4 -m aerial_inpainting.torchrun_training --env gpu

Two nodes of 8 GPUs: the same command on each, from the project directory::

    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d \\
        --rdzv_endpoint=node0.example:29500 --rdzv_id=pconv-1 \\
        -m aerial_inpainting.torchrun_training --env gpu

Every process makes the project's KedroContext with Kedro's public API
(``bootstrap_project``, ``KedroSession.create``, ``session.load_context``), so it reads
``params:training`` and the ``training`` pipeline's node inputs through the project's config
and catalog as ``kedro run --pipeline training`` would (``data/`` must be present on every
node). It then runs the worker body that the Kedro node's own multi-process launch runs too
(:func:`aerial_inpainting.pconv.train_distributed.run_worker`: join the process group, build
the data, train, rank 0's outputs). No pipeline is run, so no per-process MLflow run is
opened: kedro-mlflow's hooks are registered on rank 0 alone, which configures tracking from
``mlflow.yml`` (URI, experiment) as ``kedro run`` does and opens one MLflow run; rank 0 also
shows the progress bar, writes checkpoints, and saves the node's outputs (``model``, its
metadata, ``training_history``, ``loss_curve``, the grids, the MLflow model) to the catalog,
so ``kedro run --pipeline evaluate`` can follow.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from torch.distributed.elastic.multiprocessing.errors import record

from aerial_inpainting.pconv import distributed as ddp
from aerial_inpainting.pconv import train_distributed
from aerial_inpainting.pconv.config import TrainConfig
from aerial_inpainting.pipelines.training.nodes import (
    build_training_data,
    training_config,
    training_outputs,
)
from aerial_inpainting.tracking import training_callbacks

logger = logging.getLogger(__name__)

TRAINING_NODE = "train_model"  # the node of the `training` pipeline this runs
MLFLOW_PLUGIN_NAMES = ("kedro_mlflow", "kedro-mlflow")  # its distribution's name, both spellings


def parse_runtime_params(text: str | None) -> dict[str, Any]:
    """``"training.steps_stage1=10,training.seed=3"`` -> nested dict, as ``kedro run --params``."""
    if not text:
        return {}
    from omegaconf import OmegaConf

    items = [item.strip() for item in text.split(",") if item.strip()]
    bad = [item for item in items if "=" not in item or not item.split("=", 1)[0].strip()]
    if bad:
        raise ValueError(f"--params: items {bad} must look like key=value")
    return OmegaConf.to_container(OmegaConf.from_dotlist(items))  # type: ignore[return-value]


def load_context(
    project_dir: str | os.PathLike, env: str | None, runtime_params: Mapping, mlflow: bool = False
):
    """The project's KedroContext, made as ``kedro run`` makes it (a ``KedroSession``).

    With ``mlflow=False`` kedro-mlflow's hooks are not registered in this process (no MLflow
    set-up on every rank); with ``mlflow=True`` they configure tracking from ``mlflow.yml``
    (URI, experiment) as for ``kedro run``, and the context gets kedro-mlflow's ``mlflow``
    config. Relative paths in the catalog resolve against the project: we ``chdir`` there.
    """
    from kedro.framework.project import settings
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    project_dir = Path(project_dir).resolve()
    bootstrap_project(project_dir)
    os.chdir(project_dir)
    before = settings.DISABLE_HOOKS_FOR_PLUGINS
    if not mlflow:  # read when the session registers the hooks, restored right after
        settings.set("DISABLE_HOOKS_FOR_PLUGINS", tuple({*before, *MLFLOW_PLUGIN_NAMES}))
    try:
        session = KedroSession.create(
            project_path=project_dir, env=env, runtime_params=dict(runtime_params)
        )
    finally:
        settings.set("DISABLE_HOOKS_FOR_PLUGINS", before)
    with session:
        return session.load_context()


@contextmanager
def mlflow_run(context, cfg: TrainConfig, enabled: bool) -> Iterator[bool]:
    """Rank 0's MLflow run around the training (tracking configured by kedro-mlflow's hook in
    :func:`load_context`); yields whether a run is open. Ended FAILED when training fails."""
    if not enabled:
        yield False
        return
    import mlflow
    import pandas as pd

    mlflow.start_run(run_name=context.mlflow.tracking.run.name)
    flat = pd.json_normalize({"training": cfg.to_dict()}, sep=".").iloc[0]
    mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
    mlflow.set_tag("training.launcher", "torchrun")
    status = "FAILED"
    try:
        yield True
        status = "FINISHED"
    finally:
        mlflow.end_run(status=status)


def training_job(
    context, params: Mapping[str, Any], cfg: TrainConfig, log_to_mlflow: bool, grid_dir: str
):
    """The :class:`WorkerJob` of one process: the training node's inputs from the catalog,
    rank 0's outputs saved to it (the node of the registered ``training`` pipeline; the
    validation grids are written under ``grid_dir`` and saved with the other outputs)."""
    from kedro.framework.project import pipelines

    (node,) = pipelines["training"].filter(node_names=[TRAINING_NODE]).nodes
    catalog = context.catalog
    if not log_to_mlflow:  # the outputs' kedro-mlflow datasets then only save their files
        from kedro_mlflow.io.catalog.switch_catalog_logging import switch_catalog_logging

        switch_catalog_logging(catalog, False)

    def data():
        inputs = {
            name: catalog.load(name) for name in node.inputs if not name.startswith("params:")
        }
        shapes = context.params["data_processing"]["masks"]["shapes"]
        return build_training_data(**inputs, cfg=cfg, mask_shapes=shapes)

    def outputs(result):
        values = training_outputs(result, cfg, grid_dir)
        for name, value in zip(node.outputs, values, strict=True):
            catalog.save(name, value)

    callbacks = partial(training_callbacks, grid_dir, log_to_mlflow)
    return train_distributed.WorkerJob(dict(params), data, outputs, callbacks)


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchrun [torchrun options] -m aerial_inpainting.torchrun_training",
        description="Data-parallel training of the partial-conv U-Net, one process per GPU.",
    )
    parser.add_argument("--project-dir", default=".", help="Kedro project root (default: .)")
    parser.add_argument("--env", default=None, help="Kedro config environment, e.g. gpu")
    parser.add_argument(
        "--params", default=None, help='overrides as for kedro run, e.g. "training.seed=3"'
    )
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    return parser


@record  # torchrun then reports a failing rank's traceback
def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    use_mlflow = ddp.launched_rank() == 0 and not args.no_mlflow
    context = load_context(
        args.project_dir, args.env, parse_runtime_params(args.params), mlflow=use_mlflow
    )
    params, cfg = training_config(context.params["training"])
    world_size = ddp.launched_world_size()
    if cfg.devices != 1 and cfg.devices != world_size:
        logger.warning(
            "training.devices=%d is ignored under torchrun: the world size is %d",
            cfg.devices,
            world_size,
        )
    with (
        mlflow_run(context, cfg, enabled=use_mlflow) as logging_to_mlflow,
        tempfile.TemporaryDirectory(prefix="pconv-grids-") as grid_dir,
    ):
        job = training_job(context, params, cfg, logging_to_mlflow, grid_dir)
        train_distributed.run_worker(job)
    return 0


if __name__ == "__main__":
    sys.exit(main())
