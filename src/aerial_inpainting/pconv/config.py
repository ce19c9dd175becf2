"""The configuration of a training run: :class:`TrainConfig`, parsed and validated once.

Plain Python, usable without Kedro: ``TrainConfig.from_params(mapping)`` takes the
``training:`` block of ``conf/base/parameters_training.yml`` (or any mapping with those keys)
and turns its nested blocks into their typed configs (``model`` -> :class:`UNetConfig`,
``loss_weights`` -> :class:`LossWeights`, ``augment`` -> :class:`AugmentConfig`). Every error
names the parameter (``training.<key>``), never a line deep inside the loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aerial_inpainting.pconv.data import AugmentConfig
from aerial_inpainting.pconv.distributed import BACKENDS
from aerial_inpainting.pconv.loss import LossWeights
from aerial_inpainting.pconv.unet import UNetConfig
from aerial_inpainting.pconv.vgg import check_pool_layers

LR_SCHEDULES = ("constant", "cosine")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MASK_SOURCES = ("pool", "generated")
PARAMETERS_FILE = "conf/base/parameters_training.yml"


def _typed(name: str, value: Any, parse) -> Any:
    """``value`` parsed by ``parse`` (a mapping -> config), errors prefixed ``training.<name>``."""
    if not isinstance(value, Mapping):
        return value
    try:
        return parse(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"training.{name}: {exc}") from exc


# The keys of the nested blocks that parameters_training.yml sets (the U-Net's input and
# output channels are RGB, not parameters).
_NESTED_KEYS = {
    "model": ("depth", "base_channels", "max_channels", "prefill"),
    "loss_weights": tuple(f.name for f in dataclasses.fields(LossWeights)),
    "augment": tuple(f.name for f in dataclasses.fields(AugmentConfig)),
}


def missing_keys(params: Mapping[str, Any]) -> list[str]:
    """The keys of ``parameters_training.yml`` (``model.depth`` for nested ones) that
    ``params`` lacks."""
    missing = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in params]
    for block, names in _NESTED_KEYS.items():
        if block in params and isinstance(params[block], Mapping):
            missing += [f"{block}.{name}" for name in names if name not in params[block]]
    return sorted(missing)


def _augment(values: Mapping[str, Any]) -> AugmentConfig:
    bad = sorted(set(values) - {f.name for f in dataclasses.fields(AugmentConfig)})
    if bad:
        raise ValueError(f"unknown option(s) {bad}")
    return AugmentConfig(**values)


@dataclass
class TrainConfig:
    """Every knob of a training run; built from ``params:training`` by :meth:`from_params`.

    The nested blocks are typed (a mapping given to the constructor is parsed); the other
    fields are scalars as in the YAML.
    """

    model: UNetConfig = field(default_factory=UNetConfig)
    seed: int = 42
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool | str = "auto"
    train_size: int = 64
    late_train_size: int | None = None
    late_train_size_from: float = 0.75
    batch_size: int = 8
    steps_stage1: int = 600
    steps_stage2: int = 150
    lr_stage1: float = 2e-4
    lr_stage2: float = 5e-5
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    grad_clip_norm: float | None = None
    ema_decay: float | None = None
    max_minutes: float | None = None
    snapshot_minutes: list[float] = field(default_factory=list)
    snapshot_dir: str | None = None
    mask_source: str = "pool"
    init_weights: str | None = None
    loss_weights: LossWeights = field(default_factory=LossWeights)
    vgg_weights: str | None = "imagenet"
    vgg_offline_fallback: str = "random"
    vgg_pool_layers: int = 3
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    num_workers: int | str = "auto"
    log_every: int = 10
    val_every: int = 250
    val_images: int = 4
    checkpoint_dir: str | None = "data/06_models/checkpoints"
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    resume: bool = True
    progress_bar: bool | None = None
    devices: int = 1
    backend: str = "auto"
    sync_batchnorm: bool = False

    def __post_init__(self) -> None:
        self.model = _typed("model", self.model or {}, UNetConfig.from_dict)
        self.loss_weights = _typed("loss_weights", self.loss_weights or {}, LossWeights.from_dict)
        self.augment = _typed("augment", self.augment or {}, _augment)

    @classmethod
    def from_params(cls, params: Mapping[str, Any], *, complete: bool = False) -> TrainConfig:
        """Parse and validate the parameter mapping; unknown keys are an error, not ignored.

        ``complete=True`` (the Kedro node: the YAML is the only source of values) also refuses
        a mapping that lacks a key, nested blocks' keys included; without it, missing keys
        take the field defaults (plain-Python use). Raises ValueError naming the parameter
        (``training.<key>``) and, for unknown or missing keys, the parameters file.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise ValueError(
                f"{PARAMETERS_FILE}: unknown key(s) under `training:` {unknown}; "
                f"known keys: {sorted(names)}"
            )
        missing = missing_keys(params) if complete else []
        if missing:
            raise ValueError(f"{PARAMETERS_FILE}: missing key(s) under `training:` {missing}")
        cfg = cls(**dict(params))
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Fail early with the parameter's name rather than deep inside the loop."""
        for name in ("train_size", "batch_size", "log_every", "checkpoint_every"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(
                    f"training.{name} must be a positive integer, got {getattr(self, name)!r}"
                )
        for name in ("steps_stage1", "steps_stage2", "val_every", "val_images", "warmup_steps"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"training.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.total_steps <= 0:
            raise ValueError("training.steps_stage1 + training.steps_stage2 must be > 0")
        if isinstance(self.devices, bool) or not isinstance(self.devices, int) or self.devices < 1:
            raise ValueError(f"training.devices must be an integer >= 1, got {self.devices!r}")
        for name, allowed in (
            ("backend", BACKENDS),
            ("lr_schedule", LR_SCHEDULES),
            ("mask_source", MASK_SOURCES),
            ("precision", PRECISIONS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"training.{name} must be one of {list(allowed)}, got {getattr(self, name)!r}"
                )
        if not isinstance(self.sync_batchnorm, bool):
            raise ValueError(
                f"training.sync_batchnorm must be true or false, got {self.sync_batchnorm!r}"
            )
        if self.ema_decay is not None and not 0.0 < float(self.ema_decay) < 1.0:
            raise ValueError(
                f"training.ema_decay must be in (0, 1) or null, got {self.ema_decay!r}"
            )
        clip = self.grad_clip_norm
        if clip is not None and (
            isinstance(clip, bool) or not isinstance(clip, int | float) or not clip > 0
        ):
            raise ValueError(
                f"training.grad_clip_norm must be a positive number or null, got {clip!r}"
            )
        if self.max_minutes is not None and not float(self.max_minutes) > 0:
            raise ValueError(f"training.max_minutes must be > 0 or null, got {self.max_minutes!r}")
        if any(float(m) <= 0 for m in self.snapshot_minutes or []):
            raise ValueError(
                f"training.snapshot_minutes must be > 0, got {self.snapshot_minutes!r}"
            )
        try:
            check_pool_layers(self.vgg_pool_layers)
        except ValueError as exc:
            raise ValueError(f"training.vgg_pool_layers: {exc}") from exc
        multiple = 2 ** int(self.model.depth)
        if self.train_size % multiple:
            raise ValueError(
                f"training.train_size={self.train_size} must be a multiple of 2**depth={multiple}"
            )
        late = self.late_train_size
        if late is not None and (
            isinstance(late, bool) or not isinstance(late, int) or late <= 0 or late % multiple
        ):
            raise ValueError(
                f"training.late_train_size must be null or a positive multiple of "
                f"2**depth={multiple}, got {late!r}"
            )
        frac = self.late_train_size_from
        if isinstance(frac, bool) or not isinstance(frac, int | float) or not 0.0 <= frac < 1.0:
            raise ValueError(
                f"training.late_train_size_from must be a share of the run in [0, 1), got {frac!r}"
            )

    @property
    def total_steps(self) -> int:
        return int(self.steps_stage1) + int(self.steps_stage2)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON/YAML-able), nested configs included."""
        return dataclasses.asdict(self)

    def fingerprint_fields(self, world_size: int = 1) -> dict[str, Any]:
        """What must match for a checkpoint to be resumable (not step counts, logging, device).

        A data-parallel run adds its world size (the global batch is ``batch_size`` times it,
        and the data stream is sharded by it) and its BatchNorm synchronisation; a
        single-process run keeps the fingerprint it always had.
        """
        parallel = {"world_size": world_size, "sync_batchnorm": self.sync_batchnorm}
        curriculum = {
            "late_train_size": self.late_train_size,
            "late_train_size_from": self.late_train_size_from,
        }
        schedule = {
            "lr_schedule": self.lr_schedule,
            "warmup_steps": self.warmup_steps,
            "max_minutes": self.max_minutes,
        }
        return {
            **(parallel if world_size > 1 else {}),
            "model": self.model.to_dict(),
            "seed": self.seed,
            "train_size": self.train_size,
            **(curriculum if self.late_train_size is not None else {}),
            "batch_size": self.batch_size,
            "steps_stage1": self.steps_stage1,
            "lr_stage1": self.lr_stage1,
            "lr_stage2": self.lr_stage2,
            **(schedule if self.lr_schedule != "constant" else {}),
            **({"ema_decay": self.ema_decay} if self.ema_decay else {}),
            **({"grad_clip_norm": self.grad_clip_norm} if self.grad_clip_norm else {}),
            **({"mask_source": self.mask_source} if self.mask_source != "pool" else {}),
            **({"init_weights": self.init_weights} if self.init_weights else {}),
            "loss_weights": self.loss_weights.to_dict(),
            "vgg_weights": self.vgg_weights,
            "vgg_offline_fallback": self.vgg_offline_fallback,
            **({"vgg_pool_layers": self.vgg_pool_layers} if self.vgg_pool_layers != 3 else {}),
            "augment": dataclasses.asdict(self.augment),
        }
