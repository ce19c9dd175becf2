"""Tracking and reporting of a training run, outside the plain-PyTorch ``pconv`` package.

Callbacks of :func:`aerial_inpainting.pconv.train.train` (called by the master process only):

* :class:`GridWriter`: each validation's image grid (input with the holes in magenta | mask |
  output | composite | ground truth, titled) as a PNG file in a staging folder; the training node returns them
  (:func:`read_grids`) as the catalog's ``training_grids``, which logs them to MLflow;
* :class:`MlflowCallback`: live losses, validation metrics and the run's info (device,
  precision, VGG weights), logged to an MLflow run while the loop runs.

:func:`training_callbacks` builds both as the Kedro node, the multi-process workers and the
torchrun entry point use them; :func:`callbacks_for_active_run` pins them to the MLflow run
open in this process (kedro-mlflow's), for worker processes too. Also here: the loss-curve
figure and the metadata saved next to the model. Everything else reaches MLflow through the
catalog (kedro-mlflow datasets in ``conf/base/catalog.yml``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from aerial_inpainting.pconv.config import TrainConfig
from aerial_inpainting.pconv.loss import LOSS_KEYS
from aerial_inpainting.pconv.train import TrainingCallback, TrainResult
from aerial_inpainting.pconv.unet import PConvUNet
from aerial_inpainting.pconv.validation import ValidationSamples

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------ image grids
GRID_COLUMNS = (
    "input (holes in magenta)",
    "mask (white = valid)",
    "output",
    "composite",
    "ground truth",
)
"""The column titles written above a validation grid, left to right."""
GRID_SHORT_COLUMNS = ("input", "mask", "output", "composite", "truth")
"""The titles used instead where a title of :data:`GRID_COLUMNS` is wider than its tile."""
GRID_SEPARATOR = 2  # px of white between tiles
HOLE_COLOUR = (1.0, 0.0, 1.0)  # magenta, as GRID_COLUMNS says


def _grid_font(tile_width: int):
    """PIL's built-in font (no file read), scaled to the tile where Pillow can (>= 10.1)."""
    from PIL import ImageFont

    size = grid_font_size(tile_width)
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font only
        return ImageFont.load_default()


