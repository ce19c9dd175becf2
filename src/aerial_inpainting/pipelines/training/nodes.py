"""Kedro node of the training pipeline: turns catalog inputs into the loop's arguments.

Thin on purpose: the training itself is :func:`aerial_inpainting.pconv.train.train` (no Kedro
inside). The node picks the validation images, wires MLflow logging when kedro-mlflow has a
run open, and logs the final model file with its config to that run. With
``training.devices > 1`` it trains in that many local processes (DistributedDataParallel, see
:mod:`aerial_inpainting.pconv.train_distributed`); rank 0 logs into the same MLflow run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib.figure
import numpy as np
import pandas as pd

from aerial_inpainting.imaging.masks import MaskShapeConfig, random_mask
from aerial_inpainting.pconv.checkpoint import save_model
from aerial_inpainting.pconv.config import TrainConfig
from aerial_inpainting.pconv.data import InpaintingTrainDataset, validation_batch
from aerial_inpainting.pconv.train import TrainingData, TrainResult, train
from aerial_inpainting.pconv.train_distributed import train_multiprocess
from aerial_inpainting.pconv.unet import PConvUNet
from aerial_inpainting.project_paths import resolve_in_project
from aerial_inpainting.tracking import config_json, loss_curve_figure, training_callbacks

logger = logging.getLogger(__name__)

PYFUNC_MODEL_NAME = "model"  # runs:/<run_id>/model
MODEL_FILES_ARTIFACT = "model_files"


def pick_validation_set(
    val_split: pd.DataFrame, val_mask_index: pd.DataFrame, n: int
) -> tuple[list[int], list[str]]:
    """``n`` validation images with their fixed masks, evenly spread over the hole ratios
    (deterministic)."""
    for name, frame, cols in (
        ("val_split", val_split, {"image_id", "row"}),
        ("val_mask_index", val_mask_index, {"mask_id", "image_id", "hole_ratio"}),
    ):
        missing = cols - set(frame.columns)
        if missing:
            raise ValueError(f"{name}: missing column(s) {sorted(missing)}")
    if n <= 0 or val_mask_index.empty:
        return [], []
    joined = val_mask_index.merge(val_split[["image_id", "row"]], on="image_id", how="inner")
    if joined.empty:
        raise ValueError("val_mask_index: none of its image_id values are in val_split")
    joined = joined.sort_values(["hole_ratio", "mask_id"], kind="stable").reset_index(drop=True)
    picks = np.unique(np.linspace(0, len(joined) - 1, num=min(n, len(joined))).round().astype(int))
    chosen = joined.iloc[picks]
    return chosen["row"].astype(int).tolist(), chosen["mask_id"].astype(str).tolist()


def _describe_data(images: np.ndarray, rows: list[int], mask_ids: list[str]) -> dict[str, Any]:
    """What a resumed run must see unchanged: the image array's shape, train rows, mask ids."""
    digest = hashlib.sha256(np.asarray(rows, dtype=np.int64).tobytes())
    digest.update("\n".join(mask_ids).encode())
    return {"images_shape": list(images.shape), "n_train": len(rows), "n_masks": len(mask_ids),
            "rows_and_masks_sha256": digest.hexdigest()[:16]}  # fmt: skip


def build_training_data(
    images: np.ndarray,
    train_split: pd.DataFrame,
    val_split: pd.DataFrame,
    train_masks: Mapping[str, np.ndarray],
    val_masks: Mapping[str, np.ndarray],
    val_mask_index: pd.DataFrame,
    cfg: TrainConfig,
    mask_shapes: Mapping[str, Any] | None = None,
) -> TrainingData:
    """The loop's inputs from the catalog's: training stream + fixed validation batch.

    With ``cfg.mask_source == "generated"`` the training masks are drawn on the fly by
    :func:`aerial_inpainting.imaging.masks.random_mask` with ``mask_shapes`` (the test masks'
    shape parameters) and the pool ``train_masks`` is not used.
    """
    if "row" not in train_split.columns:
        raise ValueError("train_split: missing column 'row' (position of each image in `images`)")
    rows = train_split["row"].astype(int).tolist()
    generator = None
    if cfg.mask_source == "generated":
        generator = partial(random_mask, config=MaskShapeConfig.from_params(mask_shapes))
        mask_ids = [f"generated:{json.dumps(dict(mask_shapes or {}), sort_keys=True)}"]
    else:
        mask_ids = sorted(train_masks)
    dataset = InpaintingTrainDataset(
        images, rows, [train_masks[k] for k in mask_ids] if generator is None else [],
        size=cfg.train_size, seed=cfg.seed, augment=cfg.augment,
        mask_generator=generator,
    )  # fmt: skip
    val_rows, val_mask_ids = pick_validation_set(val_split, val_mask_index, cfg.val_images)
    val_image_batch = val_mask_batch = None
    if val_rows:
        val_image_batch, val_mask_batch = validation_batch(
            images, val_rows, val_masks, val_mask_ids, multiple=2**cfg.model.depth
        )
    return TrainingData(
        dataset, val_image_batch, val_mask_batch, _describe_data(images, rows, mask_ids)
    )


