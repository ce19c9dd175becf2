"""Model files and resumable training checkpoints, always written atomically.

Two kinds of file live here:

* the *model file* (``save_model``/``load_model``): the network's config and weights only,
  enough for evaluation and inference to rebuild a :class:`PConvUNet`;
* the *training checkpoint* (``save_checkpoint``/``load_checkpoint``): everything needed to
  continue a run bit-for-bit (model, optimiser, grad scaler, step, stage, RNG states, history)
  plus a fingerprint of the configuration, so that a resume with an incompatible config is
  refused instead of silently mixing two experiments.

Every file is written to a temporary file in the target directory, fsynced, then
``os.replace``-d over the final name: a crash (even ``kill -9``) leaves either the old file
or the new one, never a truncated one.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

MODEL_FORMAT = "aerial-inpainting/pconv-unet/1"
CHECKPOINT_FORMAT = "aerial-inpainting/pconv-train-checkpoint/1"
_CKPT_RE = re.compile(r"^ckpt-(\d{9})\.pt$")


# ------------------------------------------------------------------ atomic writes
def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers only ever see a complete file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # Failed mid-write: drop the partial temporary file, keep any previous `path`.
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`atomic_write_bytes` (serialised in memory first)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (POSIX); silently skipped where directories can't be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ------------------------------------------------------------------ model files
def save_model(
    path: str | os.PathLike, model: torch.nn.Module, extra: Mapping[str, Any] | None = None
) -> Path:
    """Save a :class:`PConvUNet` as ``{"format", "config", "state_dict", "extra"}`` (CPU tensors)."""
    state_dict = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    payload = {
        "format": MODEL_FORMAT,
        "config": model.config.to_dict(),
        "state_dict": state_dict,
        "extra": dict(extra or {}),
    }
    return atomic_torch_save(payload, path)


def load_model(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> torch.nn.Module:
    """Rebuild the :class:`PConvUNet` saved by :func:`save_model` (in eval mode).

    Also accepts a training checkpoint, so a model can be pulled out of an interrupted run
    (its EMA weights when the run keeps an average, ``training.ema_decay``).
    """
    from aerial_inpainting.pconv.unet import PConvUNet, UNetConfig

    path = Path(path)
    payload = _torch_load(path, map_location)
    fmt = payload.get("format") if isinstance(payload, dict) else None
    if fmt == MODEL_FORMAT:
        config, state_dict = payload["config"], payload["state_dict"]
    elif fmt == CHECKPOINT_FORMAT:
        config, state_dict = payload["model_config"], payload["model"]
        if payload.get("ema"):  # the run's result is the moving average of its weights
            prefix = "module."
            state_dict = {
                k[len(prefix) :]: v for k, v in payload["ema"].items() if k.startswith(prefix)
            }
    else:
        raise ValueError(
            f"{path}: not an aerial-inpainting model file (format {fmt!r}, expected {MODEL_FORMAT!r})"
        )
    model = PConvUNet(UNetConfig.from_dict(config))
    model.load_state_dict(state_dict)
    model.extra = dict(payload.get("extra", {}))  # type: ignore[attr-defined]
    return model.eval()


def _torch_load(path: Path, map_location: str | torch.device) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model/checkpoint file not found")
    try:
        # Payloads hold only tensors and plain Python/numpy containers (RNG states), but
        # numpy's RNG state is not on torch's weights-only allow-list, hence weights_only=False.
        # Only load files this project wrote.
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # truncated/corrupt file, wrong kind of file
        raise ValueError(f"{path}: cannot be read as a torch file ({exc})") from exc


# ------------------------------------------------------------------ config fingerprint
def config_fingerprint(config: Mapping[str, Any]) -> str:
    """A short, stable hash of everything that must match for a resume to be exact."""
    canonical = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# ------------------------------------------------------------------ RNG state
def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch (CPU) and CUDA generator states."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA part only where CUDA is present)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
        else:
            logger.warning(
                "Checkpoint has %d CUDA RNG states but %d devices are visible; CUDA RNG not restored",
                len(cuda_states),
                torch.cuda.device_count(),
            )


# ------------------------------------------------------------------ training checkpoints
def checkpoint_path(directory: str | os.PathLike, step: int) -> Path:
    """File name of the checkpoint taken after ``step`` optimiser steps (sortable)."""
    return Path(directory) / f"ckpt-{step:09d}.pt"


def list_checkpoints(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``directory`` as (step, path), oldest first (temp files ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        match = _CKPT_RE.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest step, or ``None``."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def save_checkpoint(directory: str | os.PathLike, state: Mapping[str, Any], keep: int = 2) -> Path:
    """Write ``state`` (must contain ``step`` and ``fingerprint``) atomically, prune old ones.

    Only the newest ``keep`` checkpoints are kept (``keep <= 0`` keeps all). Pruning happens
    after the new file is in place, so there is always at least one complete checkpoint.
    """
    payload = {"format": CHECKPOINT_FORMAT, **state}
    path = atomic_torch_save(payload, checkpoint_path(directory, int(state["step"])))
    if keep > 0:
        for _, old in list_checkpoints(directory)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(
    path: str | os.PathLike,
    expected_fingerprint: str | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Read a training checkpoint, refusing one written under a different configuration."""
    path = Path(path)
    payload = _torch_load(path, map_location)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path}: not a training checkpoint (expected format {CHECKPOINT_FORMAT!r})"
        )
    found = payload.get("fingerprint")
    if expected_fingerprint is not None and found != expected_fingerprint:
        raise ValueError(
            f"{path}: checkpoint was written with config fingerprint {found!r}, but the current "
            f"training config has {expected_fingerprint!r}; resuming would mix two different "
            "experiments. Set `training.resume: false` to start from scratch, or point "
            "`training.checkpoint_dir` elsewhere."
        )
    return payload


def clear_checkpoints(directory: str | os.PathLike) -> int:
    """Delete this run's checkpoint files (only files named like checkpoints); returns the count."""
    found = list_checkpoints(directory)
    for _, path in found:
        path.unlink(missing_ok=True)
    return len(found)
