"""The shipping step (issue 25): does a model a GPU run returned replace the shipped one?

First evaluate both on the test split, each with the project's evaluate pipeline::

    kedro run --pipelines=evaluate --params evaluate.model=data/06_models/gpu/model-pushpull.safetensors
    kedro run --pipelines=evaluate --params evaluate.model=pretrained

then compare the two per-image tables (``data/08_reporting/evaluation_per_image.csv/<version>/``)::

    python benchmarks/gpu/ship.py CANDIDATE_CSV SHIPPED_CSV --out benchmarks/results/gpu_ship.json

Paired over the same images and masks, the candidate must beat OpenCV's Telea **and** the
shipped model on PSNR, SSIM and LPIPS, each by more than two standard errors of the paired
difference. Only then does it print the command that makes it the shipped model
(``python -m aerial_inpainting.pretrained_model build FILE [--name NAME]``; MODEL_CARD.md is
then updated from these figures). Exit status 0 when it ships, 1 when it does not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

METRICS = {"psnr": 1, "ssim": 1, "lpips": -1}  # +1: higher is better


def paired(ours: pd.Series, theirs: pd.Series, sign: int) -> dict[str, float]:
    """Mean paired difference, its standard error and the share won, over shared images."""
    diff = (ours - theirs.reindex(ours.index)).dropna()
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
    mean = float(diff.mean())
    return {
        "diff": round(mean, 4),
        "stderr": round(se, 4),
        "won": round(float((sign * diff > 0).mean()), 3),
        "beats": bool(sign * mean > 2 * se),
        "n": len(diff),
    }


def decide(candidate: pd.DataFrame, shipped: pd.DataFrame) -> dict:
    """The candidate's margins over Telea and over the shipped model, and the verdict."""
    ours = candidate[candidate.method == "model"].set_index("mask_id")
    references = {
        "telea": candidate[candidate.method == "telea"].set_index("mask_id"),
        "shipped": shipped[shipped.method == "model"].set_index("mask_id"),
    }
    result: dict = {}
    for name, theirs in references.items():
        result[name] = {
            metric: paired(ours[metric], theirs[metric], sign)
            for metric, sign in METRICS.items()
            if metric in ours and not ours[metric].isna().all()
        }
    complete = all(len(result[name]) == len(METRICS) for name in references)
    result["ships"] = complete and all(r["beats"] for n in references for r in result[n].values())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("candidate", type=Path, help="evaluation_per_image.csv of the candidate")
    parser.add_argument("shipped", type=Path, help="evaluation_per_image.csv of the shipped model")
    parser.add_argument("--model-file", default="MODEL_FILE", help="the candidate's model file")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    for path in (args.candidate, args.shipped):
        if not path.is_file():
            parser.error(f"{path}: no such evaluation_per_image.csv")
    result = decide(pd.read_csv(args.candidate), pd.read_csv(args.shipped))
    for name in ("telea", "shipped"):
        for metric, row in result[name].items():
            print(
                f"candidate - {name} {metric}: {row['diff']:+.4f} ± {row['stderr']:.4f} "
                f"(won {row['won']:.0%}, n={row['n']}){'' if row['beats'] else '  <- not beaten'}"
            )
    if result["ships"]:
        print(f"ships: python -m aerial_inpainting.pretrained_model build {args.model_file}")
    else:
        print("does not ship: it must beat Telea and the shipped model on PSNR, SSIM and LPIPS")
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["ships"] else 1


if __name__ == "__main__":
    sys.exit(main())
