"""The training loop of the partial-conv U-Net: plain PyTorch, usable without Kedro.

Two stages as in Liu et al. (2018): Adam at ``lr_stage1`` with BatchNorm everywhere, then
fine-tuning at ``lr_stage2`` with the encoder's BatchNorm frozen. Mixed precision and
channels_last on CUDA, checkpoints every ``checkpoint_every`` steps that make a resumed run
bit-identical to an uninterrupted one on the CPU (see :mod:`aerial_inpainting.pconv.data` for
why the data stream needs no saved state). Everything a checkpoint holds is a
:class:`TrainState` (``to_checkpoint``/``from_checkpoint``); the configuration is
:class:`aerial_inpainting.pconv.config.TrainConfig`. Logging to MLflow, image grids and
figures are callbacks outside this package (:mod:`aerial_inpainting.tracking`).

One loop for one process and many: in a ``torch.distributed`` group (``dist_ctx``, see
:mod:`aerial_inpainting.pconv.distributed`) every process runs :func:`train` with the model
wrapped in DistributedDataParallel; each rank reads its share of the run-wide sample stream
(``batch_size`` images per rank and step), logged losses are averaged over the ranks, and only
the master process (rank 0) writes checkpoints, validates, shows the progress bar and calls
callbacks. Checkpoints have the single-process format (the unwrapped model's ``state_dict``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from aerial_inpainting.pconv import distributed as ddp
from aerial_inpainting.pconv.checkpoint import (
    capture_rng_state,
    clear_checkpoints,
    config_fingerprint,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_model,
    restore_rng_state,
    save_checkpoint,
    save_model,
)
from aerial_inpainting.pconv.config import TrainConfig
from aerial_inpainting.pconv.data import InpaintingTrainDataset, make_train_loader
from aerial_inpainting.pconv.device_stream import DeviceTrainStream
from aerial_inpainting.pconv.devices import (
    autocast_dtype,
    resolve_device,
    resolve_num_workers,
    resolve_precision,
)
from aerial_inpainting.pconv.loss import LOSS_KEYS, InpaintingLoss
from aerial_inpainting.pconv.schedule import (
    learning_rate,
    make_ema,
    run_progress,
    stage2_due,
    train_size_at,
)
from aerial_inpainting.pconv.unet import PConvUNet
from aerial_inpainting.pconv.validation import ValidationSamples, validate
from aerial_inpainting.pconv.vgg import build_vgg16_features

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "TrainingCallback",
    "TrainingData",
    "cut_short_by_budget",
    "history_frame",
    "init_from_model_file",
    "learning_rate",
    "make_ema",
    "progress_text",
    "run_progress",
    "train",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------ inputs, outputs, callbacks
@dataclass
class TrainingData:
    """The training stream and the fixed validation batch (images in [0, 1], masks 1 = valid).

    ``train``: samples prepared on the CPU (a DataLoader), or batches drawn on the device.
    """

    train: InpaintingTrainDataset | DeviceTrainStream
    val_images: torch.Tensor | None = None
    val_masks: torch.Tensor | None = None
    description: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    """The trained model (its EMA when there is one; eval mode), the history table (one row
    per logged step) and the run's info (device, fingerprint, final step, ...)."""

    model: PConvUNet
    history: pd.DataFrame
    info: dict[str, Any]


