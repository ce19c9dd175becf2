"""Data-parallel training on ``torch.distributed``: process group, DDP, SyncBatchNorm, launching.

Everything here is a thin layer over PyTorch's own engine (``torch.distributed``,
``DistributedDataParallel``, ``SyncBatchNorm``, the elastic launcher behind ``torchrun``);
nothing re-implements gradient all-reduce or rendezvous.

* Under ``torchrun`` (or :func:`launch_local`) every process reads ``RANK``, ``LOCAL_RANK``,
  ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` from its environment
  (:func:`init_distributed`); a plain ``python`` process is a world of one and needs no
  process group, so the same code runs both ways.
* Backend ``nccl`` on CUDA (one GPU per local rank), ``gloo`` on the CPU.
* Per-rank data sharding is :class:`aerial_inpainting.pconv.data.ResumableSampler` (rank ``r``
  takes every ``world_size``-th sample of the run-wide stream), not ``DistributedSampler``:
  it restarts mid-epoch on resume, and the union of the ranks' batches at step ``s`` is
  exactly batch ``s`` of a single-process run with ``world_size`` times the batch size.
* ``sync_batchnorm``: PyTorch's ``SyncBatchNorm`` on CUDA. It refuses CPU tensors (and DDP
  refuses it in CPU modules, checked with torch 2.14), so on the CPU (gloo)
  :class:`CpuSyncBatchNorm2d` does the same maths with a differentiable all-reduce.
"""

from __future__ import annotations

import datetime
import logging
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from aerial_inpainting.pconv.devices import resolve_device

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "nccl", "gloo")


# ------------------------------------------------------------------ process group
@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job: ranks, world size, backend and its device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from exc


def launched_rank() -> int:
    """This process's global rank as torchrun (or :func:`launch_local`) set it in ``RANK``;
    0 for a process that was not launched that way. Known before the group is joined."""
    return _env_int("RANK", 0)


def launched_world_size() -> int:
    """The number of processes of the job as torchrun set it in ``WORLD_SIZE`` (1 when not
    launched that way)."""
    return _env_int("WORLD_SIZE", 1)


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto``: nccl for CUDA devices, gloo otherwise; nccl on a CPU is refused early."""
    if backend not in BACKENDS:
        raise ValueError(f"training.backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(f"training.backend=nccl needs CUDA devices, but this run is on {device}")
    return backend


def init_distributed(
    backend: str = "auto", device: str | None = "auto", timeout_s: float = 1800.0
) -> DistContext:
    """Join the process group described by torchrun's environment variables.

    Without ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) this is a no-op returning a world of one,
    so single-process training does not need ``MASTER_ADDR``/``MASTER_PORT``.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if dist.is_available() and dist.is_initialized():
        world_size, rank = dist.get_world_size(), dist.get_rank()
        dev = (
            resolve_device(device, local_rank=local_rank) if world_size > 1 else torch.device("cpu")
        )
        return DistContext(rank, local_rank, world_size, dist.get_backend(), dev)
    if world_size <= 1:
        return DistContext(device=torch.device("cpu"))
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world_size}")
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={world_size} but {missing} not set: start the job with torchrun "
            "(or aerial_inpainting.pconv.distributed.launch_local)"
        )
    dev = resolve_device(device, local_rank=local_rank)
    backend_name = resolve_backend(backend, dev)
    dist.init_process_group(
        backend=backend_name,
        init_method="env://",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
        device_id=dev if backend_name == "nccl" else None,  # binds NCCL to this rank's GPU
    )
    logger.info(
        "Joined process group: rank %d/%d (local rank %d) on %s, backend %s",
        rank,
        world_size,
        local_rank,
        dev,
        backend_name,
    )
    return DistContext(rank, local_rank, world_size, backend_name, dev)


def destroy_distributed() -> None:
    """Leave the process group (safe to call when none was started)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext | None = None) -> None:
    """Wait for every rank (no-op in a world of one)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    if ctx is not None and ctx.backend == "nccl" and ctx.device.type == "cuda":
        dist.barrier(device_ids=[ctx.device.index])
    else:
        dist.barrier()


def rank_seed(seed: int, rank: int) -> int:
    """Seed of one rank's global RNGs, distinct per rank and derived from ``training.seed``."""
    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1, np.uint32)[0])


# ------------------------------------------------------------------ collectives for bookkeeping
def all_reduce_mean(values: Mapping[str, float], ctx: DistContext) -> dict[str, float]:
    """Mean over ranks of each value (every rank must call it); identity in a world of one."""
    if not ctx.is_distributed or not values:
        return {k: float(v) for k, v in values.items()}
    keys = sorted(values)
    device = ctx.device if ctx.backend == "nccl" else torch.device("cpu")
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    tensor /= ctx.world_size
    return dict(zip(keys, tensor.cpu().tolist(), strict=True))


