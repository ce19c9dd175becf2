"""Kedro node of the training pipeline: turns catalog inputs into the loop's arguments.

Thin on purpose: the training itself is :func:`aerial_inpainting.pconv.train.train` (no Kedro
inside). The node picks the validation images, runs the loop with the reporting callbacks of
:mod:`aerial_inpainting.tracking` (live metrics into the MLflow run kedro-mlflow opened, if
any) and returns the model, its metadata, the history, the loss curve and the validation
grids; the catalog saves them and logs them to MLflow (kedro-mlflow datasets). With
``training.devices > 1`` it trains in that many local processes (DistributedDataParallel, see
:mod:`aerial_inpainting.pconv.train_distributed`); rank 0 logs into the same MLflow run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib.figure
import numpy as np
import pandas as pd
from PIL import Image

from aerial_inpainting.imaging.masks import MaskShapeConfig, random_mask
from aerial_inpainting.pconv.config import TrainConfig
from aerial_inpainting.pconv.data import InpaintingTrainDataset, validation_batch
from aerial_inpainting.pconv.train import TrainingData, TrainResult, train
from aerial_inpainting.pconv.train_distributed import train_multiprocess
from aerial_inpainting.pconv.unet import PConvUNet
from aerial_inpainting.project_paths import resolve_in_project
from aerial_inpainting.tracking import (
    callbacks_for_active_run,
    loss_curve_figure,
    model_metadata,
    read_grids,
    training_summary,
)

logger = logging.getLogger(__name__)

TrainingOutputs = tuple[
    PConvUNet,
    dict[str, Any],
    pd.DataFrame,
    matplotlib.figure.Figure,
    dict[str, Callable[[], Image.Image]],
    PConvUNet,
]


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
    return {
        "images_shape": list(images.shape),
        "n_train": len(rows),
        "n_masks": len(mask_ids),
        "rows_and_masks_sha256": digest.hexdigest()[:16],
    }


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
        images,
        rows,
        [train_masks[k] for k in mask_ids] if generator is None else [],
        size=cfg.train_size,
        seed=cfg.seed,
        augment=cfg.augment,
        mask_generator=generator,
    )
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

    A relative ``checkpoint_dir`` resolves against the Kedro project root, not the working
    directory; ``init_weights`` becomes the model file it names
    (:func:`resolve_model_file`). Shared by the node and the torchrun entry point. Every key
    of ``conf/base/parameters_training.yml`` must be there (no value comes from code); raises
    ValueError naming a wrong, unknown or missing key and the file
    (:meth:`TrainConfig.from_params`).
    """
    resolved = dict(params)
    if "checkpoint_dir" in params:
        resolved["checkpoint_dir"] = resolve_in_project(params["checkpoint_dir"])
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
) -> TrainingOutputs:
    """Train the partial-conv U-Net (resuming from the latest checkpoint when allowed).

    Returns (see :func:`training_outputs`) the model (CPU, eval mode), its metadata, the
    history table (one row per logged step), the loss-curve figure, the validation grids
    (PNG partitions) and the model once more, for the MLflow pyfunc entry. A relative
    ``checkpoint_dir`` resolves against the Kedro project root, not the working directory
    (``kedro run`` from a subdirectory).
    """
    params, cfg = training_config(params)
    data = build_training_data(
        images,
        train_split,
        val_split,
        train_masks,
        val_masks,
        val_mask_index,
        cfg=cfg,
        mask_shapes=mask_shapes,
    )
    with tempfile.TemporaryDirectory(prefix="pconv-grids-") as grid_dir:
        callbacks = callbacks_for_active_run(grid_dir)
        if cfg.devices > 1:  # rank 0 of the worker processes logs into this process's run
            result = train_multiprocess(params, data, cfg.devices, callbacks)
        else:
            result = train(cfg, data, callbacks())
        return training_outputs(result, cfg, grid_dir)


def training_outputs(
    result: TrainResult, cfg: TrainConfig, grid_dir: str | Path
) -> TrainingOutputs:
    """The node's outputs from a finished run, in the order of the pipeline's outputs
    (shared with the torchrun entry point, :mod:`aerial_inpainting.torchrun_training`):
    model (CPU, eval mode), metadata (:func:`aerial_inpainting.tracking.model_metadata`),
    history, loss curve, the grids written under ``grid_dir`` and the model again. The
    model's ``extra`` (saved in its file's header) holds how far the run got
    (:func:`aerial_inpainting.tracking.training_summary`), for the evaluation's headline."""
    model = result.model.cpu().eval()
    model.extra = {"training": training_summary(result.info)}  # type: ignore[attr-defined]
    return (
        model,
        model_metadata(model, cfg, result.info),
        result.history,
        loss_curve_figure(result.history, cfg.total_steps),
        read_grids(grid_dir),
        model,
    )