class TrainingCallback:
    """Hooks called by the master process only; override what you need."""

    def on_train_start(self, info: Mapping[str, Any]) -> None:
        """Once, after the model is built and any checkpoint restored."""

    def on_log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Every ``log_every`` steps: mean losses over the window, lr, images/s."""

    def on_validation(
        self, step: int, metrics: Mapping[str, float], samples: ValidationSamples
    ) -> None:
        """After each validation, with its images, masks, outputs and composites."""

    def on_checkpoint(self, step: int, path: Path) -> None:
        """After a checkpoint is in place."""

    def on_train_end(self, result: TrainResult) -> None:
        """Once, with the trained model and full history."""


# ------------------------------------------------------------------ where and how to compute
@dataclass(frozen=True)
class Runtime:
    """This process's device, precision and memory layout."""

    device: torch.device
    precision: str
    channels_last: bool

    @classmethod
    def resolve(cls, cfg: TrainConfig, ctx: ddp.DistContext) -> Runtime:
        # A rank's device comes from its local rank (cuda:<local_rank>), resolved when it joined.
        device = ctx.device if ctx.is_distributed else resolve_device(cfg.device)
        auto_layout = cfg.channels_last == "auto"
        channels_last = device.type == "cuda" if auto_layout else bool(cfg.channels_last)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.set_float32_matmul_precision("high")
        return cls(device, resolve_precision(cfg.precision, device), channels_last)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return autocast_dtype(self.precision)

    def autocast(self) -> torch.autocast:
        dtype = self.autocast_dtype
        return torch.autocast(
            self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None
        )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model_and_loss(
    cfg: TrainConfig, ctx: ddp.DistContext, rt: Runtime
) -> tuple[PConvUNet, InpaintingLoss, dict[str, Any]]:
    """The seeded network (the same initial weights on every rank), the loss and the VGG info."""
    seed_everything(cfg.seed)
    model = PConvUNet(cfg.model)
    with torch.random.fork_rng(devices=[]):
        # Random VGG fallback weights must be the same on every (resumed) run.
        torch.manual_seed(cfg.seed + 1)
        extractor, vgg_info = build_vgg16_features(
            weights=cfg.vgg_weights or "none",
            offline_fallback=cfg.vgg_offline_fallback,
            pool_layers=cfg.vgg_pool_layers,
        )
    if ctx.is_distributed:
        seed_everything(ddp.rank_seed(cfg.seed, ctx.rank))  # anything random from here differs
    if extractor is not None:
        extractor = extractor.to(device=rt.device, memory_format=rt.memory_format).eval()
        for p in extractor.parameters():
            p.requires_grad_(False)
    criterion = InpaintingLoss(extractor, cfg.loss_weights).to(rt.device)
    model = model.to(device=rt.device, memory_format=rt.memory_format)
    if cfg.sync_batchnorm and ctx.is_distributed:
        model = ddp.convert_sync_batchnorm(model)
    return model, criterion, dict(vgg_info)


def init_from_model_file(model: PConvUNet, path: str | Path) -> None:
    """Start ``model`` from the weights of a model file or checkpoint (fine-tuning).

    The file is read by :func:`aerial_inpainting.pconv.checkpoint.load_model` (safetensors, no
    code executed; a checkpoint gives its EMA weights). Raises FileNotFoundError or ValueError
    naming the file, and ValueError when its network's shape differs from ``model``'s.
    """
    source = load_model(path)
    if source.config != model.config:
        raise ValueError(
            f"training.init_weights: {path} holds a U-Net {source.config.to_dict()}, but "
            f"training.model asks for {model.config.to_dict()}"
        )
    model.load_state_dict(source.state_dict())
    logger.info("Initialised the model from %s", path)


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)


# ------------------------------------------------------------------ the run's state
@dataclass
class _Window:
    """Running sums of the loss terms since the last log step (checkpointed with the run)."""

    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    images: int = 0

    def add(self, losses: Mapping[str, float], n_images: int) -> None:
        for key in LOSS_KEYS:
            if key in losses:
                self.sums[key] = self.sums.get(key, 0.0) + float(losses[key])
        self.steps += 1
        self.images += n_images

    def means(self) -> dict[str, float]:
        return {f"loss_{k}": v / max(self.steps, 1) for k, v in self.sums.items()}


