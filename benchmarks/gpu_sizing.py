"""How many training steps of `kedro run --env=gpu` fit in a wall-time budget on one GPU.

Without a measured GPU step time, the step time is estimated from the FLOP count of one
training step at the GPU configuration (256x256, depth 7, 64-512 channels, the full loss with
VGG-16; ``FlopCounterMode``, split into loss and U-Net as in ``bench_training_step.py``) and a
GPU's published dense tensor throughput times an assumed utilisation:

    step_s = FLOP per step / (peak FLOP/s x utilisation)
    steps  = budget_minutes x 60 / step_s, split between the two stages in the paper's 5:2

With ``--step-ms`` (e.g. the ``sizing.step_s`` that ``benchmarks/gpu_check.py`` measures on a
GPU) the measured step time replaces the estimate. FLOPs are counted on the CPU at
``--count-batch`` images and scaled linearly to ``--batch`` (convolutions, matrix products and
the Gram matrices are all linear in the batch).

    python benchmarks/gpu_sizing.py [--peak-tflops 989] [--utilisation 0.10] [--minutes 110]

Defaults: NVIDIA H100 SXM5's dense BF16 tensor throughput, 989 TFLOP/s (the H200's is the
same; its datasheet's 1,979 assumes 2:4 sparsity); 10 % of it sustained (an assumption, see
the README's benchmark section); 110 minutes of training in a two-hour run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS_DIR, setup_torch

SKYVIEW_TRAIN_IMAGES = 10_800  # 15 classes x 800, 90 % train (data_processing.split)


def count_flops(batch: int, size: int, depth: int) -> dict[str, float]:
    """GFLOP of one project training step (fp32 NCHW, random VGG-16) and of its loss alone."""
    from benchmarks.bench_training import count_step_flops, project_step
    from benchmarks.bench_training_step import loss_flops

    step = project_step(batch, size, depth, "fp32", False, "cpu")
    total, loss = count_step_flops(step), loss_flops(step)
    return {"step": total / 1e9, "loss": loss / 1e9, "unet": (total - loss) / 1e9}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16, help="training.batch_size of conf/gpu")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--depth", type=int, default=7)
    parser.add_argument("--count-batch", type=int, default=2, help="batch the FLOPs are counted at")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--utilisation", type=float, default=0.10)
    parser.add_argument("--minutes", type=float, default=110.0, help="training wall time")
    parser.add_argument("--step-ms", type=float, default=None, help="a measured step time")
    parser.add_argument("--stage-ratio", default="5:2", help="steps_stage1 : steps_stage2")
    args = parser.parse_args(argv)
    setup_torch()
    t0 = time.perf_counter()
    counted = count_flops(args.count_batch, args.size, args.depth)
    scale = args.batch / args.count_batch
    gflop = {k: v * scale for k, v in counted.items()}
    if args.step_ms is None:
        step_s = gflop["step"] * 1e9 / (args.peak_tflops * 1e12 * args.utilisation)
        source = (
            f"estimate: {gflop['step']:.0f} GFLOP / ({args.peak_tflops:g} TFLOP/s x "
            f"{args.utilisation:.0%})"
        )
    else:
        step_s, source = args.step_ms / 1000, f"measured: {args.step_ms:g} ms per step"
    steps = int(args.minutes * 60 / step_s)
    a, b = (float(x) for x in args.stage_ratio.split(":"))
    stage1 = round(steps * a / (a + b), -3)
    stage2 = round(steps * b / (a + b), -3)
    result = {
        "command": " ".join(["python", "benchmarks/gpu_sizing.py", *sys.argv[1:]]),
        "batch": args.batch,
        "size": args.size,
        "depth": args.depth,
        "flops_counted_at_batch": args.count_batch,
        "gflop_counted": counted,
        "gflop_per_step": gflop,
        "gflop_per_image": gflop["step"] / args.batch,
        "peak_tflops": args.peak_tflops,
        "utilisation": args.utilisation,
        "step_time_source": source,
        "step_ms": step_s * 1000,
        "images_per_s": args.batch / step_s,
        "training_minutes": args.minutes,
        "steps_in_budget": steps,
        "steps_stage1": int(stage1),
        "steps_stage2": int(stage2),
        "passes_over_skyview_train": (stage1 + stage2) * args.batch / SKYVIEW_TRAIN_IMAGES,
        "minutes_for_paper_schedule_700k": 700_000 * step_s / 60,
        "counting_s": time.perf_counter() - t0,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "gpu_sizing.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
