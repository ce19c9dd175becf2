"""Model files and resumable training checkpoints, always written atomically.

Two kinds of file live here:

* the *model file* (``save_model``/``load_model``): the network's weights in
  `safetensors <https://huggingface.co/docs/safetensors>`_ format with its config (and any
  ``extra`` information) as JSON in the file's metadata header, enough for evaluation and
  inference to rebuild a :class:`PConvUNet`. Reading it never runs code from the file;
* the *training checkpoint* (``save_checkpoint``/``load_checkpoint``): everything needed to
  continue a run bit-for-bit (model, optimiser, grad scaler, step, stage, RNG states, history)
  plus a fingerprint of the configuration, so that a resume with an incompatible config is
  refused instead of silently mixing two experiments. It is a ``torch.save`` file read with
  ``torch.load(weights_only=True)``: only tensors and plain containers (dict, list, tuple,
  str, int, float, bool, None) are accepted, so RNG states are stored as tensors and lists
  and numpy values are converted before saving (:func:`to_plain`).

Model files of the first format (``torch.save`` pickles, ``*.pt``) are read with
``weights_only=True`` too; one that needs more than that is refused with the command that
converts it (:mod:`aerial_inpainting.convert_model`, to be run only on a trusted file).

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
import pickle
import random
import re
import struct
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

MODEL_FORMAT = "aerial-inpainting/pconv-unet/2"  # safetensors + JSON metadata
LEGACY_MODEL_FORMAT = "aerial-inpainting/pconv-unet/1"  # torch.save pickle (*.pt)
MODEL_SUFFIX = ".safetensors"
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
class UnsafeModelFileError(ValueError):
    """A file that could only be read by running Python code from it (a full pickle)."""


def convert_command(path: str | os.PathLike) -> str:
    """The shell command that converts an old ``*.pt`` model file (see the README)."""
    return f"python -m aerial_inpainting.convert_model {path}"


def save_model(
    path: str | os.PathLike, model: torch.nn.Module, extra: Mapping[str, Any] | None = None
) -> Path:
    """Save a :class:`PConvUNet` as a safetensors file (atomically); returns ``path``.

    Tensors: the model's ``state_dict`` (CPU). Metadata header (str -> str): ``format``
    (:data:`MODEL_FORMAT`), ``config`` (JSON of ``UNetConfig.to_dict()``) and ``extra`` (JSON;
    values that JSON cannot hold are stored as their ``str``). Any file name works; the project
    uses the ``.safetensors`` suffix.
    """
    from safetensors.torch import save as safetensors_save

    state_dict = {
        k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()
    }
    metadata = {
        "format": MODEL_FORMAT,
        "config": json.dumps(model.config.to_dict(), sort_keys=True),
        "extra": json.dumps(to_plain(dict(extra or {})), default=str, sort_keys=True),
    }
    return atomic_write_bytes(path, safetensors_save(state_dict, metadata=metadata))


def is_safetensors_file(path: str | os.PathLike) -> bool:
    """True when ``path`` starts like a safetensors file (8-byte header length, then ``{``)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
            size = os.fstat(handle.fileno()).st_size
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return 0 < header_len <= size - 8


def load_model(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> torch.nn.Module:
    """Rebuild the :class:`PConvUNet` saved by :func:`save_model` (in eval mode).

    Also accepts a training checkpoint, so a model can be pulled out of an interrupted run
    (its EMA weights when the run keeps an average, ``training.ema_decay``), and a model file of
    the first format (``*.pt``) when it loads with ``torch.load(weights_only=True)`` (with a
    warning naming the conversion command).
    No code from the file is ever run, and nothing is allocated for the network before the
    network its config declares has been checked (:func:`checked_config`): depth and channel
    counts within bounds, and every parameter shape equal to a tensor stored in the file, so
    a small file cannot make the loader build a huge network. Raises FileNotFoundError
    (missing file), :class:`UnsafeModelFileError` (a pickle that needs code to be run: the
    message gives the conversion command) or ValueError (anything else that is not a usable
    model file), each naming the file.
    """
    from aerial_inpainting.pconv.unet import PConvUNet

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model/checkpoint file not found")
    if is_safetensors_file(path):
        config, state_dict, extra = _read_safetensors_model(path, map_location)
    else:
        payload = _torch_load(path, map_location)
        fmt = payload.get("format") if isinstance(payload, dict) else None
        if fmt == LEGACY_MODEL_FORMAT:
            warnings.warn(
                f"{path}: model file in the old torch pickle format; convert it to safetensors "
                f"with `{convert_command(path)}`",
                FutureWarning,
                stacklevel=2,
            )
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
                f"{path}: not an aerial-inpainting model file (format {fmt!r}, expected "
                f"{MODEL_FORMAT!r} in a safetensors file)"
            )
        extra = payload.get("extra", {})
        if not isinstance(state_dict, Mapping):
            raise ValueError(f"{path}: model file holds no weights (a {type(state_dict)})")
        config = checked_config(
            path, config, {k: tuple(getattr(v, "shape", (-1,))) for k, v in state_dict.items()}
        )
    try:
        model = PConvUNet(config)
        model.load_state_dict(state_dict)
    except (TypeError, KeyError, RuntimeError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise ValueError(
            f"{path}: model config and weights do not fit together ({reason})"
        ) from exc
    model.extra = dict(extra) if isinstance(extra, Mapping) else {}  # type: ignore[attr-defined]
    return model.eval()


def checked_config(path: Path, config: Any, stored: Mapping[str, tuple[int, ...]]):
    """The :class:`~aerial_inpainting.pconv.unet.UNetConfig` of a model file, once checked.

    ``config``: the file's declared config (a JSON mapping); ``stored``: the shapes of the
    tensors the file holds (key -> shape), read from its header, not loaded. The config must
    parse, stay within :func:`~aerial_inpainting.pconv.unet.check_config_limits`, and the
    network it declares (shapes computed on the ``meta`` device, no allocation) must have
    exactly the stored tensors' keys and shapes. Raises ValueError naming ``path``.
    """
    from aerial_inpainting.pconv.unet import (
        UNetConfig,
        check_config_limits,
        declared_state_shapes,
    )

    try:
        if not isinstance(config, Mapping):
            raise TypeError(f"expected a JSON object, got {type(config).__name__}")
        unet_config = UNetConfig.from_dict(config)
        check_config_limits(unet_config)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{path}: model config is not usable: {exc}") from exc
    declared = declared_state_shapes(unet_config)
    problem = _shape_mismatch(declared, stored)
    if problem:
        raise ValueError(f"{path}: model config and weights do not fit together: {problem}")
    return unet_config


def _shape_mismatch(
    declared: Mapping[str, tuple[int, ...]], stored: Mapping[str, tuple[int, ...]]
) -> str:
    """'' when ``stored`` has exactly ``declared``'s keys and shapes, else what differs."""
    if dict(declared) == dict(stored):
        return ""

    def count(shapes: Mapping[str, tuple[int, ...]]) -> int:
        return sum(int(np.prod(shape, dtype=np.float64)) for shape in shapes.values())

    summary = (
        f"the config declares {len(declared)} tensors ({count(declared):,} values), the file "
        f"stores {len(stored)} ({count(stored):,} values)"
    )
    missing = [key for key in declared if key not in stored]
    if missing:
        return f"{summary}; missing {missing[0]!r} and {len(missing) - 1} more"
    unexpected = [key for key in stored if key not in declared]
    if unexpected:
        return f"{summary}; unexpected {unexpected[0]!r} and {len(unexpected) - 1} more"
    key = next(k for k in declared if tuple(declared[k]) != tuple(stored[k]))
    return f"{summary}; {key!r} is declared {declared[key]} but stored {stored[key]}"


def _read_safetensors_model(
    path: Path, map_location: str | torch.device
) -> tuple[Any, dict[str, torch.Tensor], dict[str, Any]]:
    """(checked UNetConfig, state_dict, extra) of a safetensors model file.

    The header (metadata and tensor shapes) is checked by :func:`checked_config` before any
    tensor is read. Raises ValueError naming ``path``.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            fmt = metadata.get("format")
            if fmt != MODEL_FORMAT:
                raise _NotAModel(
                    f"{path}: not an aerial-inpainting model file (format {fmt!r}, expected "
                    f"{MODEL_FORMAT!r})"
                )
            try:
                config = json.loads(metadata["config"])
                extra = json.loads(metadata.get("extra", "{}"))
            except (KeyError, ValueError, RecursionError) as exc:
                raise _NotAModel(f"{path}: model file has no readable JSON config ({exc})") from exc
            keys = list(handle.keys())
            stored = {key: tuple(handle.get_slice(key).get_shape()) for key in keys}
            try:
                config = checked_config(path, config, stored)
            except ValueError as exc:
                raise _NotAModel(str(exc)) from exc
            state_dict = {key: handle.get_tensor(key) for key in keys}
    except _NotAModel as exc:
        raise ValueError(str(exc)) from exc
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path}: cannot be read as a safetensors file ({exc})") from exc
    if str(map_location) != "cpu":
        state_dict = {k: v.to(map_location) for k, v in state_dict.items()}
    return config, state_dict, extra


class _NotAModel(Exception):
    """A readable safetensors file that is not a usable model file (the message says why)."""


def _numpy_multiarray():
    try:  # numpy >= 2
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    return multiarray


_NUMPY_ARRAY_GLOBALS = [
    np.ndarray,
    np.dtype,
    np.dtypes.UInt32DType,
    np.dtypes.Int64DType,
    np.dtypes.Float64DType,
    _numpy_multiarray()._reconstruct,
]


def _torch_load(path: Path, map_location: str | torch.device) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never code."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model/checkpoint file not found")
    try:
        # Checkpoints written before RNG states were stored as tensors/lists hold numpy's
        # RNG key as an ndarray: torch's documented allowlist for plain numpy arrays.
        with torch.serialization.safe_globals(_NUMPY_ARRAY_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():  # not an allowed-globals refusal: garbage
            raise ValueError(f"{path}: cannot be read as a model file ({exc})") from exc
        # The weights-only unpickler met a global it does not allow: the file can only be
        # read by running (some of) its code, which is never done here.
        raise UnsafeModelFileError(
            f"{path}: refused: reading this file would run Python code stored in it "
            f"(a pickle that is not plain weights). If it is an old aerial-inpainting model "
            f"file from a source you trust, convert it once with `{convert_command(path)}`; "
            f"otherwise do not use it"
        ) from exc
    except Exception as exc:  # truncated/corrupt file, wrong kind of file
        raise ValueError(f"{path}: cannot be read as a model file ({exc})") from exc


def to_plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays turned into Python numbers and tensors.

    Recurses into dicts, lists and tuples; anything else is returned as is. What
    ``torch.load(weights_only=True)`` accepts back: tensors, dict, list, tuple, str, int,
    float, bool, None.
    """
    if isinstance(value, OrderedDict):  # a state_dict: keep its type and version metadata
        plain = OrderedDict((k, to_plain(v)) for k, v in value.items())
        if hasattr(value, "_metadata"):
            plain._metadata = value._metadata  # type: ignore[attr-defined]
        return plain
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(to_plain(v) for v in value)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    return value


# ------------------------------------------------------------------ config fingerprint
def config_fingerprint(config: Mapping[str, Any]) -> str:
    """A short, stable hash of everything that must match for a resume to be exact."""
    canonical = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# ------------------------------------------------------------------ RNG state
def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch (CPU) and CUDA generator states, as tensors and plain lists.

    ``python``: ``[version, [625 ints], gauss_next]``; ``numpy``: ``{"key": uint32 tensor (624),
    "pos", "has_gauss", "cached_gaussian"}``; ``torch``/``cuda``: uint8 tensors. All of it
    loads back with ``torch.load(weights_only=True)``.
    """
    version, internal, gauss = random.getstate()
    kind, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    if kind != "MT19937":  # pragma: no cover - numpy's legacy global generator is MT19937
        raise RuntimeError(f"unexpected numpy RNG kind {kind!r}")
    state: dict[str, Any] = {
        "python": [int(version), [int(v) for v in internal], gauss],
        "numpy": {
            "key": torch.from_numpy(np.asarray(key, dtype=np.uint32).astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA part only where CUDA is present).

    Also accepts the states of earlier checkpoints (Python's tuple, numpy's 5-tuple).
    """
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    numpy_state = state["numpy"]
    if isinstance(numpy_state, Mapping):
        key = numpy_state["key"]
        key = key.numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
        np.random.set_state(
            (
                "MT19937",
                key.astype(np.uint32),
                int(numpy_state["pos"]),
                int(numpy_state["has_gauss"]),
                float(numpy_state["cached_gaussian"]),
            )
        )
    else:
        np.random.set_state(tuple(numpy_state))
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
    Entries may be tensors, dict, list, tuple, str, int, float, bool or None (numpy scalars
    and arrays are converted, :func:`to_plain`); anything else is refused here, at save time,
    because ``torch.load(weights_only=True)`` could not read it back.
    """
    payload = to_plain({"format": CHECKPOINT_FORMAT, **state})
    _check_plain(payload, "checkpoint")
    path = atomic_torch_save(payload, checkpoint_path(directory, int(state["step"])))
    if keep > 0:
        for _, old in list_checkpoints(directory)[:-keep]:
            old.unlink(missing_ok=True)
    return path


_PLAIN_TYPES = (str, int, float, bool, type(None), torch.Tensor, torch.Size, torch.dtype)


def _check_plain(value: Any, where: str) -> None:
    """Raise TypeError naming the first entry ``torch.load(weights_only=True)`` would refuse."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
    elif not isinstance(value, _PLAIN_TYPES):
        raise TypeError(
            f"{where} is a {type(value).__name__}; checkpoints hold only tensors and plain "
            "containers (dict, list, tuple, str, int, float, bool, None)"
        )


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