@dataclass
class TrainState:
    """Everything that changes during a run and that a checkpoint restores: the model,
    optimiser, gradient scaler, EMA, step, stage, history, open log window and wall time."""

    model: PConvUNet
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: torch.optim.swa_utils.AveragedModel | None = None
    step: int = 0
    stage: int = 1
    history: list[dict[str, Any]] = field(default_factory=list)
    window: _Window = field(default_factory=_Window)
    elapsed_s: float = 0.0
    resumed_from: int | None = None

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: Mapping[str, Any] | None,
        cfg: TrainConfig,
        model: PConvUNet,
        scaler: torch.amp.GradScaler,
        rank: int = 0,
        world_size: int = 1,
    ) -> TrainState:
        """The state of a resumed run, or of a fresh one when ``checkpoint`` is None (the model
        then starts from ``cfg.init_weights`` when set). Restores this rank's RNG states."""
        if checkpoint is None:
            if cfg.init_weights:
                init_from_model_file(model, cfg.init_weights)
            checkpoint = {}
        else:
            model.load_state_dict(checkpoint["model"])
        stage = int(checkpoint.get("stage", 1))
        if stage == 2:
            model.freeze_encoder_batchnorm()
        optimizer = make_optimizer(model, cfg.lr_stage1 if stage == 1 else cfg.lr_stage2)
        if checkpoint:
            optimizer.load_state_dict(checkpoint["optimizer"])
            if scaler.is_enabled() and checkpoint.get("scaler"):
                scaler.load_state_dict(checkpoint["scaler"])
            rng_ranks = checkpoint.get("rng_ranks")  # per-rank states of a data-parallel run
            own = rng_ranks is not None and len(rng_ranks) == world_size
            restore_rng_state(rng_ranks[rank] if own else checkpoint["rng"])
        ema = make_ema(model, cfg.ema_decay) if cfg.ema_decay else None
        if ema is not None and checkpoint.get("ema") is not None:
            ema.load_state_dict(checkpoint["ema"])
        step = int(checkpoint.get("step", 0))
        return cls(
            model,
            optimizer,
            scaler,
            ema,
            step=step,
            stage=stage,
            history=list(checkpoint.get("history", [])),
            window=_Window(**checkpoint.get("window", {})),
            elapsed_s=float(checkpoint.get("elapsed_s", 0.0)),
            resumed_from=step if checkpoint else None,
        )

    def to_checkpoint(
        self,
        fingerprint: str,
        config: Mapping[str, Any],
        rng: Mapping[str, Any],
        rng_ranks: list[Any] | None = None,
    ) -> dict[str, Any]:
        """What :func:`aerial_inpainting.pconv.checkpoint.save_checkpoint` writes."""
        return {
            "step": self.step,
            "stage": self.stage,
            "fingerprint": fingerprint,
            "config": dict(config),
            "model_config": self.model.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": rng,
            **({"rng_ranks": rng_ranks} if rng_ranks is not None else {}),
            "history": self.history,
            "window": dataclasses.asdict(self.window),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "elapsed_s": self.elapsed_s,
        }

    @property
    def eval_model(self) -> PConvUNet:
        """What is validated, snapshotted and returned: the EMA of the weights, if any."""
        return self.ema.module if self.ema is not None else self.model

    def enter_stage2(self, cfg: TrainConfig) -> None:
        """Fine-tuning: encoder BatchNorm frozen, a new optimiser at ``lr_stage2``."""
        self.stage = 2
        self.model.freeze_encoder_batchnorm()
        self.optimizer = make_optimizer(self.model, cfg.lr_stage2)
        logger.info(
            "Step %d: stage 2 (fine-tuning, lr %g, encoder BatchNorm frozen)",
            self.step,
            cfg.lr_stage2,
        )

    def close_window(self, seconds: float, world_size: int) -> dict[str, float]:
        """The logged metrics of the window that ends now (added to the history)."""
        metrics = self.window.means()
        metrics.update(
            stage=self.stage,
            lr=self.optimizer.param_groups[0]["lr"],
            images_per_s=self.window.images / max(seconds, 1e-9) * world_size,
        )
        self.history.append({"step": self.step, **metrics})
        self.window = _Window()
        return metrics

    def add_validation(self, metrics: Mapping[str, float]) -> None:
        """Validation metrics join the history row of their step."""
        for row in reversed(self.history):
            if row["step"] == self.step:
                row.update(metrics)
                return
        self.history.append({"step": self.step, **metrics})


