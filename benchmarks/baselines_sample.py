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
the sample (not for committing when the photographs may not be redistributed; ``--synthetic``
scores the project's synthetic scenes instead, whose figure may be)::

    python benchmarks/baselines_sample.py --data-dir ../main/data --n-images 50 \
        --out benchmarks/results/baselines_sample.json
    python benchmarks/baselines_sample.py --synthetic --n-images 24 \
        --num-examples 1 --dpi 80 --palette \
        --figure docs/images/evaluation_examples_synthetic.png
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
from aerial_inpainting.imaging.buckets import BUCKET_LABELS
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


def synthetic_test_split(
    n: int, size: int, seed: int
) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame, dict]:
    """The same four inputs from the project's synthetic scenes (every class in turn) and
    masks drawn by the project's generator evenly over the six hole-ratio buckets:
    redistributable images, for figures that may be committed."""
    from aerial_inpainting.imaging.buckets import bucket_of
    from aerial_inpainting.imaging.masks import mask_in_bucket, mask_rng
    from aerial_inpainting.imaging.synthetic import SYNTHETIC_CLASSES, generate_scene, scene_rng

    classes = [SYNTHETIC_CLASSES[i % len(SYNTHETIC_CLASSES)] for i in range(n)]
    images = np.stack(
        [generate_scene(c, scene_rng(seed, c, i), size) for i, c in enumerate(classes)]
    )
    split = pd.DataFrame(
        {
            "image_id": [f"{c}_{i:03d}" for i, c in enumerate(classes)],
            "class_name": classes,
            "row": range(n),
        }
    )
    masks, index = {}, []
    for i, image_id in enumerate(split["image_id"]):
        mask = mask_in_bucket(size, BUCKET_LABELS[i % len(BUCKET_LABELS)], mask_rng(seed, 7, i))
        masks[f"test_{i:05d}"] = mask.astype(np.uint8)
        ratio = float((mask == 0).mean())
        index.append(
            {
                "mask_id": f"test_{i:05d}",
                "image_id": image_id,
                "hole_ratio": ratio,
                "bucket": bucket_of(ratio),
            }
        )
    return images, split, pd.DataFrame(index), masks


def run(args: argparse.Namespace) -> dict:
    params = yaml.safe_load((ROOT / "conf/base/parameters_evaluate.yml").read_text())["evaluate"]
    params |= {
        "device": "cpu",
        "num_workers": args.workers,
        "progress_bar": True,
        "biharmonic_sample": None,  # the sample drawn here is the one every method runs on
        "patchmatch_sample": None,
        "seed": args.seed,
        "num_examples": args.num_examples,
    }
    if args.synthetic:
        images, split, index, masks = synthetic_test_split(args.n_images, 256, args.seed)
    else:
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
        figure.savefig(args.figure, dpi=args.dpi)
        if args.palette:  # a 256-colour PNG: a third of the size, for figures kept in git
            from PIL import Image

            with Image.open(args.figure) as image:
                small = image.convert("RGB").quantize(256)
            small.save(args.figure, optimize=True)
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
        "data": "synthetic scenes" if args.synthetic else str(args.data_dir),
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
    parser.add_argument(
        "--synthetic",
        action="store_true",
        help="the project's synthetic scenes and generated masks instead of --data-dir",
    )
    parser.add_argument("--n-images", type=int, default=50)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--num-examples", type=int, default=3, help="best/median/worst each")
    parser.add_argument("--dpi", type=int, default=100, help="of --figure")
    parser.add_argument("--palette", action="store_true", help="--figure as a 256-colour PNG")
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