def grid_font_size(tile_width: int) -> int:
    """Font size (px) of the column titles for tiles ``tile_width`` px wide: 8 to 14."""
    return int(min(14, max(8, tile_width // 12)))


def grid_header_height(tile_width: int) -> int:
    """Height (px) of the title strip above a grid of tiles ``tile_width`` px wide."""
    return grid_font_size(tile_width) + 6


def _header(tile_width: int, n_columns: int) -> np.ndarray:
    """float32 (h, W, 3) white strip with :data:`GRID_COLUMNS` centred over each column
    (:data:`GRID_SHORT_COLUMNS` where a title is wider than the tile, clipped if still so)."""
    from PIL import ImageDraw

    font = _grid_font(tile_width)
    height = grid_header_height(tile_width)
    cells = []
    for title, short in zip(GRID_COLUMNS[:n_columns], GRID_SHORT_COLUMNS, strict=False):
        cell = Image.new("RGB", (tile_width, height), "white")
        draw = ImageDraw.Draw(cell)
        left, top, right, bottom = draw.textbbox((0, 0), title, font=font)
        if right - left > tile_width - 2:
            title = short
            left, top, right, bottom = draw.textbbox((0, 0), title, font=font)
        x = (tile_width - (right - left)) // 2 - left
        y = (height - (bottom - top)) // 2 - top
        draw.text((max(x, 1 - left), y), title, fill="black", font=font)
        cells.append(np.asarray(cell, dtype=np.float32) / 255.0)
    sep = np.ones((height, GRID_SEPARATOR, 3), dtype=np.float32)
    row = [cells[0]]
    for cell in cells[1:]:
        row += [sep, cell]
    return np.concatenate(row, axis=1)


def make_grid(
    images: torch.Tensor, masks: torch.Tensor, output: torch.Tensor, comp: torch.Tensor
) -> np.ndarray:
    """uint8 (H, W, 3) grid, one row per image: input | mask | output | composite | truth.

    Inputs are CPU float tensors in [0, 1], (N, 3, H, W) (masks (N, 1, H, W), 1 = valid).
    A title strip (:data:`GRID_COLUMNS`, :func:`grid_header_height` px) heads the columns;
    holes are drawn magenta in the input; tiles are separated by 2-pixel white lines.
    """
    colour = torch.tensor(HOLE_COLOUR, dtype=images.dtype).view(1, 3, 1, 1)
    masked = images * masks + colour * (1 - masks)  # holes shown magenta
    columns = [masked, masks.expand_as(images), output, comp, images]
    rows = [_header(images.shape[-1], len(columns))]
    for i in range(images.shape[0]):
        tiles = [c[i].clamp(0, 1).permute(1, 2, 0).numpy() for c in columns]
        sep = np.ones((tiles[0].shape[0], GRID_SEPARATOR, 3), dtype=np.float32)
        row = [tiles[0]]
        for t in tiles[1:]:
            row += [sep, t]
        rows.append(np.concatenate(row, axis=1))
        rows.append(np.ones((GRID_SEPARATOR, rows[-1].shape[1], 3), dtype=np.float32))
    return (np.concatenate(rows[:-1], axis=0) * 255 + 0.5).astype(np.uint8)


class GridWriter(TrainingCallback):
    """Writes each validation's grid to ``<directory>/val_grid_step<NNNNNNNNN>.png``."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def on_validation(
        self, step: int, metrics: Mapping[str, float], samples: ValidationSamples
    ) -> None:
        grid = make_grid(samples.images, samples.masks, samples.output, samples.composite)
        path = self.directory / f"val_grid_step{step:09d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(path)


def read_grids(directory: str | Path) -> dict[str, Callable[[], Image.Image]]:
    """The PNG grids of ``directory`` as a ``PartitionedDataset``'s lazy partitions:
    ``{"val_grid_step000000500": loader}``; each loader returns the PIL image. The files'
    bytes are read now (the folder may be a temporary one), decoded only when saved."""
    return {
        path.stem: partial(_png_from_bytes, path.read_bytes())
        for path in sorted(Path(directory).glob("*.png"))
    }


def _png_from_bytes(data: bytes) -> Image.Image:
    import io

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.copy()


# ------------------------------------------------------------------ MLflow
class MlflowCallback(TrainingCallback):
    """Logs metrics (with ``step``) and run info to an MLflow run while training runs.

    The run is the active one (kedro-mlflow's) or, given ``run_id``, that run in
    ``tracking_uri``: how rank 0 of a multi-process job logs into the run of the ``kedro run``
    that launched it without starting or ending it. Tracking must never stop a training run:
    MLflow errors are logged as warnings.
    """

    def __init__(self, run_id: str | None = None, tracking_uri: str | None = None) -> None:
        import mlflow

        self._mlflow = mlflow
        self._client = mlflow.MlflowClient(tracking_uri)
        self._run_id = run_id

    def _call(self, what: str, fn, *args, **kwargs) -> None:
        if self._run_id is not None:
            run_id = self._run_id
        else:
            active = self._mlflow.active_run()
            if active is None:
                return
            run_id = active.info.run_id
        try:
            fn(run_id, *args, **kwargs)
        except Exception as exc:  # tracking is best effort
            logger.warning("MLflow: could not %s (%s)", what, exc)

    def _log_batch(self, run_id: str, metrics=(), params=(), tags=(), step: int = 0) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        self._client.log_batch(
            run_id,
            metrics=[Metric(k, v, now, step) for k, v in dict(metrics).items()],
            params=[Param(k, v) for k, v in dict(params).items()],
            tags=[RunTag(k, v) for k, v in dict(tags).items()],
        )

    def on_train_start(self, info: Mapping[str, Any]) -> None:
        vgg = info.get("vgg", {})
        tags = {
            "training.device": info["device"],
            "training.precision": info["precision"],
            "training.config_fingerprint": info["fingerprint"],
            "training.resumed_from_step": str(info["resumed_from_step"]),
            "training.world_size": str(info.get("world_size", 1)),
            **{f"vgg.{k}": str(v)[:500] for k, v in vgg.items()},
        }
        params = {f"vgg_info.{k}": str(v)[:500] for k, v in vgg.items()}
        self._call("log the VGG params", self._log_batch, params=params)
        self._call("set the run tags", self._log_batch, tags=tags)

    def on_log(self, step: int, metrics: Mapping[str, float]) -> None:
        self._call("log metrics", self._log_batch, metrics=_finite(metrics), step=step)

    def on_validation(
        self, step: int, metrics: Mapping[str, float], samples: ValidationSamples
    ) -> None:
        self._call("log metrics", self._log_batch, metrics=_finite(metrics), step=step)

    def on_train_end(self, result: TrainResult) -> None:
        """Tags of the steps actually trained (:func:`training_tags`)."""
        self._call("tag the steps trained", self._log_batch, tags=training_tags(result.info))


def training_summary(info: Mapping[str, Any]) -> dict[str, Any]:
    """How far a finished run got, from its info (:func:`aerial_inpainting.pconv.train.train`):
    ``steps`` trained, ``steps_configured``, ``cut_short`` (the wall-time budget ended it
    first), ``max_minutes`` and ``elapsed_minutes``. Saved in the model file's ``extra``
    (key ``training``), so that whoever evaluates the model can say it is undertrained."""
    return {
        "steps": int(info["final_step"]),
        "steps_configured": int(info["steps_configured"]),
        "cut_short": bool(info["cut_short"]),
        "max_minutes": info.get("max_minutes"),
        "elapsed_minutes": info.get("elapsed_minutes"),
    }


def training_tags(info: Mapping[str, Any]) -> dict[str, str]:
    """The MLflow tags of the steps a run trained: ``training.steps_trained``,
    ``training.steps_configured`` and ``training.cut_short`` (``true`` when the wall-time
    budget ended the run before its configured steps)."""
    summary = training_summary(info)
    return {
        "training.steps_trained": str(summary["steps"]),
        "training.steps_configured": str(summary["steps_configured"]),
        "training.cut_short": str(summary["cut_short"]).lower(),
    }


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}


def training_callbacks(
    grid_dir: str | Path | None,
    mlflow: bool,
    run_id: str | None = None,
    tracking_uri: str | None = None,
) -> list[TrainingCallback]:
    """The reporting of a training run: grids under ``grid_dir`` (None: no grids) and, with
    ``mlflow``, an :class:`MlflowCallback` (active run, or ``run_id`` in ``tracking_uri``).
    Picklable through ``functools.partial`` (worker processes)."""
    callbacks: list[TrainingCallback] = []
    if grid_dir:
        callbacks.append(GridWriter(grid_dir))
    if mlflow:
        callbacks.append(MlflowCallback(run_id=run_id, tracking_uri=tracking_uri))
    return callbacks


def callbacks_for_active_run(grid_dir: str | Path | None) -> Callable[[], list[TrainingCallback]]:
    """A picklable factory of :func:`training_callbacks`, pinned to the MLflow run active in
    this process (kedro-mlflow's), if any: rank 0 of a multi-process job then logs into the
    run of the ``kedro run`` that launched it, without starting or ending it."""
    import mlflow

    run = mlflow.active_run()
    if run is None:
        return partial(training_callbacks, grid_dir, False)
    return partial(
        training_callbacks,
        grid_dir,
        True,
        run_id=run.info.run_id,
        tracking_uri=mlflow.get_tracking_uri(),
    )


# ------------------------------------------------------------------ figures & descriptions
def stage2_start(history: pd.DataFrame) -> int | None:
    """The step after which stage 2 began, from the history's ``stage`` column: the last
    logged stage-1 step before the first stage-2 row (0 when the history has no stage-1 row),
    exact when every step is logged, else at most ``log_every - 1`` steps early. None: the
    run never reached stage 2."""
    if "stage" not in history or "step" not in history:
        return None
    stages = history[["step", "stage"]].dropna().sort_values("step", kind="stable")
    second = stages.loc[stages["stage"] == 2, "step"]
    if second.empty:
        return None
    first = stages.loc[(stages["stage"] == 1) & (stages["step"] < second.iloc[0]), "step"]
    return int(first.iloc[-1]) if not first.empty else 0


def loss_curve_figure(history: pd.DataFrame, steps_configured: int | None = None):
    """Loss terms (log scale) and validation PSNR against step, with a line where stage 2
    began (:func:`stage2_start`) and both x axes spanning the steps trained (0 to the last
    logged step). ``steps_configured`` (``steps_stage1 + steps_stage2``): when the run
    stopped before it, the losses' title says so ("cut short: 219 of 6000 steps")."""
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(12, 4.5))
    steps = history.get("step", [])
    last = int(pd.Series(steps).max()) if len(steps) else 0
    for key in LOSS_KEYS:
        col = f"loss_{key}"
        if col in history and history[col].notna().any() and (history[col].fillna(0) > 0).any():
            ax_loss.plot(steps, history[col], label=key, lw=2.5 if key == "total" else 1.2)
    ax_loss.set_yscale("log")
    title = "Training losses"
    if steps_configured and last < steps_configured:
        title += f" (cut short: {last} of {steps_configured} steps)"
    ax_loss.set(xlabel="step", ylabel="loss (window mean)", title=title)
    for col, label in (
        ("val_psnr", "composite PSNR"),
        ("val_psnr_hole", "hole PSNR"),
        ("val_psnr_hole_mean_fill", "hole PSNR, mean-colour fill"),
    ):
        if col in history and history[col].notna().any():
            sel = history[col].notna()
            ax_val.plot(history.loc[sel, "step"], history.loc[sel, col], marker="o", label=label)
    ax_val.set(xlabel="step", ylabel="dB", title="Validation (fixed test images & masks)")
    boundary = stage2_start(history)
    for ax in (ax_loss, ax_val):
        if boundary is not None:
            ax.axvline(boundary, color="grey", ls="--", lw=1, label="stage 2 starts")
        ax.set_xlim(0, max(last, 1))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def model_metadata(model: PConvUNet, cfg: TrainConfig, info: Mapping[str, Any]) -> dict[str, Any]:
    """What is saved (and logged to MLflow) next to the model, so it can be rebuilt and
    traced: its network config, the training config and the run's info (fingerprint, final
    step, device, VGG weights, ...), JSON-ready."""
    import json

    plain = {"model_config": model.config.to_dict(), "training": cfg.to_dict(), "info": dict(info)}
    return json.loads(json.dumps(plain, default=str))