# ------------------------------------------------------------------ the loop
def train(
    cfg: TrainConfig,
    data: TrainingData,
    callbacks: Sequence[TrainingCallback] = (),
    dist_ctx: ddp.DistContext | None = None,
    stop_at_step: int | None = None,
) -> TrainResult:
    """Train (or resume training) and return the model, per-log-step history and run info.

    ``dist_ctx`` (from :func:`aerial_inpainting.pconv.distributed.init_distributed`) makes this
    process one rank of a data-parallel job; every rank must call ``train`` with the same
    config and data. ``stop_at_step`` ends the run early (after that step's checkpoint, if one
    is due), as an interruption would; tests use it to check that resuming gives the same
    weights.
    """
    ctx = dist_ctx if dist_ctx is not None else ddp.DistContext()
    master_process = ctx.is_main
    callbacks = list(callbacks) if master_process else []
    rt = Runtime.resolve(cfg, ctx)
    fingerprint = config_fingerprint(
        {**cfg.fingerprint_fields(ctx.world_size), "data": data.description}
    )
    ckpt_dir = Path(cfg.checkpoint_dir) / fingerprint if cfg.checkpoint_dir else None
    model, criterion, vgg_info = build_model_and_loss(cfg, ctx, rt)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.precision == "fp16")
    state = _start_or_resume(cfg, ctx, ckpt_dir, fingerprint, model, scaler)
    snapshots = SnapshotWriter(cfg, fingerprint, state.elapsed_s) if master_process else None
    net = ddp.wrap_ddp(model, ctx)  # what runs forward/backward; `model` is what is saved
    info = _run_info(cfg, ctx, rt, state, fingerprint, ckpt_dir, vgg_info)
    for cb in callbacks:
        cb.on_train_start(info)

    total = cfg.total_steps
    if cfg.late_train_size is not None:  # fail now, not at the curriculum's switch
        data.train.with_size(cfg.late_train_size, name="training.late_train_size")
    bar = _progress_bar(cfg, state, master_process)
    report = _ProgressReport(
        total, cfg.log_every, cfg.max_minutes, enabled=master_process and bar.disable
    )
    elapsed_before, t_start = state.elapsed_s, time.perf_counter()
    t_window = t_start
    progress = run_progress(state.step, total, elapsed_before, cfg.max_minutes)
    crop_size, batches = None, iter(())
    net.train()
    while progress < 1.0:  # (a resumed run whose wall-time budget had run out trains no step)
        if train_size_at(cfg, progress) != crop_size:  # the start, or the curriculum's switch
            crop_size = train_size_at(cfg, progress)
            batches = iter(_train_loader(cfg, data, state, rt, ctx, crop_size))
            if crop_size != cfg.train_size:
                logger.info(
                    "Crop-size curriculum: %d px crops from step %d (%.0f%% of the run)",
                    crop_size,
                    state.step,
                    100 * progress,
                )
        batch = next(batches, None)
        if batch is None:
            break
        images, masks = batch
        if state.stage == 1 and stage2_due(cfg, state.step, progress):
            net = _enter_stage2(cfg, state, model, net, ctx)
        lr = learning_rate(cfg, state.step, progress, state.stage)
        losses = _train_step(net, criterion, state, rt, images, masks, lr, cfg.grad_clip_norm)
        state.step += 1
        state.elapsed_s = elapsed_before + time.perf_counter() - t_start
        if ctx.is_distributed and cfg.max_minutes:  # every rank must stop at the same step
            state.elapsed_s = ddp.all_reduce_mean({"elapsed": state.elapsed_s}, ctx)["elapsed"]
        progress = run_progress(state.step, total, state.elapsed_s, cfg.max_minutes)
        done = progress >= 1.0
        # The global batch's losses (mean over ranks): every rank's history is the same.
        state.window.add(_loss_values(losses, ctx), images.shape[0])
        bar.update(1)

        if _due(state.step, cfg.log_every, done):
            metrics = state.close_window(time.perf_counter() - t_window, ctx.world_size)
            bar.set_postfix(_bar_postfix(metrics, progress if cfg.max_minutes else None))
            for cb in callbacks:
                cb.on_log(state.step, metrics)
            report.maybe_log(state, progress, metrics, done)
            t_window = time.perf_counter()
        if master_process and data.val_images is not None and _due(state.step, cfg.val_every, done):
            _validate(state, data, rt, callbacks)
        if snapshots is not None:
            snapshots.maybe_save(state.eval_model, state.step, state.elapsed_s, done)
        if ckpt_dir is not None and _due(state.step, cfg.checkpoint_every, done):
            path = _save_checkpoint(state, ctx, ckpt_dir, fingerprint, cfg, data)
            for cb in callbacks:
                cb.on_checkpoint(state.step, path)
        if done or (stop_at_step is not None and state.step >= stop_at_step):
            break
    bar.close()
    del net
    return _finish(state, info, cfg, callbacks, master_process)


