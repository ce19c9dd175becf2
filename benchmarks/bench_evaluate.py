"""Evaluation throughput: the model, every baseline and the metrics, per stage.

Target (issue 5): 1,200 test images at 256x256 on the CPU, model plus every metric, in under
2 minutes, with the biharmonic baseline on a sample (``evaluate.biharmonic_sample``, 100).

Each stage is timed on ``--n-images`` images (real SkyView images from ``--images-dir`` when
given, else seeded synthetic scenes; masks drawn by the project's generator, evenly over the
six hole-ratio buckets) as the median of ``--repeats`` runs after a warm-up, then projected to
``--target`` images (biharmonic to ``--biharmonic-sample``). Stages:

* ``model[...]``: ``predict_images`` (the pipeline's batched forward pass) with a randomly
  initialised PConvUNet: the paper-size default (depth 7, 64..512 channels) and the CPU-scale
  config the default training parameters produce (depth 5, 32..256);
* ``telea``, ``navier_stokes``, ``biharmonic``, ``mean_fill``: the baselines (one thread);
* ``metrics``: ``inpainting_metrics`` for one method (composite PSNR/SSIM, hole PSNR/L1), and
  ``metrics_raw`` with the extra raw-output SSIM the model gets; ``metrics_skimage`` is the same
  with scikit-image's reference functions, for comparison;
* ``scoring``: the ``compute_metrics`` node's path (``evaluation.scoring.score_chunks``): every
  baseline (biharmonic on its share of the sample) and every metric, on ``--workers`` processes.

Projected total = model stage + scoring stage, both scaled to ``--target`` images.

Run: ``python benchmarks/bench_evaluate.py [--n-images 64] [--repeats 3] [--device cpu]``.
Prints a Markdown table and writes ``benchmarks/results/evaluate.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aerial_inpainting.evaluation import baselines as bl
from aerial_inpainting.evaluation.metrics import inpainting_metrics
from aerial_inpainting.evaluation.scoring import (
    Chunk,
    resolve_workers,
    score_chunks,
    single_threaded,
)
from aerial_inpainting.imaging.buckets import BUCKET_LABELS
from aerial_inpainting.imaging.masks import mask_in_bucket, mask_rng
from aerial_inpainting.imaging.synthetic import SYNTHETIC_CLASSES, generate_scene, scene_rng
from aerial_inpainting.pconv.unet import PConvUNet, UNetConfig
from aerial_inpainting.pipelines.evaluate.nodes import (
    biharmonic_sample,
    predict_images,
    resolve_device,
)
from benchmarks.common import RESULTS_DIR, bench, machine_info, markdown_table, setup_torch

MODEL_CONFIGS = {
    "default (depth 7, 64-512 ch)": UNetConfig(),
    "cpu-scale (depth 5, 32-256 ch)": UNetConfig(depth=5, base_channels=32, max_channels=256),
}


def load_images(n: int, size: int, images_dir: str | None, seed: int) -> tuple[np.ndarray, str]:
    """``n`` uint8 (size, size, 3) images: SkyView JPEGs when a folder is given, else synthetic."""
    if images_dir:
        from PIL import Image

        files = sorted(Path(images_dir).rglob("*.jpg"))
        if not files:
            raise SystemExit(f"{images_dir}: no .jpg files found")
        picked = [files[i % len(files)] for i in range(n)]
        arrays = []
        for f in picked:
            with Image.open(f) as im:
                arrays.append(np.asarray(im.convert("RGB").resize((size, size))))
        return np.stack(arrays), f"{images_dir} ({len(files)} files)"
    classes = SYNTHETIC_CLASSES
    images = [
        generate_scene(
            classes[i % len(classes)], scene_rng(seed, classes[i % len(classes)], i), size
        )
        for i in range(n)
    ]
    return np.stack(images), "synthetic scenes"


def make_masks(n: int, size: int, seed: int) -> np.ndarray:
    """Masks (n, size, size), True = valid, evenly over the six hole-ratio buckets."""
    return np.stack(
        [
            mask_in_bucket(size, BUCKET_LABELS[i % 6], mask_rng(seed, 7, i)).astype(bool)
            for i in range(n)
        ]
    )


def _metrics_all(
    outputs: np.ndarray, images: np.ndarray, masks: np.ndarray, raw: bool, batch: int
) -> None:
    with single_threaded():
        for s in range(0, len(images), batch):
            out = torch.from_numpy(outputs[s : s + batch]).permute(0, 3, 1, 2)
            gt = torch.from_numpy(images[s : s + batch]).permute(0, 3, 1, 2)
            m = torch.from_numpy(masks[s : s + batch])[:, None]
            inpainting_metrics(out, gt, m, raw_ssim=raw)


def _metrics_skimage(outputs: np.ndarray, images: np.ndarray, masks: np.ndarray) -> None:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    for out, gt, m in zip(outputs, images, masks, strict=True):
        g = gt / 255.0
        comp = np.where(m[..., None], g, out / 255.0)
        peak_signal_noise_ratio(g, comp, data_range=1.0)
        structural_similarity(g, comp, channel_axis=-1, data_range=1.0)
        hole = ~m
        d = comp[hole] - g[hole]
        float(np.mean(d**2)), float(np.mean(np.abs(d)))


def _scoring(images, masks, outputs, in_sample, workers: int, batch: int) -> None:
    # Same chunking as the compute_metrics node.
    chunk = max(1, min(batch, math.ceil(len(images) / (4 * workers))))
    workers = min(workers, math.ceil(len(images) / chunk))
    chunks = (
        Chunk(
            positions=np.arange(s, min(s + chunk, len(images))),
            images=images[s : s + chunk],
            masks=masks[s : s + chunk],
            model_outputs=outputs[s : s + chunk],
            biharmonic=in_sample[s : s + chunk],
            methods=bl.BASELINES,
            params={"telea_radius": 3, "ns_radius": 3},
        )
        for s in range(0, len(images), chunk)
    )
    for _ in score_chunks(chunks, workers=workers):
        pass


def run(args: argparse.Namespace) -> dict[str, Any]:
    threads = setup_torch(args.threads)
    device = resolve_device(args.device)
    workers = resolve_workers(args.workers)
    images, source = load_images(args.n_images, args.size, args.images_dir, args.seed)
    masks = make_masks(args.n_images, args.size, args.seed)
    n_bih = max(1, round(args.n_images * args.biharmonic_sample / args.target))
    in_sample = np.zeros(args.n_images, dtype=bool)
    in_sample[biharmonic_sample(args.n_images, n_bih, args.seed)] = True
    stages: dict[str, dict[str, Any]] = {}

    def record(name: str, fn, n: int, projected_n: int, repeats: int) -> None:
        res = bench(fn, repeats=repeats, warmup=1, device=device)
        per_image = res["median_s"] / n
        stages[name] = {
            **res,
            "images": n,
            "images_per_s": 1.0 / per_image,
            "projected_images": projected_n,
            "projected_s": per_image * projected_n,
        }
        print(f"{name}: {1 / per_image:.1f} images/s", file=sys.stderr, flush=True)

    outputs = None
    for label, config in MODEL_CONFIGS.items():
        if args.skip_default_model and config == UNetConfig():
            continue
        torch.manual_seed(args.seed)
        model = PConvUNet(config).eval()
        record(
            f"model [{label}], {device}, {threads} threads",
            lambda model=model: predict_images(
                model, images, masks, device, args.batch_size, progress=True
            ),
            args.n_images,
            args.target,
            args.model_repeats,
        )
        outputs = predict_images(model, images, masks, device, args.batch_size, progress=True)
    assert outputs is not None
    # Single-process, single-thread cost of each piece (what one scoring worker does).
    for name in bl.BASELINES:
        fn = bl.get_baseline(name, {"telea_radius": 3, "ns_radius": 3})
        subset = in_sample if name == "biharmonic" else np.ones(args.n_images, dtype=bool)
        with single_threaded():
            record(
                f"{name} (1 thread)",
                lambda fn=fn, subset=subset: bl.inpaint_batch(fn, images[subset], masks[subset]),
                int(subset.sum()),
                args.biharmonic_sample if name == "biharmonic" else args.target,
                args.repeats,
            )
    record(
        "metrics, one method (1 thread)",
        lambda: _metrics_all(outputs, images, masks, False, args.metrics_batch_size),
        args.n_images,
        3 * args.target
        + args.biharmonic_sample,  # telea, navier_stokes, mean_fill + biharmonic sample
        args.repeats,
    )
    record(
        "metrics + raw SSIM, model (1 thread)",
        lambda: _metrics_all(outputs, images, masks, True, args.metrics_batch_size),
        args.n_images,
        args.target,
        args.repeats,
    )
    with single_threaded():
        record(
            "metrics, scikit-image reference (1 thread; not used)",
            lambda: _metrics_skimage(outputs, images, masks),
            args.n_images,
            0,
            args.repeats,
        )
    # The pipeline's compute_metrics path: every baseline + every metric, chunked over workers.
    record(
        f"scoring: all baselines + metrics, {workers} worker(s)",
        lambda: _scoring(images, masks, outputs, in_sample, workers, args.metrics_batch_size),
        args.n_images,
        args.target,
        args.repeats,
    )
    scoring = stages[f"scoring: all baselines + metrics, {workers} worker(s)"]["projected_s"]
    totals = {
        key: stage["projected_s"] + scoring
        for key, stage in stages.items()
        if key.startswith("model")
    }
    return {
        "machine": machine_info(),
        "device": str(device),
        "threads": threads,
        "workers": workers,
        "image_source": source,
        "size": args.size,
        "n_images_measured": args.n_images,
        "biharmonic_images_measured": int(in_sample.sum()),
        "target_images": args.target,
        "biharmonic_sample": args.biharmonic_sample,
        "batch_size": args.batch_size,
        "stages": stages,
        "projected_total_s": totals,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--target", type=int, default=1200)
    parser.add_argument("--biharmonic-sample", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--metrics-batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="PyTorch threads for the model")
    parser.add_argument("--workers", default="auto", help="scoring processes (auto: one per CPU)")
    parser.add_argument("--images-dir", default=None, help="e.g. ../shared/data/skyview-dev")
    parser.add_argument("--skip-default-model", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS_DIR / "evaluate.json"))
    args = parser.parse_args()
    result = run(args)
    rows = [
        [
            name,
            s["images"],
            f"{s['median_s']:.2f}",
            f"{s['images_per_s']:.1f}",
            s["projected_images"] or "–",
            f"{s['projected_s']:.1f}" if s["projected_images"] else "–",
        ]
        for name, s in result["stages"].items()
    ]
    header = ["stage", "images timed", "median s", "images/s", "projected images", "projected s"]
    print(markdown_table(rows, header))
    for label, total in result["projected_total_s"].items():
        print(f"\nProjected `evaluate` for {args.target} images, {label} + scoring: {total:.0f} s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
