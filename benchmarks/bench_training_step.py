"""Figure 1 alone, for a machine where the full sweep of run_all.py is too slow.

Times one training step (forward, loss with VGG-16, backward, Adam step) at 256x256, depth 7,
of this project (fp32, NCHW) and of the original design, one after the other in the same
process, ``--repeats`` times each (after one warm-up step), and writes the medians and their
ratio to ``benchmarks/results/training_step.json``. It also counts each step's FLOPs
(``FlopCounterMode``), split into the loss (VGG-16 forward and backward, which both designs pay
in full) and the U-Net, and the arithmetic rate the project's step would need to reach the
1.5x target: compare it with the machine's best large-conv rate (``run_all.py``, figure 2).

With ``--imagenet`` it also times the project's step with the paper's full loss on the real
ImageNet VGG-16 (``vgg_weights: imagenet``; the file of ``aerial-inpainting weights fetch``),
and that loss alone: same architecture as the random-init VGG, so the same cost is expected.

    python benchmarks/bench_training_step.py [--batch 4] [--size 256] [--repeats 3] [--imagenet]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.bench_training import count_step_flops, original_step, project_step
from benchmarks.common import RESULTS_DIR, machine_info, setup_torch

IMAGENET = "project, ImageNet VGG-16 loss (fp32, NCHW)"


class _LossOnly:
    """The step's loss and its backward on a fixed leaf output: the VGG-16 part of a step."""

    def __init__(self, step) -> None:
        self.step = step
        self.output = torch.rand_like(step.images).requires_grad_(True)

    def __call__(self) -> None:
        self.output.grad = None
        self.step.criterion(self.output, self.step.images, self.step.masks)["total"].backward()


def loss_flops(step) -> int:
    """FLOPs of the step's loss alone (forward + backward to the output), on a leaf output."""
    output = torch.rand_like(step.images).requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        step.criterion(output, step.images, step.masks)["total"].backward()
    return int(counter.get_total_flops())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--depth", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--imagenet", action="store_true", help="also time the step with real ImageNet VGG-16"
    )
    args = parser.parse_args(argv)
    threads = setup_torch()
    steps = {
        "project (fp32, NCHW)": project_step(args.batch, args.size, args.depth),
        "original design (fp32, NCHW)": original_step(args.batch, args.size, args.depth),
    }
    vgg_info: dict[str, str] = {}
    if args.imagenet:
        from aerial_inpainting.pconv.loss import InpaintingLoss
        from aerial_inpainting.pconv.vgg import build_vgg16_features

        extractor, vgg_info = build_vgg16_features("imagenet", offline_fallback="error")
        model = steps["project (fp32, NCHW)"].model
        torch.manual_seed(0)
        fresh = type(model)(model.config) if hasattr(model, "config") else model
        steps[IMAGENET] = project_step(
            args.batch,
            args.size,
            args.depth,
            model_and_loss=(fresh, InpaintingLoss(extractor.eval())),
        )
    # The loss alone (VGG-16 forward + backward to the output), the part both designs pay.
    loss_only = {f"loss of the {name}": _LossOnly(step) for name, step in steps.items()}
    timed = {**steps, **loss_only}
    times: dict[str, list[float]] = {name: [] for name in timed}
    for step in timed.values():  # warm-up
        step()
    for _ in range(args.repeats):  # round-robin, so drifts in machine load hit both alike
        for name, step in timed.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
            print(f"{name}: {times[name][-1]:.2f} s", file=sys.stderr, flush=True)
    medians = {name: statistics.median(t) for name, t in times.items()}
    flops = {}
    for name, step in steps.items():
        total, loss = count_step_flops(step), loss_flops(step)
        flops[name] = {
            "step_gflop": total / 1e9,
            "loss_gflop": loss / 1e9,
            "unet_gflop": (total - loss) / 1e9,
        }
    target_s = medians["original design (fp32, NCHW)"] / 1.5
    project_loss_s = medians["loss of the project (fp32, NCHW)"]
    result = {
        "command": " ".join(["python", "benchmarks/bench_training_step.py", *sys.argv[1:]]),
        "machine": machine_info(),
        "threads": threads,
        "vgg_info": vgg_info,
        "batch": args.batch,
        "size": args.size,
        "depth": args.depth,
        "times_s": times,
        "median_s": medians,
        "images_per_s": {name: args.batch / medians[name] for name in steps},
        "speedup_vs_original": medians["original design (fp32, NCHW)"]
        / medians["project (fp32, NCHW)"],
        "flops": flops,
        "project_gflop_per_s": flops["project (fp32, NCHW)"]["step_gflop"]
        / medians["project (fp32, NCHW)"],
        "gflop_per_s_needed_for_1.5x": flops["project (fp32, NCHW)"]["step_gflop"] / target_s,
        # Amdahl: the loss takes project_loss_s in any design; the U-Net shares the rest.
        "unet_seconds": {name: medians[name] - medians[f"loss of the {name}"] for name in steps},
        "speedup_ceiling_if_unet_were_free": medians["original design (fp32, NCHW)"]
        / project_loss_s,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "training_step.json").write_text(json.dumps(result, indent=1))
    keys = ("median_s", "images_per_s", "speedup_vs_original", "flops", "project_gflop_per_s",
            "gflop_per_s_needed_for_1.5x", "unet_seconds", "speedup_ceiling_if_unet_were_free")  # fmt: skip
    print(json.dumps({k: result[k] for k in keys}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