def _start_or_resume(
    cfg: TrainConfig,
    ctx: ddp.DistContext,
    ckpt_dir: Path | None,
    fingerprint: str,
    model: PConvUNet,
    scaler: torch.amp.GradScaler,
) -> TrainState:
    """The run's state: from the latest checkpoint of this config when resuming, else fresh."""
    checkpoint = _checkpoint_to_resume(cfg, ctx, ckpt_dir, fingerprint)
    return TrainState.from_checkpoint(checkpoint, cfg, model, scaler, ctx.rank, ctx.world_size)


def _enter_stage2(
    cfg: TrainConfig,
    state: TrainState,
    model: PConvUNet,
    net: torch.nn.Module,
    ctx: ddp.DistContext,
) -> torch.nn.Module:
    """Switch to stage 2 (encoder BatchNorm frozen); returns the module to train from now on."""
    state.enter_stage2(cfg)
    if not ctx.is_distributed:
        return net
    del net  # DDP fixed its parameter set when built: rebuild it
    return ddp.wrap_ddp(model, ctx)


def _finish(
    state: TrainState,
    info: dict[str, Any],
    cfg: TrainConfig,
    callbacks: Sequence[TrainingCallback],
    master_process: bool = True,
) -> TrainResult:
    """The run's result (EMA or raw weights in eval mode, history, info); ``on_train_end``.

    ``info`` gets ``final_step`` (the steps trained, a resumed run's earlier ones included),
    ``steps_configured`` (``steps_stage1 + steps_stage2``), ``elapsed_minutes`` and
    ``cut_short``: whether the wall-time budget (``max_minutes``) ended the run before the
    configured steps (:func:`cut_short_by_budget`); the master process then logs a WARNING.
    """
    total = cfg.total_steps
    if state.resumed_from is not None and state.resumed_from >= total:
        logger.info(
            "Checkpoint at step %d already covers the %d requested steps", state.resumed_from, total
        )
    cut_short = cut_short_by_budget(state.step, total, state.elapsed_s, cfg.max_minutes)
    info.update(
        final_step=state.step,
        steps_configured=total,
        cut_short=cut_short,
        elapsed_minutes=round(state.elapsed_s / 60.0, 3),
    )
    if cut_short and master_process:
        logger.warning(
            "Training was cut short by its wall-time budget: %d of the %d configured steps "
            "(%.1f%%) in training.max_minutes=%g. The schedule (stage 2, the learning rate's "
            "decay, the crop sizes) was compressed into the budget, so the model is "
            "undertrained: raise training.max_minutes or lower training.steps_stage1 and "
            "training.steps_stage2 to train the whole schedule.",
            state.step,
            total,
            100.0 * state.step / total,
            cfg.max_minutes,
        )
    result = TrainResult(state.eval_model.eval(), history_frame(state.history), info)
    for cb in callbacks:
        cb.on_train_end(result)
    return result


