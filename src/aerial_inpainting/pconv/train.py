"""The training loop of the partial-conv U-Net: plain PyTorch, usable without Kedro.

Two stages as in Liu et al. (2018): Adam at ``lr_stage1`` with BatchNorm everywhere, then
fine-tuning at ``lr_stage2`` with the encoder's BatchNorm frozen. Mixed precision and
channels_last on CUDA, checkpoints every ``checkpoint_every`` steps that make a resumed run
bit-identical to an uninterrupted one on the CPU (see :mod:`aerial_inpainting.pconv.data` for
why the data stream needs no saved state), and callbacks for logging so that the loop itself
has no side effects besides checkpoints and validation grids.

Data-parallel training runs this same loop in every process of a ``torch.distributed`` group
(``dist_ctx``, see :mod:`aerial_inpainting.pconv.distributed`): the model is wrapped in
DistributedDataParallel, each rank reads its share of the run-wide sample stream
(``batch_size`` images per rank and step), logged losses are averaged over the ranks, and only
rank 0 writes checkpoints and grids, shows the progress bar and calls callbacks. Checkpoints
have the single-process format (the unwrapped model's ``state_dict``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from aerial_inpainting.evaluation.metrics import batch_psnr, batch_ssim, composite
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
from aerial_inpainting.pconv.data import AugmentConfig, InpaintingTrainDataset, make_train_loader
from aerial_inpainting.pconv.loss import LOSS_KEYS, InpaintingLoss, LossWeights
from aerial_inpainting.pconv.unet import PConvUNet, UNetConfig
from aerial_inpainting.pconv.vgg import build_vgg16_features

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------ configuration
@dataclass
class TrainConfig:
    """Every knob of a training run; built from ``params:training`` by :meth:`from_params`."""

    model: dict[str, Any] = field(default_factory=dict)
    seed: int = 42
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool | str = "auto"
    train_size: int = 64
    batch_size: int = 8
    steps_stage1: int = 600
    steps_stage2: int = 150
    lr_stage1: float = 2e-4
    lr_stage2: float = 5e-5
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    ema_decay: float | None = None
    max_minutes: float | None = None
    snapshot_minutes: list[float] = field(default_factory=list)
    snapshot_dir: str | None = None
    mask_source: str = "pool"
    init_weights: str | None = None
    loss_weights: dict[str, float] = field(default_factory=dict)
    vgg_weights: str | None = "imagenet"
    vgg_offline_fallback: str = "random"
    augment: dict[str, bool] = field(default_factory=dict)
    num_workers: int | str = "auto"
    log_every: int = 10
    val_every: int = 250
    val_images: int = 4
    checkpoint_dir: str | None = "data/06_models/checkpoints"
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    resume: bool = True
    grid_dir: str | None = "data/08_reporting/training_grids"
    progress_bar: bool | None = None
    devices: int = 1
    backend: str = "auto"
    sync_batchnorm: bool = False

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> TrainConfig:
        """Validate and convert the parameter dict; unknown keys are an error, not ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise ValueError(
                f"parameters_training.yml: unknown key(s) under `training:` {unknown}; "
                f"known keys: {sorted(names)}"
            )
        cfg = cls(**{k: v for k, v in params.items() if k in names})
        cfg.model = dict(cfg.model or {})
        cfg.loss_weights = dict(cfg.loss_weights or {})
        cfg.augment = dict(cfg.augment or {})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Fail early with the parameter's name rather than deep inside the loop."""
        positive = ("train_size", "batch_size", "log_every", "checkpoint_every")
        for name in positive:
            if int(getattr(self, name)) <= 0:
                raise ValueError(
                    f"training.{name} must be a positive integer, got {getattr(self, name)!r}"
                )
        for name in ("steps_stage1", "steps_stage2", "val_every", "val_images"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"training.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.steps_stage1 + self.steps_stage2 <= 0:
            raise ValueError("training.steps_stage1 + training.steps_stage2 must be > 0")
        if isinstance(self.devices, bool) or not isinstance(self.devices, int) or self.devices < 1:
            raise ValueError(f"training.devices must be an integer >= 1, got {self.devices!r}")
        if self.backend not in ddp.BACKENDS:
            raise ValueError(
                f"training.backend must be one of {list(ddp.BACKENDS)}, got {self.backend!r}"
            )
        if not isinstance(self.sync_batchnorm, bool):
            raise ValueError(
                f"training.sync_batchnorm must be true or false, got {self.sync_batchnorm!r}"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"training.lr_schedule must be one of {list(LR_SCHEDULES)}, got {self.lr_schedule!r}"
            )
        if int(self.warmup_steps) < 0:
            raise ValueError(f"training.warmup_steps must be >= 0, got {self.warmup_steps!r}")
        if self.ema_decay is not None and not 0.0 < float(self.ema_decay) < 1.0:
            raise ValueError(
                f"training.ema_decay must be in (0, 1) or null, got {self.ema_decay!r}"
            )
        if self.max_minutes is not None and not float(self.max_minutes) > 0:
            raise ValueError(f"training.max_minutes must be > 0 or null, got {self.max_minutes!r}")
        if any(float(m) <= 0 for m in self.snapshot_minutes or []):
            raise ValueError(
                f"training.snapshot_minutes must be > 0, got {self.snapshot_minutes!r}"
            )
        if self.mask_source not in ("pool", "generated"):
            raise ValueError(
                f"training.mask_source must be pool or generated, got {self.mask_source!r}"
            )
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(
                f"training.precision must be auto|fp32|bf16|fp16, got {self.precision!r}"
            )
        try:
            LossWeights.from_dict(self.loss_weights)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"training.loss_weights: {exc}") from exc
        bad = sorted(set(self.augment) - {f.name for f in dataclasses.fields(AugmentConfig)})
        if bad:
            raise ValueError(f"training.augment: unknown option(s) {bad}")
        try:
            unet = self.unet_config()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"training.model: {exc}") from exc
        multiple = 2 ** int(unet.depth)
        if self.train_size % multiple:
            raise ValueError(
                f"training.train_size={self.train_size} must be a multiple of 2**depth={multiple}"
            )

    def unet_config(self) -> UNetConfig:
        return UNetConfig.from_dict(self.model)

    @property
    def total_steps(self) -> int:
        return int(self.steps_stage1) + int(self.steps_stage2)

    def fingerprint_fields(self, world_size: int = 1) -> dict[str, Any]:
        """What must match for a checkpoint to be resumable (not step counts, logging, device).

        A data-parallel run adds its world size (the global batch is ``batch_size`` times it,
        and the data stream is sharded by it) and its BatchNorm synchronisation; a
        single-process run keeps the fingerprint it always had.
        """
        parallel = {"world_size": world_size, "sync_batchnorm": self.sync_batchnorm}
        return {
            **(parallel if world_size > 1 else {}),
            "model": self.unet_config().to_dict(),
            "seed": self.seed,
            "train_size": self.train_size,
            "batch_size": self.batch_size,
            "steps_stage1": self.steps_stage1,
            "lr_stage1": self.lr_stage1,
            "lr_stage2": self.lr_stage2,
            **(
                {
                    "lr_schedule": self.lr_schedule,
                    "warmup_steps": self.warmup_steps,
                    "max_minutes": self.max_minutes,
                }
                if self.lr_schedule != "constant"
                else {}
            ),
            **({"ema_decay": self.ema_decay} if self.ema_decay else {}),
            **({"mask_source": self.mask_source} if self.mask_source != "pool" else {}),
            **({"init_weights": self.init_weights} if self.init_weights else {}),
            "loss_weights": LossWeights.from_dict(self.loss_weights).to_dict(),
            "vgg_weights": self.vgg_weights,
            "vgg_offline_fallback": self.vgg_offline_fallback,
            "augment": dataclasses.asdict(AugmentConfig(**self.augment)),
        }


