"""Training-step benchmarks: this project against the original design, and against the machine's limit.

One training step = U-Net forward, loss with VGG-16 (random-init weights: nothing is downloaded),
backward, Adam step; the same sequence as :func:`aerial_inpainting.pconv.train.train`.

* :func:`bench_training_throughput`: images/s of the project in every CPU configuration
  (fp32 / bf16 autocast x NCHW / channels_last) and of :mod:`benchmarks.original_design`
  (fp32, NCHW, dense mask convolutions, three VGG calls), timed round-robin in one process.
* :func:`bench_flop_rate`: FLOPs of one project step (``FlopCounterMode``) / its measured time,
  against the best rate of large ``nn.Conv2d`` forward+backward passes measured in the same run.
* :func:`profile_training_step`: where the time of a project step goes (``torch.profiler``).
* :func:`peak_rss_training_step`: peak resident memory of one step (call it in a fresh process).

Run alone: ``python benchmarks/bench_training.py [--quick]`` (prints JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    bench,
    bench_interleaved,
    current_rss_bytes,
    peak_rss_bytes,
    reset_peak_rss,
    setup_torch,
    sync,
)
from benchmarks.original_design import (
    OriginalInpaintingLoss,
    OriginalPConvUNet,
    OriginalVGG16Features,
)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# ------------------------------------------------------------------ inputs
def make_batch(
    batch: int, size: int, seed: int = 0, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images in [0, 1] and masks (1 = valid) with a few rectangular holes (~20-40 %)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=g)
    masks = torch.ones(batch, 1, size, size)
    for n in range(batch):
        for _ in range(4):
            h, w = (torch.randint(size // 8, size // 2, (2,), generator=g)).tolist()
            y, x = (
                torch.randint(0, size - h, (1,), generator=g).item(),
                torch.randint(0, size - w, (1,), generator=g).item(),
            )
            masks[n, :, y : y + h, x : x + w] = 0
    return images.to(device), masks.to(device)


# ------------------------------------------------------------------ the two designs
class TrainStep:
    """One training step of a model/loss pair; callable, so the timers can call it."""

    def __init__(
        self,
        model: nn.Module,
        criterion: nn.Module,
        images: torch.Tensor,
        masks: torch.Tensor,
        precision: str = "fp32",
        device: str | torch.device = "cpu",
    ) -> None:
        self.model, self.criterion = model, criterion
        self.images, self.masks = images, masks
        self.dtype = PRECISIONS[precision]
        self.device = torch.device(device)
        self.optimizer = torch.optim.Adam(
            [p for p in model.parameters() if p.requires_grad], lr=2e-4
        )
        model.train()

    def __call__(self) -> float:
        with torch.autocast(
            self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None
        ):
            output = self.model(self.images * self.masks, self.masks)
            losses = self.criterion(output.float(), self.images, self.masks)
        self.optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        self.optimizer.step()
        return float(losses["total"].detach())


def project_model(
    depth: int = 7, channels_last: bool = False, device: str | torch.device = "cpu", seed: int = 0
) -> tuple[nn.Module, nn.Module]:
    """This project's PConvUNet and InpaintingLoss (VGG-16 random init), in the given layout."""
    from aerial_inpainting.pconv.loss import InpaintingLoss
    from aerial_inpainting.pconv.unet import PConvUNet, UNetConfig
    from aerial_inpainting.pconv.vgg import build_vgg16_features

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(seed)
    model = PConvUNet(UNetConfig(depth=depth)).to(device=device, memory_format=fmt)
    extractor, _ = build_vgg16_features(weights="random")
    extractor = extractor.to(device=device, memory_format=fmt).eval()
    return model, InpaintingLoss(extractor).to(device)


def original_model(
    depth: int = 7, device: str | torch.device = "cpu", seed: int = 0
) -> tuple[nn.Module, nn.Module]:
    """The original design (dense mask convolutions, fp32, NCHW, three VGG calls)."""
    torch.manual_seed(seed)
    model = OriginalPConvUNet(depth=depth).to(device)
    return model, OriginalInpaintingLoss(OriginalVGG16Features().eval()).to(device)


def project_step(
    batch: int,
    size: int,
    depth: int = 7,
    precision: str = "fp32",
    channels_last: bool = False,
    device: str | torch.device = "cpu",
    model_and_loss: tuple[nn.Module, nn.Module] | None = None,
) -> TrainStep:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model, criterion = model_and_loss or project_model(depth, channels_last, device)
    images, masks = make_batch(batch, size, device=device)
    images = images.contiguous(memory_format=fmt)
    masks = masks.contiguous(memory_format=fmt)
    return TrainStep(model, criterion, images, masks, precision, device)