def _train_loader(
    cfg: TrainConfig,
    data: TrainingData,
    state: TrainState,
    rt: Runtime,
    ctx: ddp.DistContext,
    crop_size: int,
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's batches of the run's sample stream, from the step after ``state.step``,
    cropped to ``crop_size`` pixels."""
    dataset = data.train
    if crop_size != dataset.size:
        dataset = dataset.with_size(crop_size, name="training.late_train_size")
    if isinstance(dataset, DeviceTrainStream):  # batches drawn on the device itself
        return dataset.batches(
            cfg.batch_size, state.step, cfg.total_steps, rank=ctx.rank, world_size=ctx.world_size
        )
    return make_train_loader(
        dataset,
        cfg.batch_size,
        start_step=state.step,
        total_steps=cfg.total_steps,
        num_workers=resolve_num_workers(cfg.num_workers, rt.device),
        pin_memory=rt.device.type == "cuda",
        rank=ctx.rank,
        world_size=ctx.world_size,
    )


def _progress_bar(cfg: TrainConfig, state: TrainState, master_process: bool) -> tqdm:
    """The master process's bar (``progress_bar: null``: tqdm decides, on a terminal only)."""
    hide = None if cfg.progress_bar is None else not cfg.progress_bar
    return tqdm(
        total=cfg.total_steps,
        initial=state.step,
        desc="training",
        unit="step",
        dynamic_ncols=True,
        disable=not master_process or hide,
    )


def _validate(
    state: TrainState, data: TrainingData, rt: Runtime, callbacks: Sequence[TrainingCallback]
) -> None:
    """Validation by the master process alone, on the unwrapped model (no collectives: the
    other ranks wait for it in the next step's gradient all-reduce)."""
    images, masks = data.val_images.to(rt.device), data.val_masks.to(rt.device)
    # float32 whatever the training precision: the figures are comparable across machines
    metrics, samples = validate(state.eval_model, images, masks, None, rt.device)
    state.add_validation(metrics)
    logger.info(
        "Step %d validation: PSNR %.2f dB (hole %.2f, mean fill %.2f), SSIM %.4f",
        state.step,
        metrics["val_psnr"],
        metrics["val_psnr_hole"],
        metrics["val_psnr_hole_mean_fill"],
        metrics["val_ssim"],
    )
    for cb in callbacks:
        cb.on_validation(state.step, metrics, samples)


def _due(step: int, every: int, done: bool) -> bool:
    """Whether a periodic action (every ``every`` steps, and at the end; never when 0) is due."""
    return bool(every) and (step % every == 0 or done)


def _train_step(
    net: torch.nn.Module,
    criterion: InpaintingLoss,
    state: TrainState,
    rt: Runtime,
    images: torch.Tensor,
    masks: torch.Tensor,
    lr: float,
    clip_norm: float | None = None,
) -> dict[str, torch.Tensor]:
    """One optimisation step at learning rate ``lr``, the gradients' global L2 norm clipped to
    ``clip_norm`` when set (``torch.nn.utils.clip_grad_norm_``); returns the loss terms."""
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    images = images.to(rt.device, non_blocking=True).contiguous(memory_format=rt.memory_format)
    masks = masks.to(rt.device, non_blocking=True).contiguous(memory_format=rt.memory_format)
    with rt.autocast():
        output = net(images * masks, masks)
        losses = criterion(output.float(), images, masks)
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(losses["total"]).backward()
    if clip_norm:
        state.scaler.unscale_(state.optimizer)  # clip the true gradients (a no-op without fp16)
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip_norm)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    if state.ema is not None:
        state.ema.update_parameters(state.model)
    return losses


def _loss_values(losses: Mapping[str, torch.Tensor], ctx: ddp.DistContext) -> dict[str, float]:
    """The logged loss terms as floats, averaged over the ranks in a data-parallel run."""
    values = {k: float(losses[k].detach()) for k in LOSS_KEYS if k in losses}
    return ddp.all_reduce_mean(values, ctx) if ctx.is_distributed else values


def _checkpoint_to_resume(
    cfg: TrainConfig, ctx: ddp.DistContext, ckpt_dir: Path | None, fingerprint: str
) -> dict[str, Any] | None:
    """The latest checkpoint of this config, read by rank 0 and sent to the others (it alone
    writes them, possibly on a disk the other nodes do not see); None for a fresh start.
    With ``resume: false`` the old checkpoints are removed instead."""
    if ckpt_dir is None:
        return None
    checkpoint = None
    if ctx.is_main and not cfg.resume:
        removed = clear_checkpoints(ckpt_dir)
        if removed:
            logger.info(
                "training.resume is false: removed %d old checkpoint(s) in %s", removed, ckpt_dir
            )
    elif ctx.is_main:
        path = latest_checkpoint(ckpt_dir)
        if path is None:
            _warn_other_configs(ckpt_dir.parent, fingerprint)
        else:
            checkpoint = load_checkpoint(path, expected_fingerprint=fingerprint, map_location="cpu")
            logger.info("Resuming training from %s (step %d)", path, int(checkpoint["step"]))
    if ctx.is_distributed and cfg.resume:
        checkpoint = ddp.broadcast_object(checkpoint, ctx)
    return checkpoint


