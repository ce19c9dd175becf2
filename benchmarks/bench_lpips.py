"""LPIPS's share of the evaluation, in CPU seconds: robust to a shared, overloaded machine.

``bench_evaluate.py`` times the whole evaluation on the wall clock, which means nothing while
other jobs hold the cores. This script measures the CPU time (``time.process_time``, one
PyTorch thread) of LPIPS's work per image, the backbone features of ``--n`` images (the
composites of one method; the ground truth costs the same and is computed once per image), and
projects what LPIPS adds to an evaluation of ``--n-images`` test images with the model and every
baseline (biharmonic on ``--biharmonic-sample``) on ``--cores`` idle cores.

    python benchmarks/bench_lpips.py --images-dir ../shared/data/skyview-dev [--net alex]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from benchmarks.bench_evaluate import load_images, make_masks
from benchmarks.common import RESULTS_DIR, machine_info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-dir", default=None)
    parser.add_argument("--net", default="alex")
    parser.add_argument("--n", type=int, default=64, help="images timed")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--n-images", type=int, default=1200)
    parser.add_argument("--biharmonic-sample", type=int, default=100)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    from aerial_inpainting.evaluation.perceptual import LPIPSScorer

    torch.set_num_threads(1)
    images, source = load_images(args.n, args.size, args.images_dir, 0)
    masks = make_masks(args.n, args.size, 0)
    comp = np.where(masks[..., None], images, 255 - images)  # any fill: same cost
    scorer = LPIPSScorer(args.net)
    gt = scorer.features(images[:4])  # warm-up
    gt = scorer.features(images)
    cpu = []
    for _ in range(args.repeats):
        start = time.process_time()
        scorer.distance(scorer.features(comp), gt)
        cpu.append(time.process_time() - start)
    per_image = float(np.median(cpu)) / args.n
    forwards = args.n_images * 4 + args.biharmonic_sample + args.n_images  # methods + truth
    result = {
        "command": " ".join(["python", "benchmarks/bench_lpips.py", *sys.argv[1:]]),
        "machine": machine_info(),
        "image_source": source,
        "net": args.net,
        "cpu_s_per_image": per_image,
        "cpu_s_runs": cpu,
        "backbone_forwards": forwards,
        "projected_cpu_s": per_image * forwards,
        "projected_wall_s_on_idle_cores": per_image * forwards / args.cores,
        "cores": args.cores,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"lpips_{args.net}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
