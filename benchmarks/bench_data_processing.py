"""Benchmark of the data_processing work: ingest + split + masks, end to end, with saves.

Builds a Kaggle-layout folder of N images by symlinking the images of --source over and
over (default 12,000 from ../shared/data/skyview-dev), then runs the pipeline's nodes and
datasets exactly as `kedro run --pipeline=data_processing` would (without Kedro's own
start-up and MLflow), and reports images/s (median of --repeats runs).

    python benchmarks/bench_data_processing.py --n 12000 --repeats 3

Prints a markdown table and writes benchmarks/results/data_processing.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import yaml
from kedro.io import Version
from kedro_datasets.matplotlib import MatplotlibDataset
from kedro_datasets.pandas import CSVDataset

from aerial_inpainting.datasets import AerialFolderDataset, ImageArrayDataset, MaskFolderDataset
from aerial_inpainting.imaging.io import IMAGE_EXTENSIONS
from aerial_inpainting.pipelines.data_processing.nodes import (
    generate_test_masks,
    generate_train_masks,
    ingest_images,
    plot_mask_examples,
    split_train_test,
)

REPO = Path(__file__).resolve().parents[1]


def build_layout(source: Path, n: int, destination: Path) -> Path:
    """``destination/Aerial_Landscapes/<Class>/<k>.jpg`` symlinks cycling over source images."""
    root = source / "Aerial_Landscapes" if (source / "Aerial_Landscapes").is_dir() else source
    files = sorted(
        p for p in root.glob("*/*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise SystemExit(f"No images under {root}/<Class>/ — pass --source")
    layout = destination / "Aerial_Landscapes"
    for k in range(n):
        src = files[k % len(files)]
        folder = layout / src.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{k:05d}{src.suffix.lower()}").symlink_to(src.resolve())
    return layout


def _csv(path: Path, versioned: bool = False) -> CSVDataset:
    return CSVDataset(
        filepath=str(path),
        save_args={"index": False},
        version=Version(None, None) if versioned else None,
    )


def run_once(layout: Path, out: Path, params: dict) -> dict[str, float]:
    """One end-to-end pass; returns seconds per stage."""
    timings: dict[str, float] = {}
    start = time.perf_counter()

    t = time.perf_counter()
    listing = AerialFolderDataset(str(layout)).load()
    images, index, report = ingest_images(listing, params)
    timings["ingest (list + decode)"] = time.perf_counter() - t

    t = time.perf_counter()
    ImageArrayDataset(str(out / "images.npy")).save(images)
    _csv(out / "image_index.csv").save(index)
    _csv(out / "data_quality_report.csv").save(report)
    timings["save images.npy + index"] = time.perf_counter() - t

    t = time.perf_counter()
    train, test = split_train_test(index, params)
    _csv(out / "train_split.csv", True).save(train)
    _csv(out / "test_split.csv", True).save(test)
    timings["split + save"] = time.perf_counter() - t

    t = time.perf_counter()
    test_masks, test_mask_index = generate_test_masks(test, params)
    MaskFolderDataset(str(out / "test_masks"), Version(None, None)).save(test_masks)
    _csv(out / "test_mask_index.csv", True).save(test_mask_index)
    timings[f"test masks ({len(test_masks)}) + save"] = time.perf_counter() - t

    t = time.perf_counter()
    train_masks, train_mask_index = generate_train_masks(params)
    MaskFolderDataset(str(out / "train_masks"), Version(None, None)).save(train_masks)
    _csv(out / "train_mask_index.csv", True).save(train_mask_index)
    timings[f"train mask pool ({len(train_masks)}) + save"] = time.perf_counter() - t

    t = time.perf_counter()
    MatplotlibDataset(filepath=str(out / "mask_examples.png")).save(
        plot_mask_examples(test_masks, test_mask_index)
    )
    timings["mask examples figure"] = time.perf_counter() - t

    timings["total"] = time.perf_counter() - start
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=12_000, help="number of images (default 12000)")
    parser.add_argument(
        "--source", type=Path, default=REPO.parent / "shared" / "data" / "skyview-dev"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--workers", type=int, default=None, help="decoding processes (default: all cores)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="scratch folder (default: a temp dir)"
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "data_processing.json"
    )
    args = parser.parse_args()

    params = yaml.safe_load(
        (REPO / "conf" / "base" / "parameters_data_processing.yml").read_text()
    )["data_processing"]
    params = {**params, "num_workers": args.workers, "progress_bar": False}

    scratch = Path(tempfile.mkdtemp(prefix="bench_dp_", dir=args.workdir))
    try:
        layout = build_layout(args.source, args.n, scratch / "raw")
        runs = []
        for repeat in range(args.repeats):
            out = scratch / f"out{repeat}"
            out.mkdir()
            runs.append(run_once(layout, out, params))
            shutil.rmtree(out)
            print(
                f"run {repeat + 1}/{args.repeats}: {runs[-1]['total']:.2f} s, {args.n / runs[-1]['total']:.0f} images/s"
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    stages = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    images_per_s = args.n / stages["total"]
    cores = os.cpu_count()
    result = {
        "benchmark": "data_processing (ingest + split + masks, with saves)",
        "n_images": args.n,
        "image_size": params["image_size"],
        "source": str(args.source),
        "repeats": args.repeats,
        "workers": args.workers or cores,
        "cpu_count": cores,
        "load_average_1min_at_end": os.getloadavg()[0],
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "median_seconds": stages,
        "all_totals_seconds": [run["total"] for run in runs],
        "images_per_second": images_per_s,
        "target_images_per_second": 300,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(
        f"\n| stage ({args.n} images, {params['image_size']} px, {result['workers']} workers) | median s |"
    )
    print("|---|---:|")
    for key, value in stages.items():
        print(f"| {key} | {value:.2f} |")
    print(f"| **images/s end to end** | **{images_per_s:.0f}** |")
    print(
        f"\n(cpu_count={cores}, 1-min load average at end {result['load_average_1min_at_end']:.2f}; wrote {args.out})"
    )


if __name__ == "__main__":
    main()