@dataclass
class TrainingData:
    """The training stream and the fixed validation batch (images in [0, 1], masks 1 = valid)."""

    train: InpaintingTrainDataset
    val_images: torch.Tensor | None = None
    val_masks: torch.Tensor | None = None
    description: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    model: PConvUNet
    history: pd.DataFrame
    info: dict[str, Any]


# ------------------------------------------------------------------ callbacks
class TrainingCallback:
    """Hooks called by the main process only; override what you need."""

    def on_train_start(self, info: Mapping[str, Any]) -> None:
        """Once, after the model is built and any checkpoint restored."""

    def on_log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Every ``log_every`` steps: mean losses over the window, lr, images/s."""

    def on_validation(self, step: int, metrics: Mapping[str, float], grid: Path | None) -> None:
        """After each validation, with the grid PNG (if written)."""

    def on_checkpoint(self, step: int, path: Path) -> None:
        """After a checkpoint is in place."""

    def on_train_end(self, result: TrainResult) -> None:
        """Once, with the trained model and full history."""


class MlflowCallback(TrainingCallback):
    """Logs metrics (with ``step``), validation grids and run info to an MLflow run.

    The run is the active one (kedro-mlflow's) or, given ``run_id``, that run in
    ``tracking_uri``: how rank 0 of a multi-process job logs into the run of the ``kedro run``
    that launched it without starting or ending it. Tracking must never stop a training run:
    MLflow errors are logged as warnings.
    """

    def __init__(
        self,
        artifact_path: str = "training",
        run_id: str | None = None,
        tracking_uri: str | None = None,
    ) -> None:
        import mlflow

        self._mlflow = mlflow
        self._client = mlflow.MlflowClient(tracking_uri)
        self._run_id = run_id
        self.artifact_path = artifact_path

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

    def on_validation(self, step: int, metrics: Mapping[str, float], grid: Path | None) -> None:
        self._call("log metrics", self._log_batch, metrics=_finite(metrics), step=step)
        if grid is not None:
            path = f"{self.artifact_path}/grids"
            self._call("log the grid", self._client.log_artifact, str(grid), artifact_path=path)


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}


# ------------------------------------------------------------------ device & precision
def select_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA, then Apple MPS, then CPU. An explicit device must be available."""
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"training.device={name!r} but CUDA is not available here; use `auto` or `cpu`"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"training.device={name!r} but Apple MPS is not available here")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on CUDA where supported, else fp16 (with a GradScaler); fp32 elsewhere."""
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision in ("bf16", "fp16") and device.type not in ("cuda", "cpu", "mps"):
        raise ValueError(f"training.precision={precision!r} is not supported on {device}")
    return precision


def resolve_num_workers(value: int | str, device: torch.device) -> int:
    """``auto``: worker processes on CUDA (up to 8); none on CPU/MPS where they steal compute.

    The cores are shared by the training processes on this node (torchrun's
    ``LOCAL_WORLD_SIZE``), so each gets its share.
    """
    if value == "auto":
        if device.type != "cuda":
            return 0
        import os

        cores = (os.cpu_count() or 2) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        return max(1, min(8, cores - 1))
    return int(value)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ------------------------------------------------------------------ schedule & EMA
LR_SCHEDULES = ("constant", "cosine")


def run_progress(step: int, total_steps: int, elapsed_s: float, max_minutes: float | None) -> float:
    """How much of the run is done, in [0, 1]: steps done, or the wall-time budget used when
    ``max_minutes`` is set and that is further along. The run ends at 1."""
    progress = step / max(total_steps, 1)
    if max_minutes:
        progress = max(progress, elapsed_s / (60.0 * float(max_minutes)))
    return min(progress, 1.0)


def learning_rate(cfg: TrainConfig, step: int, progress: float, stage: int) -> float:
    """The learning rate of the next step.

    ``constant``: the paper's ``lr_stage1`` then ``lr_stage2``. ``cosine``: a linear warm-up
    over ``warmup_steps`` to ``lr_stage1``, then half a cosine from ``lr_stage1`` to 0 over the
    run's progress (Loshchilov & Hutter, "SGDR", ICLR 2017), capped at ``lr_stage2`` in stage 2.
    """
    if cfg.lr_schedule == "constant":
        return float(cfg.lr_stage1 if stage == 1 else cfg.lr_stage2)
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    lr = float(cfg.lr_stage1) * warm * 0.5 * (1.0 + math.cos(math.pi * progress))
    return min(lr, float(cfg.lr_stage2)) if stage == 2 else lr


def make_ema(model: torch.nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of the weights and BatchNorm statistics (PyTorch's
    ``AveragedModel``): after update ``n`` (counted from 0),
    ``ema = d_n * ema + (1 - d_n) * weights`` with ``d_n = min(decay, (1 + n) / (10 + n))``,
    the warm-up of TensorFlow's ``ExponentialMovingAverage(num_updates=...)``, so that a short
    run's average is not dominated by its first, untrained weights."""
    cap = float(decay)

    def ema_update(averaged: list, current: list, num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        d = min(cap, (1.0 + n) / (10.0 + n))
        pairs = [(a, c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()]
        if pairs:
            torch._foreach_lerp_([a for a, _ in pairs], [c for _, c in pairs], 1.0 - d)
        for a, c in zip(averaged, current, strict=True):
            if not a.is_floating_point():  # BatchNorm's num_batches_tracked: the latest count
                a.copy_(c)

    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=ema_update, use_buffers=True)


# ------------------------------------------------------------------ the loop
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
    rank, world_size, is_main = ctx.rank, ctx.world_size, ctx.is_main
    # A rank's device comes from its local rank (cuda:<local_rank>), resolved when it joined.
    device = ctx.device if ctx.is_distributed else select_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    use_channels_last = (
        device.type == "cuda" if cfg.channels_last == "auto" else bool(cfg.channels_last)
    )
    memory_format = torch.channels_last if use_channels_last else torch.contiguous_format
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")

    fingerprint = config_fingerprint(
        {**cfg.fingerprint_fields(world_size), "data": data.description}
    )
    ckpt_dir = Path(cfg.checkpoint_dir) / fingerprint if cfg.checkpoint_dir else None

    seed_everything(cfg.seed)  # the same initial weights on every rank
    model = PConvUNet(cfg.unet_config())
    with torch.random.fork_rng(devices=[]):
        # Random VGG fallback weights must be the same on every (resumed) run.
        torch.manual_seed(cfg.seed + 1)
        extractor, vgg_info = build_vgg16_features(
            weights=cfg.vgg_weights or "none", offline_fallback=cfg.vgg_offline_fallback
        )
    if ctx.is_distributed:
        seed_everything(ddp.rank_seed(cfg.seed, rank))  # anything random from here on differs
    if extractor is not None:
        extractor = extractor.to(device=device, memory_format=memory_format).eval()
        for p in extractor.parameters():
            p.requires_grad_(False)
    criterion = InpaintingLoss(extractor, LossWeights.from_dict(cfg.loss_weights)).to(device)
    model = model.to(device=device, memory_format=memory_format)
    sync_batchnorm = bool(cfg.sync_batchnorm) and ctx.is_distributed
    if sync_batchnorm:
        model = ddp.convert_sync_batchnorm(model)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    step, stage, history, window = 0, 1, [], _Window()
    resumed_from, state = None, None
    if is_main and ckpt_dir is not None and not cfg.resume:
        removed = clear_checkpoints(ckpt_dir)
        if removed:
            logger.info(
                "training.resume is false: removed %d old checkpoint(s) in %s", removed, ckpt_dir
            )
    elif is_main and ckpt_dir is not None:
        path = latest_checkpoint(ckpt_dir)
        if path is None:
            _warn_other_configs(Path(cfg.checkpoint_dir), fingerprint)
        else:
            state = load_checkpoint(path, expected_fingerprint=fingerprint, map_location="cpu")
            logger.info("Resuming training from %s (step %d)", path, int(state["step"]))
    if ctx.is_distributed and ckpt_dir is not None and cfg.resume:
        # Rank 0 alone reads the checkpoint (it alone writes them, possibly on a disk the other
        # nodes do not see) and sends it to the others.
        state = ddp.broadcast_object(state, ctx)
    if state is None and cfg.init_weights:
        init_from_model_file(model, cfg.init_weights)
    if state is not None:
        model.load_state_dict(state["model"])
        step, stage = int(state["step"]), int(state["stage"])
        history, window = list(state["history"]), _Window(**state["window"])
        resumed_from = step
    if stage == 2:
        model.freeze_encoder_batchnorm()
    optimizer = make_optimizer(model, cfg.lr_stage1 if stage == 1 else cfg.lr_stage2)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if scaler.is_enabled() and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        rng_ranks = state.get("rng_ranks")  # per-rank states of a data-parallel run
        own = rng_ranks is not None and len(rng_ranks) == world_size
        restore_rng_state(rng_ranks[rank] if own else state["rng"])
    ema = make_ema(model, cfg.ema_decay) if cfg.ema_decay else None
    elapsed_before = 0.0  # wall time of the run before this process resumed it
    if state is not None:
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        elapsed_before = float(state.get("elapsed_s", 0.0))
        state = None
    snapshots = SnapshotWriter(cfg, fingerprint, elapsed_before) if is_main else None
    net = ddp.wrap_ddp(model, ctx)  # what runs forward/backward; `model` is what is saved

    info = {
        "device": str(device),
        "precision": precision,
        "channels_last": use_channels_last,
        "fingerprint": fingerprint,
        "checkpoint_dir": str(ckpt_dir) if ckpt_dir else None,
        "resumed_from_step": resumed_from,
        "vgg": dict(vgg_info),
        "model_config": model.config.to_dict(),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "world_size": world_size,
        "backend": ctx.backend,
        "sync_batchnorm": sync_batchnorm,
        "ema_decay": cfg.ema_decay,
        "lr_schedule": cfg.lr_schedule,
        "max_minutes": cfg.max_minutes,
    }
    logger.info(
        "Training on %s (%s%s), %d parameters, %d+%d steps, batch %d at %dpx; checkpoints in %s",
        device, precision, ", channels_last" if use_channels_last else "", info["n_parameters"],
        cfg.steps_stage1, cfg.steps_stage2, cfg.batch_size, cfg.train_size, ckpt_dir,
    )  # fmt: skip
    if ctx.is_distributed:
        logger.info(
            "Data-parallel: %d processes (%s), global batch %d%s",
            world_size, ctx.backend, cfg.batch_size * world_size,
            ", SyncBatchNorm" if sync_batchnorm else "",
        )  # fmt: skip
    if is_main:
        for cb in callbacks:
            cb.on_train_start(info)

    total = cfg.total_steps
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    val_images = data.val_images.to(device) if data.val_images is not None else None
    val_masks = data.val_masks.to(device) if data.val_masks is not None else None
    loader = make_train_loader(
        data.train,
        cfg.batch_size,
        start_step=step,
        total_steps=total,
        num_workers=resolve_num_workers(cfg.num_workers, device),
        pin_memory=device.type == "cuda",
        rank=rank,
        world_size=world_size,
    )
    net.train()
    bar = tqdm(
        total=total, initial=step, desc="training", unit="step", dynamic_ncols=True,
        disable=(not is_main) or (None if cfg.progress_bar is None else not cfg.progress_bar),
    )  # fmt: skip
    # Without a visible bar (logs, CI), an INFO line about every 5% of the run instead.
    # (by steps, or by the wall-time budget's progress when max_minutes ends the run first).
    progress_every = max(1, round(total / 20 / cfg.log_every)) * cfg.log_every
    next_report = 0.05
    t_window = t_start = time.perf_counter()
    elapsed, progress = elapsed_before, run_progress(step, total, elapsed_before, cfg.max_minutes)
    for images, masks in loader:
        if progress >= 1.0:  # the wall-time budget ran out (a resumed run that was done)
            break
        if stage == 1 and (step >= cfg.steps_stage1 or progress >= cfg.steps_stage1 / total):
            stage = 2
            model.freeze_encoder_batchnorm()
            optimizer = make_optimizer(model, cfg.lr_stage2)
            if ctx.is_distributed:
                # DDP fixed its parameter set when built: rebuild it without the frozen ones.
                del net
                net = ddp.wrap_ddp(model, ctx)
            logger.info(
                "Step %d: stage 2 (fine-tuning, lr %g, encoder BatchNorm frozen)",
                step,
                cfg.lr_stage2,
            )
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step, progress, stage)
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        masks = masks.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        with torch.autocast(
            device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
        ):
            output = net(images * masks, masks)
            losses = criterion(output.float(), images, masks)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["total"]).backward()
        scaler.step(optimizer)
        scaler.update()
        if ema is not None:
            ema.update_parameters(model)
        step += 1
        elapsed = elapsed_before + time.perf_counter() - t_start
        if ctx.is_distributed and cfg.max_minutes:  # every rank must stop at the same step
            elapsed = ddp.all_reduce_mean({"elapsed": elapsed}, ctx)["elapsed"]
        progress = run_progress(step, total, elapsed, cfg.max_minutes)
        done = progress >= 1.0
        # The global batch's losses (mean over ranks), so that every rank's history and
        # window, and a checkpoint's, are the same.
        window.add(_loss_values(losses, ctx), images.shape[0])
        bar.update(1)

        if step % cfg.log_every == 0 or done:
            window_s = time.perf_counter() - t_window
            metrics = window.means()
            metrics.update(
                stage=stage,
                lr=optimizer.param_groups[0]["lr"],
                images_per_s=window.images / max(window_s, 1e-9) * world_size,
            )
            history.append({"step": step, **metrics})
            bar.set_postfix(
                loss=f"{metrics['loss_total']:.4f}", hole=f"{metrics['loss_hole']:.4f}",
                valid=f"{metrics['loss_valid']:.4f}", img_s=f"{metrics['images_per_s']:.1f}",
            )  # fmt: skip
            if is_main:
                for cb in callbacks:
                    cb.on_log(step, metrics)
                if bar.disable and (step % progress_every == 0 or progress >= next_report or done):
                    next_report = math.floor(progress * 20 + 1) / 20
                    logger.info(
                        "step %d/%d, %.0f%% of the run (stage %d): loss %.4f (hole %.4f, "
                        "valid %.4f), %.1f images/s",
                        step, total, 100 * progress, stage, metrics["loss_total"], metrics["loss_hole"],
                        metrics["loss_valid"], metrics["images_per_s"],
                    )  # fmt: skip
            window, t_window = _Window(), time.perf_counter()

        if (
            is_main
            and val_images is not None
            and cfg.val_every
            and (step % cfg.val_every == 0 or done)
        ):
            # Rank 0 alone, on the unwrapped model in eval mode (no collectives): the other
            # ranks wait for it in the next step's gradient all-reduce.
            evaluated = ema.module if ema is not None else model
            val_metrics, grid = _validate(evaluated, val_images, val_masks, autocast_dtype, device)
            model.train()
            if stage == 2:
                model.freeze_encoder_batchnorm()
            grid_path = _save_grid(grid, cfg.grid_dir, step) if cfg.grid_dir else None
            _merge_history(history, step, val_metrics)
            logger.info(
                "Step %d validation: PSNR %.2f dB (hole %.2f, mean fill %.2f), SSIM %.4f",
                step, val_metrics["val_psnr"], val_metrics["val_psnr_hole"],
                val_metrics["val_psnr_hole_mean_fill"], val_metrics["val_ssim"],
            )  # fmt: skip
            for cb in callbacks:
                cb.on_validation(step, val_metrics, grid_path)

        if snapshots is not None:
            snapshots.maybe_save(ema.module if ema is not None else model, step, elapsed, done)
        if ckpt_dir is not None and (step % cfg.checkpoint_every == 0 or done):
            # Every rank's RNG state (a collective: all ranks get here at the same step).
            rng = capture_rng_state()
            rng_ranks = ddp.all_gather_object(rng, ctx) if ctx.is_distributed else None
            if is_main:
                path = save_checkpoint(
                    ckpt_dir,
                    {
                        "step": step,
                        "stage": stage,
                        "fingerprint": fingerprint,
                        "config": {**dataclasses.asdict(cfg), "data": data.description},
                        "model_config": model.config.to_dict(),
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                        "rng": rng,
                        **({"rng_ranks": rng_ranks} if rng_ranks is not None else {}),
                        "history": history,
                        "window": dataclasses.asdict(window),
                        "ema": ema.state_dict() if ema is not None else None,
                        "elapsed_s": elapsed,
                    },
                    keep=cfg.keep_checkpoints,
                )
                for cb in callbacks:
                    cb.on_checkpoint(step, path)
        if done or (stop_at_step is not None and step >= stop_at_step):
            break
    bar.close()
    del net
    if ema is not None:
        model = ema.module
    if resumed_from is not None and resumed_from >= total:
        logger.info(
            "Checkpoint at step %d already covers the %d requested steps", resumed_from, total
        )

    model.eval()
    result = TrainResult(
        model=model,
        history=history_frame(history),
        info={**info, "final_step": step, "elapsed_minutes": round(elapsed / 60.0, 3)},
    )
    if is_main:
        for cb in callbacks:
            cb.on_train_end(result)
    return result


