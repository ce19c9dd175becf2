"""Every classical baseline and a model on a seeded sample of a project's test split.

A quick real-data check of the ``evaluate`` pipeline's baselines (PatchMatch among them)
without a Kedro run: reads the processed test split of a project's ``data/`` folder (the
latest version of ``test_split.csv``, ``test_mask_index.csv`` and ``test_masks``, and
``03_primary/images.npy``), draws ``--n-images`` of its images with the pipeline's seeded
sample (:func:`~aerial_inpainting.pipelines.evaluate.nodes.seeded_sample`), and scores the
model and every baseline on all of them with the pipeline's own nodes and the parameters of
``conf/base/parameters_evaluate.yml`` (slow baselines not sub-sampled again). Prints and
writes to ``--out`` each method's mean PSNR/SSIM/LPIPS and the paired margins of the model,
and of PatchMatch, over Telea; ``--figure`` draws the pipeline's ``evaluation_examples`` of
the sample (not for committing when the photographs may not be redistributed)::

    python benchmarks/baselines_sample.py --data-dir ../main/data --n-images 50 \
        --out benchmarks/results/baselines_sample.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from aerial_inpainting.datasets import read_binary_mask
from aerial_inpainting.evaluation import report
from aerial_inpainting.pipelines.evaluate import nodes
from aerial_inpainting.pretrained_model import load_pretrained

ROOT = Path(__file__).resolve().parent.parent


def _latest(path: Path) -> Path:
    """The newest version of a versioned dataset ``path/<version>/<name>``, else ``path``."""
    if path.is_dir() and not (path / path.name).exists():
        versions = sorted(p for p in path.iterdir() if (p / path.name).exists())
        if versions:
            return versions[-1] / path.name
    return path


def load_test_split(data_dir: Path) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame, dict]:
    """images (memory map), test split, mask index and masks {mask_id: uint8, 1 = valid}."""
    images = np.load(data_dir / "03_primary" / "images.npy", mmap_mode="r")
    split = pd.read_csv(_latest(data_dir / "05_model_input" / "test_split.csv"))
    index = pd.read_csv(_latest(data_dir / "04_feature" / "test_mask_index.csv"))
    folder = _latest(data_dir / "04_feature" / "test_masks")
    masks = {p.stem: read_binary_mask(p) for p in sorted(folder.glob("*.png"))}
    return images, split, index, masks


def run(args: argparse.Namespace) -> dict:
    params = yaml.safe_load((ROOT / "conf/base/parameters_evaluate.yml").read_text())["evaluate"]
    params |= {
        "device": "cpu",
        "num_workers": args.workers,
        "progress_bar": True,
        "biharmonic_sample": None,  # the sample drawn here is the one every method runs on
        "patchmatch_sample": None,
        "seed": args.seed,
    }
    images, split, index, masks = load_test_split(args.data_dir)
    evaluation_set, evaluation_masks = nodes.prepare_evaluation_set(split, index, masks)
    keep = nodes.seeded_sample(len(evaluation_set), args.n_images, args.seed)
    evaluation_set = evaluation_set.iloc[keep].reset_index(drop=True)
    evaluation_masks = evaluation_masks[keep]
    model = load_pretrained()
    start = time.perf_counter()
    outputs = nodes.predict_test_images(model, images, evaluation_set, evaluation_masks, params)
    per_image = nodes.compute_metrics(images, evaluation_set, evaluation_masks, outputs, params)
    seconds = time.perf_counter() - start
    if args.figure is not None:
        figure = nodes.plot_evaluation_examples(
            images, evaluation_set, evaluation_masks, outputs, per_image, params
        )
        figure.savefig(args.figure, dpi=100)
    summary = report.summarise(per_image)
    overall = summary[summary["group_type"] == "overall"].set_index("method")
    methods = {
        m: {k: round(float(overall.loc[m, f"{k}_mean"]), 4) for k in ("psnr", "ssim", "lpips")}
        for m in overall.index
    }
    margins = {}
    for ours, theirs in [("model", m) for m in methods if m != "model"] + [("patchmatch", "telea")]:
        if ours not in methods or theirs not in methods:
            continue
        table = report.paired_margins(per_image, theirs, model=ours)
        table = table[table["group_type"] == "overall"].set_index("metric")
        margins[f"{ours} - {theirs}"] = {
            metric: {k: round(float(row[k]), 4) for k in ("diff", "stderr", "won")}
            for metric, row in table.iterrows()
        }
    return {
        "command": "python " + " ".join(sys.argv),
        "data_dir": str(args.data_dir),
        "n_images": len(evaluation_set),
        "seed": args.seed,
        "model": "shipped (pretrained) model",
        "patchmatch_patch_size": params["patchmatch_patch_size"],
        "lpips_net": params["lpips_net"],
        "seconds": round(seconds, 1),
        "methods": methods,
        "paired_margins": margins,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data")
    parser.add_argument("--n-images", type=int, default=50)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--figure", type=Path, default=None, help="evaluation_examples figure of the sample (PNG)"
    )
    args = parser.parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
