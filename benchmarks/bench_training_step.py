"""Figure 1 alone, for a machine where the full sweep of run_all.py is too slow.

Times one training step (forward, loss with VGG-16, backward, Adam step) at 256x256, depth 7,
of this project (fp32, NCHW) and of the original design, one after the other in the same
process, ``--repeats`` times each (after one warm-up step), and writes the medians and their
ratio to ``benchmarks/results/training_step.json``.

    python benchmarks/bench_training_step.py [--batch 4] [--size 256] [--repeats 3]
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

from benchmarks.bench_training import original_step, project_step
from benchmarks.common import RESULTS_DIR, machine_info, setup_torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--depth", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    threads = setup_torch()
    steps = {
        "project (fp32, NCHW)": project_step(args.batch, args.size, args.depth),
        "original design (fp32, NCHW)": original_step(args.batch, args.size, args.depth),
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():  # warm-up
        step()
    for _ in range(args.repeats):  # round-robin, so drifts in machine load hit both alike
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
            print(f"{name}: {times[name][-1]:.2f} s", file=sys.stderr, flush=True)
    medians = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "command": " ".join(["python", "benchmarks/bench_training_step.py", *sys.argv[1:]]),
        "machine": machine_info(),
        "threads": threads,
        "batch": args.batch,
        "size": args.size,
        "depth": args.depth,
        "times_s": times,
        "median_s": medians,
        "images_per_s": {name: args.batch / m for name, m in medians.items()},
        "speedup_vs_original": medians["original design (fp32, NCHW)"]
        / medians["project (fp32, NCHW)"],
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "training_step.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("median_s", "images_per_s", "speedup_vs_original")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