def _save_checkpoint(
    state: TrainState,
    ctx: ddp.DistContext,
    ckpt_dir: Path,
    fingerprint: str,
    cfg: TrainConfig,
    data: TrainingData,
) -> Path | None:
    """Every rank's RNG state gathered (a collective: all ranks get here at the same step);
    the master process writes the checkpoint and returns its path (None on the others)."""
    rng = capture_rng_state()
    rng_ranks = ddp.all_gather_object(rng, ctx) if ctx.is_distributed else None
    if not ctx.is_main:
        return None
    config = {**cfg.to_dict(), "data": data.description}
    return save_checkpoint(
        ckpt_dir,
        state.to_checkpoint(fingerprint, config, rng, rng_ranks),
        keep=cfg.keep_checkpoints,
    )


def _run_info(
    cfg: TrainConfig,
    ctx: ddp.DistContext,
    rt: Runtime,
    state: TrainState,
    fingerprint: str,
    ckpt_dir: Path | None,
    vgg_info: Mapping[str, Any],
) -> dict[str, Any]:
    """What the run reports about itself (logged, and given to callbacks and the result)."""
    info = {
        "device": str(rt.device),
        "precision": rt.precision,
        "channels_last": rt.channels_last,
        "fingerprint": fingerprint,
        "checkpoint_dir": str(ckpt_dir) if ckpt_dir else None,
        "resumed_from_step": state.resumed_from,
        "vgg": dict(vgg_info),
        "model_config": state.model.config.to_dict(),
        "n_parameters": sum(p.numel() for p in state.model.parameters()),
        "world_size": ctx.world_size,
        "backend": ctx.backend,
        "sync_batchnorm": bool(cfg.sync_batchnorm) and ctx.is_distributed,
        "ema_decay": cfg.ema_decay,
        "lr_schedule": cfg.lr_schedule,
        "max_minutes": cfg.max_minutes,
    }
    logger.info(
        "Training on %s (%s%s), %d parameters, %d+%d steps, batch %d at %dpx%s; checkpoints in %s",
        rt.device,
        rt.precision,
        ", channels_last" if rt.channels_last else "",
        info["n_parameters"],
        cfg.steps_stage1,
        cfg.steps_stage2,
        cfg.batch_size,
        cfg.train_size,
        ""
        if cfg.late_train_size is None
        else f" ({cfg.late_train_size}px from {100 * cfg.late_train_size_from:.0f}% of the run)",
        ckpt_dir,
    )
    if ctx.is_distributed:
        logger.info(
            "Data-parallel: %d processes (%s), global batch %d%s",
            ctx.world_size,
            ctx.backend,
            cfg.batch_size * ctx.world_size,
            ", SyncBatchNorm" if info["sync_batchnorm"] else "",
        )
    return info


def cut_short_by_budget(
    step: int, total_steps: int, elapsed_s: float, max_minutes: float | None
) -> bool:
    """Whether the wall-time budget ended (or, resumed, had ended) a run before its steps:
    ``max_minutes`` is set and spent while fewer than ``total_steps`` steps are done."""
    budget_spent = bool(max_minutes) and elapsed_s >= 60.0 * float(max_minutes)
    return budget_spent and step < total_steps


def progress_text(step: int, total_steps: int, elapsed_s: float, max_minutes: float | None) -> str:
    """``"step 10/6000, 8% of the run by time (0.5 of 6 min; the wall-time budget, not the
    steps, ends this run)"``: where the run is (:func:`run_progress`). Without ``max_minutes``
    the percentage is the steps'; with it, the share of whichever ends the run first, and
    the text says which."""
    progress = run_progress(step, total_steps, elapsed_s, max_minutes)
    text = f"step {step}/{total_steps}, {100 * progress:.0f}% of the run"
    if not max_minutes:
        return text
    minutes = f"{elapsed_s / 60.0:.1f} of {float(max_minutes):g} min"
    if elapsed_s / (60.0 * float(max_minutes)) > step / max(total_steps, 1):
        return f"{text} by time ({minutes}; the wall-time budget, not the steps, ends this run)"
    return f"{text} by steps ({minutes} used)"