def original_step(
    batch: int, size: int, depth: int = 7, device: str | torch.device = "cpu"
) -> TrainStep:
    model, criterion = original_model(depth, device)
    images, masks = make_batch(batch, size, device=device)
    return TrainStep(model, criterion, images, masks, "fp32", device)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def project_configs(device: str) -> list[tuple[str, bool]]:
    """(precision, channels_last) variants worth trying on ``device``."""
    if str(device).startswith("cuda"):
        low = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return [("fp32", False), ("fp32", True), (low, False), (low, True)]
    # bf16 autocast runs at a fraction of fp32 speed on CPUs without native bf16 (a full sweep
    # with it did not finish its first figure in 14 minutes on the 2-core development machine).
    return [("fp32", False), ("fp32", True)]


def config_name(precision: str, channels_last: bool) -> str:
    return f"{precision}, {'channels_last' if channels_last else 'NCHW'}"


# ------------------------------------------------------------------ figure 1
def bench_training_throughput(
    batch: int = 4,
    size: int = 256,
    depth: int = 7,
    repeats: int = 5,
    warmup: int = 1,
    device: str | None = None,
) -> dict[str, Any]:
    """Images/s of every project configuration and of the original design, timed round-robin."""
    device = device or default_device()
    if str(device).startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    models = {cl: project_model(depth, cl, device) for cl in (False, True)}
    steps: dict[str, Callable[[], Any]] = {}
    for precision, cl in project_configs(device):
        steps[config_name(precision, cl)] = project_step(
            batch, size, depth, precision, cl, device, model_and_loss=models[cl]
        )
    steps["original design (fp32, NCHW)"] = original_step(batch, size, depth, device)
    timings = bench_interleaved(steps, repeats=repeats, warmup=warmup, device=device)
    project = {k: v for k, v in timings.items() if not k.startswith("original")}
    best = min(project, key=lambda k: project[k]["median_s"])
    orig_key = "original design (fp32, NCHW)"
    result = {
        "device": str(device),
        "batch": batch,
        "size": size,
        "depth": depth,
        "configs": {k: {**v, "images_per_s": batch / v["median_s"]} for k, v in timings.items()},
        "best_config": best,
        "best_images_per_s": batch / project[best]["median_s"],
        "original_images_per_s": batch / timings[orig_key]["median_s"],
        "speedup_best_vs_original": timings[orig_key]["median_s"] / project[best]["median_s"],
        "speedup_fp32_nchw_vs_original": timings[orig_key]["median_s"]
        / project[config_name("fp32", False)]["median_s"],
    }
    return result


