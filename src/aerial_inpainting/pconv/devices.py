"""Where a run computes: the one device resolver of the project, precision and loader workers.

Training, data-parallel training, evaluation, inference and the CLI all resolve their
``device`` parameter through :func:`resolve_device`.
"""

from __future__ import annotations

import os

import torch


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def resolve_device(
    name: str | torch.device | None = "auto", *, local_rank: int | None = None
) -> torch.device:
    """The ``torch.device`` for a ``device`` parameter.

    ``auto`` (or None, ""): CUDA, then Apple MPS, then CPU. An explicit device (``cpu``,
    ``cuda``, ``cuda:1``, ``mps``) must be available here: ValueError naming it otherwise.

    ``local_rank`` (one process of a data-parallel job): the process's own GPU,
    ``cuda:<local_rank>`` (made the current CUDA device), when the device is ``auto`` or
    ``cuda``; ``auto`` means CUDA or else the CPU (``torch.distributed`` has no MPS backend);
    ``cuda:N`` and ``mps`` are refused with a ValueError saying why.
    """
    if local_rank is not None:
        return _rank_device(name, local_rank)
    if name is None or str(name) in ("", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available here; use `auto` or `cpu`")
    if device.type == "mps" and not _mps_available():
        raise ValueError(f"device={name!r} but Apple MPS is not available here")
    return device


def _rank_device(name: str | torch.device | None, local_rank: int) -> torch.device:
    """The device of one process of a data-parallel run (see :func:`resolve_device`)."""
    if name is None or str(name) in ("", "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"training.device={name!r} but CUDA is not available here")
        if device.index is not None:
            raise ValueError(
                f"training.device={name!r} names one GPU, but each process of a data-parallel "
                "run uses cuda:<local rank>: set training.device to auto or cuda"
            )
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ValueError(
                f"local rank {local_rank} has no GPU: only {count} visible; start at most "
                f"{count} processes per node (torchrun --nproc_per_node / training.devices)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ValueError(f"distributed training runs on CUDA or CPU, not {device}")
    return device


# CPU features with native bfloat16 arithmetic: AVX-512 BF16 (Cooper Lake, Zen 4 and later)
# and AMX-BF16 (Sapphire Rapids). On a 2-core AVX-512 BF16 CPU, autocast to bfloat16 made a
# training step 1.2-1.6x faster (README, "What the levers bought"); elsewhere (AVX2 only, ARM)
# bfloat16 is emulated and slower, so auto keeps float32 there.
CPU_BF16_FEATURES = ("avx512_bf16", "amx_bf16")


def cpu_has_fast_bf16() -> bool:
    """Whether this machine's CPU has native bfloat16 instructions (:data:`CPU_BF16_FEATURES`),
    read at run time from PyTorch's CPU feature detection (``torch.cpu.get_capabilities``;
    older PyTorch: ``torch.cpu._is_avx512_bf16_supported``)."""
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    if get_capabilities is not None:
        capabilities = get_capabilities()
        return any(bool(capabilities.get(name, False)) for name in CPU_BF16_FEATURES)
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(probe()) if probe is not None else False


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a run trains in: ``fp32``, ``bf16`` or ``fp16``.

    ``auto``: on CUDA bf16 where supported, else fp16 (with a GradScaler); on the CPU bf16
    where the CPU has native bfloat16 instructions (:func:`cpu_has_fast_bf16`), else fp32;
    fp32 on MPS. Evaluation and validation always compute in float32.
    Raises ValueError for bf16/fp16 on a device type without autocast.
    """
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device.type == "cpu" and cpu_has_fast_bf16():
            return "bf16"
        return "fp32"
    if precision in ("bf16", "fp16") and device.type not in ("cuda", "cpu", "mps"):
        raise ValueError(f"training.precision={precision!r} is not supported on {device}")
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision; None for fp32 (autocast off)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def resolve_num_workers(value: int | str, device: torch.device) -> int:
    """``auto``: worker processes on CUDA (up to 8); none on CPU/MPS where they steal compute.

    The cores are shared by the training processes on this node (torchrun's
    ``LOCAL_WORLD_SIZE``), so each gets its share.
    """
    if value == "auto":
        if device.type != "cuda":
            return 0
        cores = (os.cpu_count() or 2) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        return max(1, min(8, cores - 1))
    return int(value)