def _bar_postfix(metrics: Mapping[str, float], progress: float | None = None) -> dict[str, str]:
    """The bar's figures; ``progress``: the run's share done when the wall-time budget may end
    it before the bar's step count does."""
    postfix = {
        "loss": f"{metrics['loss_total']:.4f}",
        "hole": f"{metrics['loss_hole']:.4f}",
        "valid": f"{metrics['loss_valid']:.4f}",
        "img_s": f"{metrics['images_per_s']:.1f}",
    }
    if progress is not None:
        postfix["run"] = f"{100 * progress:.0f}%"
    return postfix


class _ProgressReport:
    """Without a visible progress bar (logs, CI): an INFO line about every 5% of the run (by
    steps, or by the wall-time budget's progress when ``max_minutes`` ends the run first;
    :func:`progress_text` says which)."""

    def __init__(
        self, total: int, log_every: int, max_minutes: float | None, enabled: bool
    ) -> None:
        self.total, self.max_minutes, self.enabled = total, max_minutes, enabled
        self.every = max(1, round(total / 20 / log_every)) * log_every
        self.next = 0.05

    def maybe_log(
        self, state: TrainState, progress: float, metrics: Mapping[str, float], done: bool
    ) -> None:
        if not self.enabled:
            return
        if not (state.step % self.every == 0 or progress >= self.next or done):
            return
        self.next = math.floor(progress * 20 + 1) / 20
        logger.info(
            "%s (stage %d): loss %.4f (hole %.4f, valid %.4f), %.1f images/s",
            progress_text(state.step, self.total, state.elapsed_s, self.max_minutes),
            state.stage,
            metrics["loss_total"],
            metrics["loss_hole"],
            metrics["loss_valid"],
            metrics["images_per_s"],
        )


class SnapshotWriter:
    """Saves the model (its EMA when there is one) when the run's wall time passes each of
    ``cfg.snapshot_minutes``, and once at the end, as ``minute_<MMM.MM>_step_<N>.safetensors``
    files in ``<snapshot_dir>/<fingerprint>/`` (rebuilt by
    :func:`~aerial_inpainting.pconv.checkpoint.load_model`; their ``extra`` holds ``minutes``
    and ``step``): the points of a quality-against-time curve."""

    def __init__(self, cfg: TrainConfig, fingerprint: str, elapsed_before: float) -> None:
        self.directory = (
            Path(cfg.snapshot_dir) / fingerprint
            if cfg.snapshot_dir and cfg.snapshot_minutes
            else None
        )
        self.pending = sorted(
            float(m) for m in cfg.snapshot_minutes or [] if m * 60 > elapsed_before
        )

    def maybe_save(self, model: PConvUNet, step: int, elapsed_s: float, done: bool) -> None:
        if self.directory is None:
            return
        minutes = elapsed_s / 60.0
        due = [m for m in self.pending if minutes >= m]
        self.pending = [m for m in self.pending if minutes < m]
        if due or done:
            name = f"minute_{minutes:06.2f}_step_{step:09d}.safetensors"
            save_model(self.directory / name, model, extra={"minutes": minutes, "step": step})
            logger.info("Snapshot at %.1f min (step %d): %s", minutes, step, self.directory / name)


def history_frame(history: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The history as a table, one row per logged step, columns step, stage, lr, losses, val_*."""
    frame = pd.DataFrame(list(history))
    if frame.empty:
        return pd.DataFrame(columns=["step", "stage", "lr", *(f"loss_{k}" for k in LOSS_KEYS)])
    first = [c for c in ("step", "stage", "lr", "images_per_s") if c in frame]
    rest = sorted(c for c in frame.columns if c not in first)
    return frame[first + rest].sort_values("step", kind="stable").reset_index(drop=True)


def _warn_other_configs(root: Path, fingerprint: str) -> None:
    if not root.is_dir():
        return
    others = [
        d.name
        for d in root.iterdir()
        if d.is_dir() and d.name != fingerprint and list_checkpoints(d)
    ]
    if others:
        logger.warning(
            "No checkpoint for this training config (fingerprint %s) in %s; checkpoints of "
            "other configs exist (%s) and are left alone. Starting from scratch.",
            fingerprint,
            root,
            ", ".join(sorted(others)),
        )