def broadcast_object(obj: Any, ctx: DistContext, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (pickled; for small things and checkpoints)."""
    if not ctx.is_distributed:
        return obj
    box = [obj if ctx.rank == src else None]
    device = ctx.device if ctx.backend == "nccl" else None
    dist.broadcast_object_list(box, src=src, device=device)
    return box[0]


def all_gather_object(obj: Any, ctx: DistContext) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (e.g. per-rank RNG states)."""
    if not ctx.is_distributed:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def cpu_threads_per_process() -> int:
    """CPU threads for one of ``LOCAL_WORLD_SIZE`` processes sharing this machine's cores."""
    local = max(1, _env_int("LOCAL_WORLD_SIZE", 1))
    return max(1, (os.cpu_count() or 1) // local)


# ------------------------------------------------------------------ SyncBatchNorm
class CpuSyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are those of all ranks' batches, on the CPU.

    Why it exists: ``torch.nn.SyncBatchNorm`` (torch 2.14) raises on CPU tensors and DDP
    refuses it in CPU modules, so a gloo run on the CPU (the tests) could not synchronise
    BatchNorm at all. Here the per-channel sums are reduced with the autograd-aware
    :class:`_AllReduceSum` (its backward all-reduces the gradients, as torch's own
    SyncBatchNorm backward does), which gives the same forward and backward as one BatchNorm
    over the union of the batches.
    Without a process group, or in eval mode, it is plain ``BatchNorm2d``. On CUDA,
    :func:`convert_sync_batchnorm` uses PyTorch's own ``SyncBatchNorm`` instead.
    """

    process_group: Any = None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        group = self.process_group or (dist.group.WORLD if dist.is_available() else None)
        if (
            self.training
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size(group) > 1
        ):
            return self._synced_forward(input, group)
        return super().forward(input)

    def _synced_forward(self, x: torch.Tensor, group: Any) -> torch.Tensor:
        self._check_input_dim(x)
        dims = [0, 2, 3]
        shape = [1, -1, 1, 1]
        xf = x.float()
        local_count = torch.tensor([xf.numel() / xf.shape[1]], dtype=xf.dtype)
        # Two passes (mean, then centred squares) rather than E[x²] - E[x]²: no cancellation.
        sums = _AllReduceSum.apply(torch.cat([xf.sum(dims), local_count]), group)
        count = sums[-1].detach()
        mean = sums[:-1] / count
        centred = xf - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims), group) / count
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                if self.momentum is None:
                    factor = 1.0 / float(self.num_batches_tracked.item())
                else:
                    factor = float(self.momentum)
                unbiased = var.detach() * count / max(float(count) - 1.0, 1.0)
                self.running_mean.mul_(1 - factor).add_(
                    mean.detach().to(self.running_mean), alpha=factor
                )
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var), alpha=factor)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks whose backward sums the gradients over the ranks too.

    What the deprecated ``torch.distributed.nn.functional.all_reduce`` did, on the public
    ``dist.all_reduce``.
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def convert_sync_batchnorm(module: nn.Module, process_group: Any = None) -> nn.Module:
    """BatchNorm layers -> synchronised ones; weights, buffers and state_dict keys unchanged.

    On CUDA this is ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``; on the CPU each
    ``BatchNorm2d`` is re-typed in place to :class:`CpuSyncBatchNorm2d` (no new state, only
    the forward differs). The device is that of the module's parameters.
    """
    first = next(module.parameters(), None)
    if first is not None and first.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
    for sub in module.modules():
        if type(sub) is nn.BatchNorm2d:
            sub.__class__ = CpuSyncBatchNorm2d
            sub.process_group = process_group
    return module


def has_sync_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, (nn.SyncBatchNorm, CpuSyncBatchNorm2d)) for m in module.modules())


# ------------------------------------------------------------------ DDP
def wrap_ddp(model: nn.Module, ctx: DistContext, **kwargs: Any) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` (already on ``ctx.device``); identity alone.

    Build it after every ``requires_grad`` change (e.g. the fine-tune stage freezing BatchNorm):
    DDP fixes the set of parameters it reduces when it is constructed.
    """
    if not ctx.is_distributed:
        return model
    if ctx.device.type == "cuda":
        kwargs.setdefault("device_ids", [ctx.device.index])
        kwargs.setdefault("output_device", ctx.device.index)
    return DistributedDataParallel(model, **kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (what checkpoints store), else ``model`` itself."""
    return model.module if isinstance(model, DistributedDataParallel) else model


# ------------------------------------------------------------------ launching
def launch_local(
    n_procs: int,
    entry_fn: Callable[..., Any],
    args: Sequence[Any] = (),
    *,
    run_id: str | None = None,
    max_restarts: int = 0,
    start_method: str = "spawn",
    monitor_interval: float = 0.2,
) -> dict[int, Any]:
    """Run ``entry_fn(*args)`` in ``n_procs`` local processes with torch's elastic launcher.

    What ``torchrun --standalone --nproc_per_node=n_procs`` does, from Python: a c10d
    rendezvous on a free local port, ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``/``MASTER_*`` set in
    each worker (``entry_fn`` then calls :func:`init_distributed`). ``entry_fn`` must be a
    module-level function (workers are spawned). Returns ``{rank: return value}``; a failing
    worker raises ``torch.distributed.elastic.multiprocessing.errors.ChildFailedError``.
    """
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if int(n_procs) < 1:
        raise ValueError(f"training.devices must be >= 1, got {n_procs!r}")
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=int(n_procs),
        run_id=run_id or f"aerial-inpainting-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=int(max_restarts),
        monitor_interval=float(monitor_interval),
        start_method=start_method,
    )
    return elastic_launch(config, entry_fn)(*args)