# ------------------------------------------------------------------ figure 2
def count_step_flops(step: TrainStep) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def bench_conv_peak(
    precision: str = "fp32",
    repeats: int = 3,
    quick: bool = False,
    device: str | None = None,
) -> dict[str, Any]:
    """Best FLOP rate of a large nn.Conv2d forward+backward (several shapes and layouts)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = device or default_device()
    dtype = PRECISIONS[precision]
    shapes = (
        [(8, 256, 64, 3), (8, 512, 32, 3)]
        if quick
        else [
            (8, 256, 64, 3),
            (8, 512, 32, 3),
            (4, 128, 128, 3),
            (16, 512, 16, 3),
        ]
    )
    rates = []
    for n, c, hw, k in shapes:
        for cl in (False, True):
            fmt = torch.channels_last if cl else torch.contiguous_format
            conv = nn.Conv2d(c, c, k, padding=k // 2).to(device=device, memory_format=fmt)
            x = torch.randn(n, c, hw, hw, device=device).contiguous(memory_format=fmt)
            x.requires_grad_(True)

            def step(conv: nn.Module = conv, x: torch.Tensor = x) -> None:
                with torch.autocast(
                    torch.device(device).type,
                    dtype=dtype or torch.float32,
                    enabled=dtype is not None,
                ):
                    y = conv(x)
                y.float().sum().backward()

            with FlopCounterMode(display=False) as counter:
                step()
            flops = counter.get_total_flops()
            t = bench(step, repeats=repeats, warmup=1, device=device)["median_s"]
            rates.append(
                {
                    "shape": f"N{n} {c}->{c} {k}x{k} @{hw}x{hw} {'channels_last' if cl else 'NCHW'}",
                    "gflops": flops / 1e9,
                    "median_s": t,
                    "gflop_per_s": flops / t / 1e9,
                }
            )
            del conv, x
    best = max(rates, key=lambda r: r["gflop_per_s"])
    return {
        "precision": precision,
        "best_gflop_per_s": best["gflop_per_s"],
        "best_shape": best["shape"],
        "all": rates,
    }


def bench_flop_rate(
    batch: int = 4,
    size: int = 256,
    depth: int = 7,
    precision: str = "bf16",
    channels_last: bool = True,
    repeats: int = 5,
    quick: bool = False,
    device: str | None = None,
) -> dict[str, Any]:
    """Achieved FLOP rate of the project's step as a fraction of the best large-conv rate."""
    device = device or default_device()
    step = project_step(batch, size, depth, precision, channels_last, device)
    step()  # warm-up (Adam state, oneDNN primitive caches)
    flops = count_step_flops(step)
    timing = bench(step, repeats=repeats, warmup=1, device=device)
    achieved = flops / timing["median_s"]
    peaks = {precision: bench_conv_peak(precision, max(2, repeats // 2), quick, device)}
    if precision != "fp32":
        peaks["fp32"] = bench_conv_peak("fp32", max(2, repeats // 2), quick, device)
    peak = peaks[precision]["best_gflop_per_s"] * 1e9
    return {
        "config": config_name(precision, channels_last),
        "step_gflops": flops / 1e9,
        "step_median_s": timing["median_s"],
        "achieved_gflop_per_s": achieved / 1e9,
        "conv_peak": peaks,
        "peak_gflop_per_s": peak / 1e9,
        "fraction_of_peak": achieved / peak,
        "fraction_of_fp32_peak": achieved / (peaks["fp32"]["best_gflop_per_s"] * 1e9),
    }


# ------------------------------------------------------------------ profile
_CATEGORIES = (
    ("convolution (oneDNN/cuDNN)", ("convolution", "conv2d", "mkldnn_conv", "cudnn_conv")),
    ("matmul (Gram)", ("bmm", "aten::mm", "addmm", "matmul")),
    ("batch norm", ("batch_norm",)),
    ("pooling / upsampling", ("pool", "upsample")),
    (
        "copies / layout / cat",
        ("copy_", "aten::cat", "_to_copy", "clone", "contiguous", "aten::to"),
    ),
    ("optimizer (Adam)", ("adam", "_foreach", "lerp", "addcdiv", "sqrt")),
)


def _category(name: str) -> str:
    lname = name.lower()
    for label, keys in _CATEGORIES:
        if any(k in lname for k in keys):
            return label
    return "elementwise / reductions / other"


def profile_training_step(
    batch: int = 4,
    size: int = 256,
    depth: int = 7,
    precision: str = "bf16",
    channels_last: bool = True,
    steps: int = 2,
    device: str | None = None,
    top: int = 15,
) -> dict[str, Any]:
    """Self time per op category and per op (torch.profiler, CPU), plus conv-only FLOP rate."""
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    device = device or default_device()
    step = project_step(batch, size, depth, precision, channels_last, device)
    step()
    step()
    with FlopCounterMode(display=False) as counter:
        step()
    conv_flops = sum(v for k, v in counter.get_flop_counts()["Global"].items() if "conv" in str(k))
    total_flops = counter.get_total_flops()
    activities = [ProfilerActivity.CPU]
    if str(device).startswith("cuda"):
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(device)
    events = prof.key_averages()
    attr = "self_device_time_total" if str(device).startswith("cuda") else "self_cpu_time_total"
    per_op = sorted(
        ((e.key, getattr(e, attr) / steps / 1e6, e.count // steps) for e in events),
        key=lambda t: -t[1],
    )
    total = sum(t for _, t, _ in per_op)
    cats: dict[str, float] = defaultdict(float)
    for name, t, _ in per_op:
        cats[_category(name)] += t
    conv_time = cats["convolution (oneDNN/cuDNN)"]
    return {
        "config": config_name(precision, channels_last),
        "profiled_step_s": total,
        "categories": {
            k: {"s": v, "share": v / total} for k, v in sorted(cats.items(), key=lambda kv: -kv[1])
        },
        "top_ops": [{"op": n, "s": t, "share": t / total, "calls": c} for n, t, c in per_op[:top]],
        "conv_gflops": conv_flops / 1e9,
        "conv_flop_share": conv_flops / total_flops,
        "conv_gflop_per_s_inside_convs": conv_flops / conv_time / 1e9 if conv_time else None,
    }


# ------------------------------------------------------------------ figure 4
def peak_rss_training_step(
    batch: int = 4,
    size: int = 256,
    depth: int = 7,
    precision: str = "bf16",
    channels_last: bool = True,
    design: str = "project",
) -> dict[str, Any]:
    """Peak RSS of one steady-state step (run in a fresh process: see common.run_in_subprocess)."""
    setup_torch()
    if design == "project":
        step = project_step(batch, size, depth, precision, channels_last, "cpu")
    else:
        step = original_step(batch, size, depth, "cpu")
    step()  # first step allocates Adam state and caches
    before = current_rss_bytes()
    reset_ok = reset_peak_rss()
    step()
    return {
        "design": design,
        "batch": batch,
        "size": size,
        "config": config_name(precision, channels_last) if design == "project" else "fp32, NCHW",
        "rss_before_step_bytes": before,
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_is_step_only": reset_ok,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    setup_torch()
    size, batch = (128, 2) if args.quick else (256, 4)
    repeats = args.repeats or (2 if args.quick else 5)
    out = {"throughput": bench_training_throughput(batch, size, repeats=repeats)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