def resolve_model_file(path: str | Path) -> Path:
    """The model file ``path`` names: a file, or the latest version of a versioned catalog
    entry (``<path>/<timestamp>/<name>``, what ``kedro run`` writes for ``model``).

    Relative paths resolve against the project root; ``pretrained`` is the model shipped with
    the package (checksum verified, :mod:`aerial_inpainting.pretrained_model`). Raises
    FileNotFoundError naming the path (PretrainedModelError for a damaged shipped model).
    """
    from aerial_inpainting.pretrained_model import is_pretrained, pretrained_model_file

    if is_pretrained(path):
        return pretrained_model_file()
    resolved = Path(resolve_in_project(str(path)))
    if resolved.is_dir():
        versions = sorted(p for p in resolved.glob(f"*/{resolved.name}") if p.is_file())
        if not versions:
            raise FileNotFoundError(f"{resolved}: a directory without saved model versions")
        return versions[-1]
    if not resolved.is_file():
        raise FileNotFoundError(f"training.init_weights: {resolved}: no such model file")
    return resolved


def training_config(params: Mapping[str, Any]) -> tuple[dict[str, Any], TrainConfig]:
    """``params:training`` with its paths made absolute, and the :class:`TrainConfig` of it.

    Relative ``checkpoint_dir``/``grid_dir`` resolve against the Kedro project root, not the
    working directory; ``init_weights`` becomes the model file it names
    (:func:`resolve_model_file`). Shared by the node and the torchrun entry point. Every key
    of ``conf/base/parameters_training.yml`` must be there (no value comes from code); raises
    ValueError naming a wrong, unknown or missing key and the file
    (:meth:`TrainConfig.from_params`).
    """
    paths = {
        k: resolve_in_project(params[k]) for k in ("checkpoint_dir", "grid_dir") if k in params
    }
    resolved = {**params, **paths}
    cfg = TrainConfig.from_params(resolved, complete=True)
    if cfg.init_weights:
        resolved["init_weights"] = cfg.init_weights = str(resolve_model_file(cfg.init_weights))
    return resolved, cfg


def train_model(
    images: np.ndarray,
    train_split: pd.DataFrame,
    val_split: pd.DataFrame,
    train_masks: Mapping[str, np.ndarray],
    val_masks: Mapping[str, np.ndarray],
    val_mask_index: pd.DataFrame,
    params: Mapping[str, Any],
    mask_shapes: Mapping[str, Any] | None = None,
) -> tuple[PConvUNet, pd.DataFrame, matplotlib.figure.Figure]:
    """Train the partial-conv U-Net (resuming from the latest checkpoint when allowed).

    Returns the model (CPU, eval mode), the history table (one row per logged step) and the
    loss-curve figure. Relative ``checkpoint_dir``/``grid_dir`` resolve against the Kedro
    project root, not the working directory (``kedro run`` from a subdirectory).
    """
    params, cfg = training_config(params)
    data = build_training_data(
        images, train_split, val_split, train_masks, val_masks, val_mask_index, cfg=cfg,
        mask_shapes=mask_shapes,
    )  # fmt: skip
    mlflow = _active_mlflow()
    if cfg.devices > 1:  # rank 0 of the worker processes logs into this process's run
        run = {}
        if mlflow is not None:
            run_id = mlflow.active_run().info.run_id
            run = {"run_id": run_id, "tracking_uri": mlflow.get_tracking_uri()}
        callbacks = partial(training_callbacks, cfg.grid_dir, mlflow is not None, **run)
        result = train_multiprocess(params, data, cfg.devices, callbacks)
    else:
        result = train(cfg, data, training_callbacks(cfg.grid_dir, mlflow is not None))
    return training_outputs(result, cfg, mlflow)


def training_outputs(
    result: TrainResult, cfg: TrainConfig, mlflow=None
) -> tuple[PConvUNet, pd.DataFrame, matplotlib.figure.Figure]:
    """The node's outputs from a finished run; the model file is logged to ``mlflow``'s active
    run when given (shared with the torchrun entry point, :mod:`aerial_inpainting.torchrun_training`).
    """
    model = result.model.cpu().eval()
    model.extra = {"fingerprint": result.info["fingerprint"], "final_step": result.info["final_step"],
                   "vgg": result.info["vgg"]}  # fmt: skip
    if mlflow is not None:
        _log_model(mlflow, model, cfg, result.info)
    return model, result.history, loss_curve_figure(result.history, cfg.steps_stage1)


def _active_mlflow():
    """The mlflow module when a run is active (kedro-mlflow opens one per `kedro run`)."""
    try:
        import mlflow
    except ImportError:  # pragma: no cover - mlflow is a dependency
        return None
    return mlflow if mlflow.active_run() is not None else None


def _log_model(mlflow, model: PConvUNet, cfg: TrainConfig, info: Mapping[str, Any]) -> None:
    """Log the final model to the active run twice over.

    * ``model``: an MLflow pyfunc model (``mlflow.pyfunc.load_model("runs:/<id>/model")``,
      ``mlflow models serve``) that takes an image and a mask and returns the inpainting;
    * ``model_files/``: the plain model file (rebuilds itself with ``load_model``) and the
      run's configuration as JSON, for evaluation, the CLI and humans.
    """
    from aerial_inpainting.mlflow_model import log_pyfunc_model

    with tempfile.TemporaryDirectory() as tmp:
        path = save_model(
            Path(tmp) / "pconv_unet.safetensors", model, extra={"fingerprint": info["fingerprint"]}
        )
        (Path(tmp) / "config.json").write_text(config_json(model, cfg, info))
        mlflow.log_artifact(str(path), artifact_path=MODEL_FILES_ARTIFACT)
        mlflow.log_artifact(str(Path(tmp) / "config.json"), artifact_path=MODEL_FILES_ARTIFACT)
        log_pyfunc_model(path, name=PYFUNC_MODEL_NAME)
