"""Paired margins of the model over a baseline, from `evaluate`'s per-image table.

For every image of ``evaluation_per_image.csv`` (written by ``kedro run --pipelines=evaluate``)
the model's PSNR, SSIM and LPIPS minus the baseline's on the same image and mask: the mean
difference, its standard error (std / sqrt(n)) and the share of images the model wins (higher
PSNR/SSIM, lower LPIPS), overall and per hole-ratio bucket. Several runs can be given, each as
``LABEL=PATH``, and are written to one JSON file::

    python benchmarks/paired_margins.py \
        "without VGG=data/08_reporting/evaluation_per_image.csv/<version>/evaluation_per_image.csv" \
        --out benchmarks/results/paired.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from aerial_inpainting.evaluation import report


def paired_margins(per_image: pd.DataFrame, model: str, baseline: str) -> dict:
    """Mean paired difference (model - baseline), its standard error and the win share, as
    :func:`aerial_inpainting.evaluation.report.paired_margins` computes them (the evaluate
    pipeline's report), rounded into this script's JSON layout."""
    table = report.paired_margins(per_image, baseline, model=model)
    overall = table[table["group_type"] == "overall"]
    out: dict = {"n": int(overall["n"].max()) if len(overall) else 0, "overall": {}, "buckets": {}}
    for _, row in overall.iterrows():
        out["overall"][row["metric"]] = {
            "model": round(float(row["model"]), 4),
            "baseline": round(float(row["baseline_mean"]), 4),
            "diff": round(float(row["diff"]), 4),
            "stderr": round(float(row["stderr"]), 4),
            "won": round(float(row["won"]), 3),
        }
    for _, row in table[table["group_type"] == "bucket"].iterrows():
        out["buckets"].setdefault(str(row["group"]), {})[row["metric"]] = round(
            float(row["diff"]), 4
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="LABEL=PATH of an evaluation_per_image.csv")
    parser.add_argument("--model", default="model", help="method name of the model")
    parser.add_argument("--baseline", default="telea", help="method name of the baseline")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    results = {}
    for run in args.runs:
        label, sep, path = run.rpartition("=")
        if not sep or not Path(path).is_file():
            parser.error(f"{run!r}: expected LABEL=PATH of an existing evaluation_per_image.csv")
        per_image = pd.read_csv(path)
        results[label] = paired_margins(per_image, args.model, args.baseline)
        print(f"{label} (n={results[label]['n']}), {args.model} - {args.baseline}:")
        for metric, row in results[label]["overall"].items():
            print(
                f"  {metric}: {row['model']} vs {row['baseline']}, "
                f"{row['diff']:+.4f} ± {row['stderr']:.4f}, won {row['won']:.0%}"
            )
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
