"""The `training` pipeline under torchrun: data-parallel training on one node or several.

One node, 4 GPUs (what ``kedro run --params training.devices=4`` also does)::

    torchrun --standalone --nproc_per_node=4 -m aerial_inpainting.torchrun_training --env gpu

Two nodes of 8 GPUs: the same command on each, from the project directory::

    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d \\
        --rdzv_endpoint=node0.example:29500 --rdzv_id=pconv-1 \\
        -m aerial_inpainting.torchrun_training --env gpu

Every process reads ``params:training`` and the training node's inputs through the project's
config and catalog, as ``kedro run --pipeline training`` would (so ``data/`` must be present
on every node), joins the process group, and runs the shared loop. Kedro hooks do not run in
the processes (one MLflow run per process is not wanted): rank 0 alone opens one MLflow run
(tracking URI and experiment from ``mlflow.yml``, through kedro-mlflow's own configuration
class), shows the progress bar, writes checkpoints, and saves the node's outputs (``model``,
``training_history``, ``loss_curve``, ...) to the catalog, so ``kedro run --pipeline evaluate``
can follow.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch.distributed.elastic.multiprocessing.errors import record

from aerial_inpainting.pconv import distributed as ddp
from aerial_inpainting.pconv.config import TrainConfig
from aerial_inpainting.pconv.train import train
from aerial_inpainting.pconv.train_distributed import join_process_group
from aerial_inpainting.pipelines.training.nodes import build_training_data, training_outputs
from aerial_inpainting.pipelines.training.pipeline import create_pipeline
from aerial_inpainting.tracking import training_callbacks

logger = logging.getLogger(__name__)


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


def load_context(project_dir: str | os.PathLike, env: str | None, runtime_params: Mapping):
    """A KedroContext of the project without plugin hooks (no kedro-mlflow run per process).

    Relative paths in the catalog resolve against the project: we ``chdir`` there.
    """
    from kedro.framework.hooks.manager import _create_hook_manager
    from kedro.framework.project import settings
    from kedro.framework.startup import bootstrap_project

    project_dir = Path(project_dir).resolve()
    metadata = bootstrap_project(project_dir)
    os.chdir(project_dir)
    loader = settings.CONFIG_LOADER_CLASS(
        conf_source=str(project_dir / settings.CONF_SOURCE),
        env=env,
        runtime_params=dict(runtime_params),
        **settings.CONFIG_LOADER_ARGS,
    )
    return settings.CONTEXT_CLASS(
        package_name=metadata.package_name,
        project_path=project_dir,
        config_loader=loader,
        env=env,
        runtime_params=dict(runtime_params),
        hook_manager=_create_hook_manager(),  # hook specs only, no plugins registered
    )


def start_mlflow_run(context, cfg: TrainConfig):
    """Rank 0's MLflow run, configured from mlflow.yml exactly as kedro-mlflow does."""
    import mlflow
    import pandas as pd
    from kedro.config import MissingConfigException
    from kedro_mlflow.config.kedro_mlflow_config import KedroMlflowConfig

    try:
        conf = dict(context.config_loader["mlflow"] or {})
    except MissingConfigException:
        conf = {}
    config = KedroMlflowConfig.model_validate(conf)
    if config.tracking.experiment.name is None:
        config.tracking.experiment.name = context._package_name
    config.setup(context)  # tracking URI, credentials, experiment
    run = mlflow.start_run(run_name=config.tracking.run.name)
    flat = pd.json_normalize({"training": cfg.to_dict()}, sep=".").iloc[0]
    mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
    mlflow.set_tag("training.launcher", "torchrun")
    return run


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
    context = load_context(args.project_dir, args.env, parse_runtime_params(args.params))
    cfg = TrainConfig.from_params(context.params["training"])
    ctx = join_process_group(cfg)
    if cfg.devices != 1 and cfg.devices != ctx.world_size:
        logger.warning(
            "training.devices=%d is ignored under torchrun: the world size is %d",
            cfg.devices,
            ctx.world_size,
        )
    run, status = None, "FAILED"
    try:
        catalog = context.catalog
        node = create_pipeline().nodes[0]
        inputs = {
            name: catalog.load(name) for name in node.inputs if not name.startswith("params:")
        }
        shapes = context.params["data_processing"]["masks"]["shapes"]
        data = build_training_data(**inputs, cfg=cfg, mask_shapes=shapes)
        if ctx.is_main and not args.no_mlflow:
            run = start_mlflow_run(context, cfg)
        grid_dir = tempfile.mkdtemp(prefix="pconv-grids-") if ctx.is_main else None
        callbacks = training_callbacks(grid_dir, mlflow=run is not None)
        result = train(cfg, data, callbacks, dist_ctx=ctx)
        if ctx.is_main:  # the catalog saves them and logs them into rank 0's MLflow run
            outputs = training_outputs(result, cfg, grid_dir)
            for name, value in zip(node.outputs, outputs, strict=True):
                catalog.save(name, value)
            shutil.rmtree(grid_dir, ignore_errors=True)
        status = "FINISHED"
    finally:
        if run is not None:
            import mlflow

            mlflow.end_run(status=status)
        ddp.destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
