"""Evaluation throughput: the model, every baseline and the metrics, per stage.

Target (issue 5): 1,200 test images at 256x256 on the CPU, model plus every metric, in under
2 minutes, with the biharmonic baseline on a sample (``evaluate.biharmonic_sample``, 100).
Issue 15 adds LPIPS (``--lpips-net``, default ``alex`` as ``evaluate.lpips_net``; needs
``aerial-inpainting weights fetch`` once) for the model and every baseline: target, the whole
evaluation under 3 minutes on 2 cores.

The headline figure is measured, not projected: ``end-to-end`` runs what the ``evaluate``
pipeline's two heavy nodes run, ``predict_test_images`` (``predict_images``: the CPU-scale model
that the default training parameters produce, batch ``--batch-size``, channels_last) then
``compute_metrics`` (``evaluation.scoring.score_chunks``: every baseline, biharmonic and
PatchMatch on one seeded sample of ``--biharmonic-sample`` images, and every metric, on
``--workers`` processes, the node's chunking), on all ``--n-images`` images (real SkyView images from ``--images-dir`` when
given, else seeded synthetic scenes; masks drawn by the project's generator, evenly over the six
hole-ratio buckets), as the median of ``--repeats`` runs.

For the breakdown each stage is timed alone on the first ``--stage-images`` images (median of
``--stage-repeats`` runs after a warm-up) and projected to ``--n-images``:

* ``model[...]``: ``predict_images`` with a randomly initialised PConvUNet: the CPU-scale
  config (depth 5, 32..256) and the paper-size default (depth 7, 64..512);
* ``telea``, ``navier_stokes``, ``biharmonic``, ``mean_fill``, ``pull_push``, ``patchmatch``:
  the baselines (one thread; PatchMatch only where ``pypatchmatch`` can be imported);
* ``lpips``: the LPIPS of one method's composites (``LPIPSScorer``, 1 thread), and the ground
  truth's features, computed once per image for all methods;
* ``metrics``: ``inpainting_metrics`` for one method (composite PSNR/SSIM, hole PSNR/L1), and
  ``metrics_raw`` with the extra raw-output SSIM the model gets; ``metrics_skimage`` is the same
  with scikit-image's reference functions, for comparison.

Run: ``python benchmarks/bench_evaluate.py --images-dir ../shared/data/skyview-dev``
(1,200 images, 3 end-to-end repeats: about 8 minutes on 2 cores).
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
from aerial_inpainting.pconv.devices import resolve_device
from aerial_inpainting.pconv.unet import PConvUNet, UNetConfig
from aerial_inpainting.pipelines.evaluate.nodes import (
    predict_images,
    seeded_sample,
)
from benchmarks.common import RESULTS_DIR, bench, machine_info, markdown_table, setup_torch

CPU_SCALE = "cpu-scale (depth 5, 32-256 ch)"
BASELINE_PARAMS = {"telea_radius": 3, "ns_radius": 3, "patchmatch_patch_size": 3, "seed": 0}
METHODS = [m for m in bl.BASELINES if bl.unavailable_reason(m) is None]
MODEL_CONFIGS = {
    CPU_SCALE: UNetConfig(depth=5, base_channels=32, max_channels=256),
    "paper size (depth 7, 64-512 ch)": UNetConfig(),
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


def _scoring(
    images, masks, outputs, in_sample, workers: int, batch: int, lpips_net: str | None
) -> None:
    # Same chunking as the compute_metrics node.
    chunk = max(1, min(batch, math.ceil(len(images) / (4 * workers))))
    workers = min(workers, math.ceil(len(images) / chunk))
    chunks = (
        Chunk(
            positions=np.arange(s, min(s + chunk, len(images))),
            images=images[s : s + chunk],
            masks=masks[s : s + chunk],
            model_outputs=outputs[s : s + chunk],
            samples={name: in_sample[s : s + chunk] for name in bl.SAMPLE_PARAMETERS},
            methods=METHODS,
            params={**BASELINE_PARAMS, "lpips_net": lpips_net},
        )
        for s in range(0, len(images), chunk)
    )
    for _ in score_chunks(chunks, workers=workers):
        pass


def _end_to_end(model, images, masks, in_sample, device, args, workers: int) -> None:
    outputs = predict_images(model, images, masks, device, args.batch_size, progress=True)
    _scoring(images, masks, outputs, in_sample, workers, args.metrics_batch_size, args.lpips_net)


def run(args: argparse.Namespace) -> dict[str, Any]:
    threads = setup_torch(args.threads)
    device = resolve_device(args.device)
    workers = resolve_workers(args.workers)
    from aerial_inpainting.evaluation.perceptual import get_scorer, lpips_available

    if not lpips_available(args.lpips_net, (args.size, args.size)):
        args.lpips_net = None  # the warning says why; timed without LPIPS
    images, source = load_images(args.n_images, args.size, args.images_dir, args.seed)
    masks = make_masks(args.n_images, args.size, args.seed)
    in_sample = np.zeros(args.n_images, dtype=bool)
    in_sample[
        seeded_sample(args.n_images, min(args.biharmonic_sample, args.n_images), args.seed)
    ] = True
    stages: dict[str, dict[str, Any]] = {}

    # 1. The headline: both heavy nodes' work on every image, timed as one.
    torch.manual_seed(args.seed)
    cpu_model = PConvUNet(MODEL_CONFIGS[CPU_SCALE]).eval()
    end_to_end = bench(
        lambda: _end_to_end(cpu_model, images, masks, in_sample, device, args, workers),
        repeats=args.repeats,
        warmup=0,
        device=device,
    )
    print(f"end-to-end: {end_to_end['median_s']:.1f} s", file=sys.stderr, flush=True)

    # 2. The breakdown, stage by stage on a subset, projected to all images.
    n = min(args.stage_images, args.n_images)
    sub_images, sub_masks = images[:n], masks[:n]
    n_bih = max(1, round(n * args.biharmonic_sample / args.n_images))
    sub_sample = np.zeros(n, dtype=bool)
    sub_sample[seeded_sample(n, n_bih, args.seed)] = True

    def record(name: str, fn, timed: int, projected_n: int) -> None:
        res = bench(fn, repeats=args.stage_repeats, warmup=1, device=device)
        per_image = res["median_s"] / timed
        stages[name] = {
            **res,
            "images": timed,
            "images_per_s": 1.0 / per_image,
            "projected_images": projected_n,
            "projected_s": per_image * projected_n,
        }
        print(f"{name}: {1 / per_image:.1f} images/s", file=sys.stderr, flush=True)

    outputs = None
    for label, config in MODEL_CONFIGS.items():
        if args.skip_default_model and label != CPU_SCALE:
            continue
        torch.manual_seed(args.seed)
        model = PConvUNet(config).eval()
        record(
            f"model [{label}], {device}, {threads} threads, batch {args.batch_size}",
            lambda model=model: predict_images(
                model, sub_images, sub_masks, device, args.batch_size, progress=True
            ),
            n,
            args.n_images,
        )
        if label == CPU_SCALE:
            outputs = predict_images(
                model, sub_images, sub_masks, device, args.batch_size, progress=True
            )
    assert outputs is not None
    # Single-process, single-thread cost of each piece (what one scoring worker does).
    for name in METHODS:
        fn = bl.get_baseline(name, BASELINE_PARAMS)
        sampled = name in bl.SAMPLE_PARAMETERS
        subset = sub_sample if sampled else np.ones(n, dtype=bool)
        with single_threaded():
            record(
                f"{name} (1 thread)",
                lambda fn=fn, subset=subset: bl.inpaint_batch(
                    fn, sub_images[subset], sub_masks[subset]
                ),
                int(subset.sum()),
                int(in_sample.sum()) if sampled else args.n_images,
            )
    n_sampled = sum(m in bl.SAMPLE_PARAMETERS for m in METHODS)
    n_methods = (len(METHODS) - n_sampled) * args.n_images + n_sampled * int(in_sample.sum())
    if args.lpips_net:
        scorer = get_scorer(args.lpips_net)
        comp = np.where(sub_masks[..., None], sub_images, outputs)
        with single_threaded():
            gt_feats = scorer.features(sub_images)
            record(
                f"lpips [{args.lpips_net}], one method's composites (1 thread)",
                lambda: scorer.distance(scorer.features(comp), gt_feats),
                n,
                n_methods + args.n_images,
            )
            record(
                f"lpips [{args.lpips_net}], ground-truth features (1 thread)",
                lambda: scorer.features(sub_images),
                n,
                args.n_images,
            )
    record(
        "metrics, one method (1 thread)",
        lambda: _metrics_all(outputs, sub_images, sub_masks, False, args.metrics_batch_size),
        n,
        n_methods,
    )
    record(
        "metrics + raw SSIM, model (1 thread)",
        lambda: _metrics_all(outputs, sub_images, sub_masks, True, args.metrics_batch_size),
        n,
        args.n_images,
    )
    with single_threaded():
        record(
            "metrics, scikit-image reference (1 thread; not used)",
            lambda: _metrics_skimage(outputs, sub_images, sub_masks),
            n,
            0,
        )
    return {
        "machine": machine_info(),
        "device": str(device),
        "threads": threads,
        "workers": workers,
        "image_source": source,
        "size": args.size,
        "n_images": args.n_images,
        "biharmonic_images": int(in_sample.sum()),
        "batch_size": args.batch_size,
        "model": f"{CPU_SCALE}, random init",
        "lpips_net": args.lpips_net,
        "end_to_end": {**end_to_end, "images_per_s": args.n_images / end_to_end["median_s"]},
        "target_s": 180 if args.lpips_net else 120,
        "stage_images": n,
        "stages": stages,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=1200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--biharmonic-sample", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="end-to-end runs")
    parser.add_argument("--stage-images", type=int, default=120)
    parser.add_argument("--stage-repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8, help="evaluate.batch_size")
    parser.add_argument("--metrics-batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="PyTorch threads for the model")
    parser.add_argument("--workers", default="auto", help="scoring processes (auto: one per CPU)")
    parser.add_argument("--images-dir", default=None, help="e.g. ../shared/data/skyview-dev")
    parser.add_argument("--skip-default-model", action="store_true")
    parser.add_argument(
        "--lpips-net", default="alex", help="evaluate.lpips_net: alex | vgg | none (no LPIPS)"
    )
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
    e2e = result["end_to_end"]
    print(
        f"\nEnd to end, {args.n_images} images (model + every baseline + every metric, "
        f"{result['workers']} scoring workers, LPIPS {result['lpips_net'] or 'off'}): "
        f"{e2e['median_s']:.1f} s median of {args.repeats} "
        f"(all: {', '.join(f'{t:.1f}' for t in e2e['times_s'])}); target < {result['target_s']} s"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
