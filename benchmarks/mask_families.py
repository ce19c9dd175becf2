"""Robustness to the mask family: a model's margin over OpenCV Telea on masks of other families.

The model is trained on masks drawn on the fly from the broad family of
``data_processing.masks.shapes``; an independent evaluation will use masks this project does
not have. This script scores a trained model against Telea on the **test split** with, per
family, one fixed seeded mask per test image (hole ratios spread evenly over the six buckets,
as the test masks):

* ``broad``: the project's own test-mask family (``data_processing.masks.shapes``);
* ``classic``: strokes, circles and ellipses only, the family of the original design and of
  this project before the broad generator (``MaskShapeConfig()`` defaults);
* ``strokes``: thin-to-thick strokes only (the paper's free-form kind);
* ``compact``: rectangles and blobs only (large compact holes).

Each is scored with the functions of the ``evaluate`` pipeline (``predict_images``,
``compute_metrics`` with the Telea baseline) and reported as paired margins (mean difference
over the same images, standard error, share won), overall and by bucket.

Run from the project root after a training run (default: the latest versioned model):

    python benchmarks/mask_families.py [--env cpu_real] [--model PATH]

Writes ``benchmarks/results/mask_families.json`` and prints a Markdown table. About two minutes
per family on 2 cores (1,140 test images).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_vs_time import ROOT, paired_margins

FAMILY_SEED = 2024  # the families' own mask seed, independent of data_processing.masks.seed


def families(broad: dict[str, Any]) -> dict[str, Any]:
    from aerial_inpainting.imaging.masks import MaskShapeConfig

    return {
        "broad": MaskShapeConfig.from_params(broad),
        "classic": MaskShapeConfig(),
        "strokes": MaskShapeConfig(
            stroke_thickness=(0.01, 0.12),
            circle_count=(0, 0),
            ellipse_count=(0, 0),
            kinds=("stroke",),
        ),
        "compact": MaskShapeConfig(
            stroke_count=(0, 0),
            circle_count=(0, 0),
            ellipse_count=(0, 0),
            rectangle_count=(1, 1),
            blob_count=(0, 1),
            kinds=("rectangle", "blob"),
        ),
    }


def family_masks(n: int, size: int, config: Any, stream: int) -> tuple[np.ndarray, list[str]]:
    """n masks (bool, True = valid) with buckets balanced over a seeded order, and the buckets."""
    from aerial_inpainting.imaging.buckets import BUCKET_LABELS
    from aerial_inpainting.imaging.masks import mask_in_bucket, mask_rng

    order = np.random.default_rng([FAMILY_SEED, stream, 2**31]).permutation(n)
    buckets = [""] * n
    for position, item in enumerate(order):
        buckets[item] = BUCKET_LABELS[position % len(BUCKET_LABELS)]
    masks = np.stack(
        [mask_in_bucket(size, b, mask_rng(FAMILY_SEED, stream, k), config) > 0
         for k, b in enumerate(buckets)]
    )  # fmt: skip
    return masks, buckets


def main(argv: list[str] | None = None) -> int:
    import torch
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from aerial_inpainting.pconv.checkpoint import load_model
    from aerial_inpainting.pipelines.evaluate.nodes import compute_metrics, predict_images

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default=None)
    parser.add_argument("--model", type=Path, default=None, help="model file (default: catalog)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/mask_families.json")
    args = parser.parse_args(argv)

    bootstrap_project(ROOT)
    with KedroSession.create(project_path=ROOT, env=args.env) as session:
        context = session.load_context()
        catalog = context.catalog
        images = catalog.load("images")
        test = catalog.load("test_split").sort_values("row").reset_index(drop=True)
        model = load_model(args.model) if args.model else catalog.load("model")
        params = {**context.params["evaluate"], "baselines": ["telea"], "progress_bar": False}
        broad = context.params["data_processing"]["masks"]["shapes"]
    test_images = np.asarray(images[test["row"].to_numpy()])
    results: dict[str, Any] = {}
    for stream, (name, config) in enumerate(families(broad).items()):
        masks, buckets = family_masks(len(test), test_images.shape[1], config, stream)
        evaluation_set = test[["image_id", "class_name", "row"]].assign(
            mask_id=[f"{name}_{k:05d}" for k in range(len(test))],
            hole_ratio=1 - masks.mean(axis=(1, 2)),
            bucket=buckets,
        )
        outputs = predict_images(
            model, test_images, masks, torch.device("cpu"), int(params["batch_size"]),
            channels_last=bool(params["channels_last"]), progress=False,
        )  # fmt: skip
        per_image = compute_metrics(images, evaluation_set, masks, outputs, params)
        results[name] = paired_margins(per_image)
        r = results[name]
        print(
            f"{name:8s}: PSNR {r['model_psnr']:.2f} vs Telea {r['telea_psnr']:.2f} "
            f"({r['margin_psnr']:+.2f} ± {r['margin_psnr_se']:.2f} dB, won {r['won_psnr']:.0%}), "
            f"SSIM {r['model_ssim']:.4f} vs {r['telea_ssim']:.4f} "
            f"({r['margin_ssim']:+.4f} ± {r['margin_ssim_se']:.4f}, won {r['won_ssim']:.0%})",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"env": args.env, "families": results}, indent=2))
    print(
        "| family | PSNR | Telea | margin (± s.e.) | won | SSIM | Telea | margin (± s.e.) | won |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(
            f"| {name} | {r['model_psnr']:.2f} | {r['telea_psnr']:.2f} | "
            f"{r['margin_psnr']:+.2f} ± {r['margin_psnr_se']:.2f} | {r['won_psnr']:.0%} | "
            f"{r['model_ssim']:.4f} | {r['telea_ssim']:.4f} | "
            f"{r['margin_ssim']:+.4f} ± {r['margin_ssim_se']:.4f} | {r['won_ssim']:.0%} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
