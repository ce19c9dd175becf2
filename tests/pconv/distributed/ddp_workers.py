"""What each of the 2 test processes runs (module level: the launcher spawns them).

One launch does everything that needs a process group, since starting processes is what
costs time here: report the group's collectives, check SyncBatchNorm's maths, then run
several trainings one after the other. Each rank writes what it saw to ``out_dir``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aerial_inpainting.pconv import distributed as ddp


def job_worker(
    bn_input: torch.Tensor, runs: list[dict[str, Any]], bundle_dir: str, out_dir: str
) -> str:
    torch.set_num_threads(1)
    ctx = ddp.init_distributed(backend="gloo", device="cpu")
    out = Path(out_dir)
    try:
        _report_context(ctx, out)
        _sync_batchnorm_layer(ctx, bn_input, out)
        _train_runs(ctx, runs, bundle_dir, out)
    finally:
        ddp.destroy_distributed()
    return f"rank {ctx.rank} done"


def _report_context(ctx: ddp.DistContext, out: Path) -> None:
    info = {
        "rank": ctx.rank,
        "world_size": ctx.world_size,
        "backend": ctx.backend,
        "device": str(ctx.device),
        "is_main": ctx.is_main,
        "mean": ddp.all_reduce_mean({"x": float(ctx.rank), "y": 10.0}, ctx),
        "obj": ddp.broadcast_object({"from": ctx.rank} if ctx.is_main else None, ctx),
        "gathered": ddp.all_gather_object(ctx.rank * 10, ctx),
        "seed": ddp.rank_seed(42, ctx.rank),
    }
    ddp.barrier(ctx)
    (out / f"ctx_rank{ctx.rank}.json").write_text(json.dumps(info))


def _sync_batchnorm_layer(ctx: ddp.DistContext, full_input: torch.Tensor, out: Path) -> None:
    """Each rank normalises its half of ``full_input`` with a synchronised BatchNorm2d and saves
    the output, input gradient, DDP-averaged weight/bias gradients and running stats."""
    half = full_input.shape[0] // ctx.world_size
    x = full_input[ctx.rank * half : (ctx.rank + 1) * half].clone().requires_grad_(True)
    channels = full_input.shape[1]
    bn = ddp.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(channels)))[0]
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 1.5, channels))
        bn.bias.copy_(torch.linspace(-0.2, 0.2, channels))
    bn.train()
    output = bn(x)
    # Per-rank mean of a weighted sum: what a DDP loss looks like.
    weights = torch.arange(output.numel(), dtype=output.dtype).reshape(output.shape)
    loss = (output * weights / output.numel()).sum() / half
    loss.backward()
    grads = torch.cat([bn.weight.grad, bn.bias.grad])
    torch.distributed.all_reduce(grads)  # what DDP does, then divides by the world size
    grads /= ctx.world_size
    torch.save(
        {
            "out": output.detach(),
            "grad_input": x.grad,
            "grad_params": grads,
            "running_mean": bn.running_mean.clone(),
            "running_var": bn.running_var.clone(),
            "cls": type(bn).__name__,
        },
        out / f"bn_rank{ctx.rank}.pt",
    )


def _train_runs(ctx: ddp.DistContext, runs: list[dict[str, Any]], bundle_dir: str, out: Path):
    """Trainings in order (a run with an earlier run's checkpoint_dir resumes it); saves each
    rank's final state_dict, info and history, and logs every checkpoint write per rank."""
    import aerial_inpainting.pconv.train as train_module
    from aerial_inpainting.pconv.train import TrainConfig, train
    from aerial_inpainting.pconv.train_distributed import load_bundle

    real_save = train_module.save_checkpoint

    def logged_save(directory, state, keep=2):
        with open(out / f"checkpoint_calls_rank{ctx.rank}.txt", "a") as handle:
            handle.write(f"{state['step']}\n")
        return real_save(directory, state, keep=keep)

    train_module.save_checkpoint = logged_save
    try:
        data = load_bundle(bundle_dir)
        for run in runs:
            cfg = TrainConfig.from_params(run["params"])
            result = train(cfg, data, dist_ctx=ctx, stop_at_step=run.get("stop_at_step"))
            torch.save(
                {"state_dict": result.model.state_dict(), "info": result.info,
                 "history": result.history.to_dict(orient="records")},
                out / f"{run['name']}_rank{ctx.rank}.pt",
            )  # fmt: skip
    finally:
        train_module.save_checkpoint = real_save
