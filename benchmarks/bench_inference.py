"""Inference benchmarks: batched throughput at 256x256 and the latency of one 1024x1024 image.

* :func:`bench_batch_throughput`: images/s of ``PConvUNet`` (eval mode, ``torch.inference_mode``)
  at batch 16, 256x256, in each precision/layout, and of the original design, timed round-robin.
* :func:`bench_large_image`: seconds for one 1024x1024 image through
  :func:`aerial_inpainting.inference.inpaint_image` (the user-facing path: padding, the model,
  compositing), or a plain model forward when that function is not available.

Run alone: ``python benchmarks/bench_inference.py [--quick]`` (prints JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_training import (
    PRECISIONS,
    config_name,
    default_device,
    make_batch,
    project_configs,
)
from benchmarks.common import bench, bench_interleaved, setup_torch
from benchmarks.original_design import OriginalPConvUNet


def _project_unet(depth: int, channels_last: bool, device: str) -> nn.Module:
    from aerial_inpainting.pconv.unet import PConvUNet, UNetConfig

    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return PConvUNet(UNetConfig(depth=depth)).to(device=device, memory_format=fmt).eval()


class _Forward:
    """Inference forward of one model on fixed inputs (inference_mode, optional autocast)."""

    def __init__(
        self, model: nn.Module, images: torch.Tensor, masks: torch.Tensor, precision: str
    ) -> None:
        self.model, self.images, self.masks = model, images, masks
        self.dtype = PRECISIONS[precision]
        self.device_type = images.device.type

    def __call__(self) -> None:
        with (
            torch.inference_mode(),
            torch.autocast(
                self.device_type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None
            ),
        ):
            self.model(self.images * self.masks, self.masks)


def bench_batch_throughput(
    batch: int = 16,
    size: int = 256,
    depth: int = 7,
    repeats: int = 5,
    warmup: int = 1,
    device: str | None = None,
    include_original: bool = True,
) -> dict[str, Any]:
    """Images/s of every project configuration (and the original design) at ``batch`` x ``size``²."""
    device = device or default_device()
    images, masks = make_batch(batch, size, seed=1, device=device)
    models = {cl: _project_unet(depth, cl, device) for cl in (False, True)}
    fns: dict[str, Callable[[], Any]] = {}
    for precision, cl in project_configs(device):
        fmt = torch.channels_last if cl else torch.contiguous_format
        fns[config_name(precision, cl)] = _Forward(
            models[cl],
            images.contiguous(memory_format=fmt),
            masks.contiguous(memory_format=fmt),
            precision,
        )
    if include_original:
        torch.manual_seed(0)
        original = OriginalPConvUNet(depth=depth).to(device).eval()
        fns["original design (fp32, NCHW)"] = _Forward(original, images, masks, "fp32")
    timings = bench_interleaved(fns, repeats=repeats, warmup=warmup, device=device)
    project = {k: v for k, v in timings.items() if not k.startswith("original")}
    best = min(project, key=lambda k: project[k]["median_s"])
    result: dict[str, Any] = {
        "device": str(device),
        "batch": batch,
        "size": size,
        "configs": {k: {**v, "images_per_s": batch / v["median_s"]} for k, v in timings.items()},
        "best_config": best,
        "best_images_per_s": batch / project[best]["median_s"],
    }
    if include_original:
        orig = timings["original design (fp32, NCHW)"]["median_s"]
        result["original_images_per_s"] = batch / orig
        result["speedup_best_vs_original"] = orig / project[best]["median_s"]
    return result


def bench_large_image(
    size: int = 1024,
    depth: int = 7,
    repeats: int = 3,
    warmup: int = 1,
    device: str | None = None,
) -> dict[str, Any]:
    """Seconds for one ``size`` x ``size`` RGB image with a ~25 % hole mask."""
    device = device or default_device()
    model = _project_unet(depth, False, device)
    images, masks = make_batch(1, size, seed=2)
    rgb = (images[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    valid = masks[0, 0].numpy().astype(bool)
    try:
        from aerial_inpainting.inference import inpaint_image
    except ImportError:
        inpaint_image = None
    if inpaint_image is not None:
        path = "aerial_inpainting.inference.inpaint_image (fp32)"

        def fn() -> None:
            inpaint_image(model, rgb, valid, device=device, progress=False)

    else:  # fall back on the bare model on a tensor of an admissible size
        path = "PConvUNet forward (fp32, inference_mode)"
        fn = _Forward(model, images.to(device), masks.to(device), "fp32")
    timing = bench(fn, repeats=repeats, warmup=warmup, device=device)
    return {"device": str(device), "size": size, "path": path, **timing}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    setup_torch()
    repeats = args.repeats or (2 if args.quick else 5)
    batch, large = (4, 512) if args.quick else (16, 1024)
    out = {
        "batch": bench_batch_throughput(batch=batch, repeats=repeats),
        "large_image": bench_large_image(size=large, repeats=max(1, repeats - 1)),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
