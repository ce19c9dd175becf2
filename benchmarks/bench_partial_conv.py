"""Benchmark PartialConv2d forward+backward against nn.Conv2d and the dense-mask approach.

Shape (issue 3): 512 -> 512 channels, 3x3, 32x32, batch 8, CPU. The three variants are timed in
interleaved rounds, so a load spike from other processes hits all of them alike. Reported per
variant: median wall-clock ms, median process CPU ms (robust to being descheduled on a shared
machine), and the median over rounds of the per-round wall-clock ratio to nn.Conv2d (each ratio
compares runs seconds apart, under the same load). Target: PartialConv2d <= 1.15x nn.Conv2d.

Run:  python benchmarks/bench_partial_conv.py [--repeats 7] [--threads N]
Writes a markdown table to stdout and JSON to benchmarks/results/partial_conv.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from aerial_inpainting.pconv.partial_conv import PartialConv2d

RESULTS = Path(__file__).resolve().parent / "results" / "partial_conv.json"


class DensePartialConv2d(nn.Module):
    """The public approach: sum(M) by a C_out x C_in x k x k convolution of a C_in-channel mask,
    bias removed and re-added around the ratio. Written here only as a speed baseline."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        k = conv.kernel_size
        self.register_buffer("ones", torch.ones(conv.out_channels, conv.in_channels, *k))
        self.window = conv.in_channels * k[0] * k[1]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            update = F.conv2d(mask, self.ones, None, self.conv.stride, self.conv.padding)
            ratio = self.window / (update + 1e-8)
            update = update.clamp(0, 1)
            ratio = ratio * update
        raw = self.conv(x * mask)
        bias = self.conv.bias.view(1, -1, 1, 1)
        out = ((raw - bias) * ratio + bias) * update
        return out, update


def make_mask(batch: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Random rectangles of holes covering roughly a third of the image."""
    mask = torch.ones(batch, 1, size, size)
    for b in range(batch):
        for _ in range(3):
            h, w = torch.randint(size // 4, size // 2, (2,), generator=generator).tolist()
            top, left = torch.randint(0, size - max(h, w), (2,), generator=generator).tolist()
            mask[b, :, top : top + h, left : left + w] = 0.0
    return mask


def time_once(step: Callable[[], None]) -> tuple[float, float]:
    """(wall-clock ms, process CPU ms) of one call."""
    start, start_cpu = time.perf_counter(), time.process_time()
    step()
    return (time.perf_counter() - start) * 1000.0, (time.process_time() - start_cpu) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--kernel", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    c, k = args.channels, args.kernel
    conv = nn.Conv2d(c, c, k, padding=k // 2)
    pconv = PartialConv2d(c, c, k)
    with torch.no_grad():
        pconv.weight.copy_(conv.weight)
        pconv.bias.copy_(conv.bias)
    dense = DensePartialConv2d(nn.Conv2d(c, c, k, padding=k // 2))
    dense.conv.load_state_dict(conv.state_dict())

    x = torch.randn(args.batch, c, args.size, args.size, generator=gen).requires_grad_(True)
    mask = make_mask(args.batch, args.size, gen)
    dense_mask = mask.expand(-1, c, -1, -1).contiguous()
    grad = torch.randn(args.batch, c, args.size, args.size, generator=gen)

    def run_conv() -> None:
        conv(x).backward(grad)

    def run_pconv() -> None:
        pconv(x, mask)[0].backward(grad)

    def run_dense() -> None:
        dense(x, dense_mask)[0].backward(grad)

    variants = {
        "nn.Conv2d": run_conv,
        "PartialConv2d (this project)": run_pconv,
        "dense-mask partial conv (public approach)": run_dense,
    }
    for step in variants.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpu_times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for round_index in range(args.repeats):
        shift = round_index % len(names)  # rotate the order: no variant always runs first
        for name in names[shift:] + names[:shift]:
            wall, cpu = time_once(variants[name])
            times[name].append(wall)
            cpu_times[name].append(cpu)

    base_name = "nn.Conv2d"
    rows = []
    for name in variants:
        round_ratios = [t / b for t, b in zip(times[name], times[base_name], strict=True)]
        rows.append(
            {
                "variant": name,
                "median_ms": statistics.median(times[name]),
                "min_ms": min(times[name]),
                "median_cpu_ms": statistics.median(cpu_times[name]),
                "ratio_vs_conv2d": statistics.median(round_ratios),
                "ratio_of_medians": statistics.median(times[name])
                / statistics.median(times[base_name]),
                "cpu_ratio_vs_conv2d": statistics.median(cpu_times[name])
                / statistics.median(cpu_times[base_name]),
                "all_ms": times[name],
                "all_cpu_ms": cpu_times[name],
            }
        )
    print(
        f"PartialConv2d forward+backward, {c}->{c}, {k}x{k}, {args.size}x{args.size}, "
        f"batch {args.batch}, CPU, {torch.get_num_threads()} threads, {args.repeats} rounds\n"
    )
    print(
        "| variant | median ms | min ms | median CPU ms | vs nn.Conv2d (median per-round ratio) |"
    )
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['variant']} | {row['median_ms']:.1f} | {row['min_ms']:.1f} | "
            f"{row['median_cpu_ms']:.1f} | {row['ratio_vs_conv2d']:.3f}x |"
        )
    ratio = rows[1]["ratio_vs_conv2d"]
    print(f"\nTarget <= 1.15x nn.Conv2d: {'met' if ratio <= 1.15 else 'NOT met'} ({ratio:.3f}x)")

    result = {
        "benchmark": "partial_conv_forward_backward",
        "shape": {
            "batch": args.batch,
            "in_channels": c,
            "out_channels": c,
            "kernel": k,
            "height": args.size,
            "width": args.size,
        },
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "hole_ratio": float(1 - mask.mean()),
        "results": rows,
        "target_ratio": 1.15,
        "target_met": ratio <= 1.15,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
