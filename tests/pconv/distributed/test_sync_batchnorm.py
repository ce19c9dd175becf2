"""SyncBatchNorm across 2 gloo processes == one BatchNorm2d over the union of their batches;
the process-group helpers."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from aerial_inpainting.pconv import distributed as ddp

from .conftest import bn_input


def test_two_process_sync_batchnorm_matches_full_batch_batchnorm(two_process_job):
    tmp, _ = two_process_job
    ranks = [torch.load(tmp / f"bn_rank{r}.pt") for r in range(2)]

    # Reference: PyTorch's own BatchNorm2d on all 4 samples, the global mean loss.
    x = bn_input().requires_grad_(True)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 1.5, 3))
        bn.bias.copy_(torch.linspace(-0.2, 0.2, 3))
    out = bn(x)
    half_numel = out[:2].numel()
    w_half = (torch.arange(half_numel, dtype=out.dtype) / half_numel).reshape(out[:2].shape)
    loss = (out * torch.cat([w_half, w_half])).sum() / 4
    loss.backward()

    assert ranks[0]["cls"] == "CpuSyncBatchNorm2d"
    torch.testing.assert_close(
        torch.cat([r["out"] for r in ranks]), out.detach(), atol=1e-5, rtol=1e-5
    )
    # Each rank's input gradient is that of the sum of both ranks' losses (= 2 x global mean).
    grad_in = torch.cat([r["grad_input"] for r in ranks])
    torch.testing.assert_close(grad_in, 2 * x.grad, atol=1e-5, rtol=1e-4)
    # Parameter gradients averaged over ranks (as DDP does) == the global mean loss's gradient.
    ref_params = torch.cat([bn.weight.grad, bn.bias.grad])
    for r in ranks:
        torch.testing.assert_close(r["grad_params"], ref_params, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(r["running_mean"], bn.running_mean, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(r["running_var"], bn.running_var, atol=1e-6, rtol=1e-5)


def test_launch_local_sets_up_a_gloo_group_with_ranks_and_collectives(two_process_job):
    tmp, _ = two_process_job
    infos = [json.loads((tmp / f"ctx_rank{r}.json").read_text()) for r in range(2)]
    for rank, info in enumerate(infos):
        assert info["rank"] == rank and info["world_size"] == 2
        assert info["backend"] == "gloo" and info["device"] == "cpu"
        assert info["is_main"] == (rank == 0)
        assert info["mean"] == {"x": 0.5, "y": 10.0}
        assert info["obj"] == {"from": 0}
        assert info["gathered"] == [0, 10]
    assert infos[0]["seed"] != infos[1]["seed"]  # per-rank seeds


def test_single_process_context_needs_no_process_group(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    ctx = ddp.init_distributed(backend="auto", device="cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.is_distributed) == (0, 1, True, False)
    model = nn.Linear(2, 2)
    assert ddp.wrap_ddp(model, ctx) is model
    assert ddp.all_reduce_mean({"a": 3.0}, ctx) == {"a": 3.0}
    ddp.barrier(ctx)  # no-op


def test_world_size_without_master_address_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        ddp.init_distributed(backend="gloo", device="cpu")


def test_backend_choice():
    assert ddp.resolve_backend("auto", torch.device("cpu")) == "gloo"
    assert ddp.resolve_backend("auto", torch.device("cuda", 0)) == "nccl"
    with pytest.raises(ValueError, match="nccl needs CUDA"):
        ddp.resolve_backend("nccl", torch.device("cpu"))
    with pytest.raises(ValueError, match=r"training\.backend"):
        ddp.resolve_backend("mpi-ish", torch.device("cpu"))


def test_converted_model_keeps_state_dict_keys_and_is_still_batchnorm2d():
    from aerial_inpainting.pconv.unet import PConvUNet, UNetConfig

    model = PConvUNet(UNetConfig(depth=2, base_channels=4, max_channels=8))
    keys = list(model.state_dict())
    converted = ddp.convert_sync_batchnorm(model)
    assert list(converted.state_dict()) == keys
    norms = [m for m in converted.modules() if isinstance(m, ddp.CpuSyncBatchNorm2d)]
    assert norms and all(isinstance(m, nn.BatchNorm2d) for m in norms)
    # Outside a process group it is plain BatchNorm: same output as the unconverted model.
    reference = PConvUNet(UNetConfig(depth=2, base_channels=4, max_channels=8))
    reference.load_state_dict(converted.state_dict())
    image, mask = torch.rand(2, 3, 16, 16), (torch.rand(2, 1, 16, 16) > 0.3).float()
    torch.testing.assert_close(converted(image, mask), reference(image, mask))