def _loss_values(losses: Mapping[str, torch.Tensor], ctx: ddp.DistContext) -> dict[str, float]:
    """The logged loss terms as floats, averaged over the ranks in a data-parallel run."""
    values = {k: float(losses[k].detach()) for k in LOSS_KEYS if k in losses}
    return ddp.all_reduce_mean(values, ctx) if ctx.is_distributed else values


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


class SnapshotWriter:
    """Saves the model (its EMA when there is one) when the run's wall time passes each of
    ``cfg.snapshot_minutes``, and once at the end, as ``minute_<MMM.MM>_step_<N>.safetensors`` files in
    ``<snapshot_dir>/<fingerprint>/`` (rebuilt by :func:`~aerial_inpainting.pconv.checkpoint.load_model`;
    their ``extra`` holds ``minutes`` and ``step``): the points of a quality-against-time curve."""

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


def _merge_history(history: list[dict[str, Any]], step: int, metrics: Mapping[str, float]) -> None:
    for row in reversed(history):
        if row["step"] == step:
            row.update(metrics)
            return
    history.append({"step": step, **metrics})


def history_frame(history: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The history as a table, one row per logged step, columns step, stage, lr, losses, val_*."""
    frame = pd.DataFrame(list(history))
    if frame.empty:
        return pd.DataFrame(columns=["step", "stage", "lr", *(f"loss_{k}" for k in LOSS_KEYS)])
    first = [c for c in ("step", "stage", "lr", "images_per_s") if c in frame]
    rest = sorted(c for c in frame.columns if c not in first)
    return frame[first + rest].sort_values("step", kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------ validation
@torch.no_grad()
def _validate(
    model: PConvUNet,
    images: torch.Tensor,
    masks: torch.Tensor,
    autocast_dtype: torch.dtype | None,
    device: torch.device,
) -> tuple[dict[str, float], np.ndarray]:
    """PSNR/SSIM of the composite, hole-only PSNR, and the mean-colour-fill baseline's hole PSNR."""
    model.eval()
    outputs = []
    for i in range(images.shape[0]):  # one at a time: full-size images, small memory
        img, msk = images[i : i + 1], masks[i : i + 1]
        with torch.autocast(
            device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
        ):
            outputs.append(model(img * msk, msk).float().clamp(0, 1))
    output = torch.cat(outputs).cpu()
    images, masks = images.cpu(), masks.cpu()
    comp = composite(output, images, masks)
    hole = 1 - masks
    metrics = {
        "val_psnr": float(np.nanmean(batch_psnr(comp, images))),
        "val_ssim": float(np.nanmean(batch_ssim(comp, images))),
        "val_psnr_hole": float(np.nanmean(batch_psnr(output, images, hole))),
        "val_psnr_hole_mean_fill": float(
            np.nanmean(batch_psnr(mean_fill(images, masks), images, hole))
        ),
    }
    return metrics, make_grid(images, masks, output, comp)


def mean_fill(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The baseline: every hole pixel gets the per-channel mean colour of the image's valid pixels."""
    valid = masks.expand_as(images)
    mean = (images * valid).flatten(2).sum(2) / valid.flatten(2).sum(2).clamp_min(1)
    return masks * images + (1 - masks) * mean[:, :, None, None]


def make_grid(
    images: torch.Tensor, masks: torch.Tensor, output: torch.Tensor, comp: torch.Tensor
) -> np.ndarray:
    """uint8 (H, W, 3) grid, one row per image: masked input | mask | output | composite | truth."""
    masked = images * masks + (1 - masks)  # holes shown white
    columns = [masked, masks.expand_as(images), output, comp, images]
    rows = []
    for i in range(images.shape[0]):
        tiles = [c[i].clamp(0, 1).permute(1, 2, 0).numpy() for c in columns]
        sep = np.ones((tiles[0].shape[0], 2, 3), dtype=np.float32)
        row = [tiles[0]]
        for t in tiles[1:]:
            row += [sep, t]
        rows.append(np.concatenate(row, axis=1))
        rows.append(np.ones((2, rows[-1].shape[1], 3), dtype=np.float32))
    return (np.concatenate(rows[:-1], axis=0) * 255 + 0.5).astype(np.uint8)


def _save_grid(grid: np.ndarray, directory: str, step: int) -> Path:
    path = Path(directory) / f"val_grid_step{step:09d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path


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
            "No checkpoint for this training config (fingerprint %s) in %s; checkpoints of other "
            "configs exist (%s) and are left alone. Starting from scratch.",
            fingerprint, root, ", ".join(sorted(others)),
        )  # fmt: skip


# ------------------------------------------------------------------ plots & misc
def loss_curve_figure(history: pd.DataFrame, steps_stage1: int | None = None):
    """Loss terms (log scale) and validation PSNR against step, with the stage boundary."""
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(12, 4.5))
    steps = history.get("step", [])
    for key in LOSS_KEYS:
        col = f"loss_{key}"
        if col in history and history[col].notna().any() and (history[col].fillna(0) > 0).any():
            ax_loss.plot(steps, history[col], label=key, lw=2.5 if key == "total" else 1.2)
    ax_loss.set_yscale("log")
    ax_loss.set(xlabel="step", ylabel="loss (window mean)", title="Training losses")
    for col, label in (
        ("val_psnr", "composite PSNR"),
        ("val_psnr_hole", "hole PSNR"),
        ("val_psnr_hole_mean_fill", "hole PSNR, mean-colour fill"),
    ):
        if col in history and history[col].notna().any():
            sel = history[col].notna()
            ax_val.plot(history.loc[sel, "step"], history.loc[sel, col], marker="o", label=label)
    ax_val.set(xlabel="step", ylabel="dB", title="Validation (fixed test images & masks)")
    for ax in (ax_loss, ax_val):
        if steps_stage1:
            ax.axvline(steps_stage1, color="grey", ls="--", lw=1, label="stage 2 starts")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def config_json(model: PConvUNet, cfg: TrainConfig, info: Mapping[str, Any]) -> str:
    """What is logged next to the model file so that it can be rebuilt and traced."""
    return json.dumps(
        {
            "model_config": model.config.to_dict(),
            "training": dataclasses.asdict(cfg),
            "info": dict(info),
        },
        indent=2,
        default=str,
    )
