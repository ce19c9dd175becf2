"""Quality against CPU time: the training recipe's margin over OpenCV Telea at wall-clock points.

The project's performance curve (issue 13). A training run with ``training.snapshot_minutes``
set (the ``cpu_real`` environment sets 5, 10, 20, 40 and saves the end of its 60-minute budget)
leaves one model file per point in ``<snapshot_dir>/<fingerprint>/minute_<MMM.MM>_step_<N>.safetensors``.
This script

1. with ``--train``, runs that training first: ``kedro run --env=<env>`` (data_processing,
   training, evaluate: the whole DAG, so the run's own evaluation is in MLflow too);
2. scores every snapshot of the newest snapshot folder on the **test split** with the fixed
   test masks, with the same functions the ``evaluate`` pipeline runs
   (``prepare_evaluation_set``, ``predict_images``, ``compute_metrics`` with the Telea
   baseline), and reports per point: the model's mean composite PSNR and SSIM, Telea's, and the
   paired margins (mean difference over the same images, its standard error, share of images
   won), overall and by hole-ratio bucket;
3. writes ``benchmarks/results/quality_vs_time.json``, a Markdown table
   (``quality_vs_time.md``) and the plot ``docs/quality_vs_time.png`` (margin over Telea in
   PSNR and SSIM against CPU minutes).

Run from the project root (the real images linked at data/01_raw/Aerial_Landscapes):

    python benchmarks/quality_vs_time.py --train --env cpu_real

or, to score the snapshots of a finished run only: ``python benchmarks/quality_vs_time.py
--env cpu_real``. Scoring takes about a minute per point on 2 cores (1,140 test images).

``--split validation`` scores on the validation split (570 images, its own fixed masks)
instead: that is where a checkpoint is *chosen* (the pretrained model's, MODEL_CARD.md), so
that the test split stays an unbiased report. ``--include FILE`` adds a model file to the
points (e.g. the model a fine-tuning run started from, as its minute 0).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def paired_margins(per_image: pd.DataFrame) -> dict[str, Any]:
    """Model minus Telea over the same images: mean, standard error, share won; by bucket too."""
    model = per_image[per_image.method == "model"].set_index("mask_id")
    telea = per_image[per_image.method == "telea"].set_index("mask_id").loc[model.index]
    out: dict[str, Any] = {"n_images": len(model)}
    keys = [k for k in ("psnr", "ssim", "lpips") if k in model and model[k].notna().any()]
    for key in keys:
        diff = (model[key] - telea[key]).dropna()
        sign = -1 if key == "lpips" else 1  # LPIPS: lower is better
        out[f"model_{key}"] = float(model[key].mean())
        out[f"telea_{key}"] = float(telea[key].mean())
        out[f"margin_{key}"] = float(diff.mean())
        out[f"margin_{key}_se"] = float(diff.std(ddof=1) / np.sqrt(len(diff)))
        out[f"won_{key}"] = float((sign * diff > 0).mean())
    frame = model.assign(**{f"d_{k}": model[k] - telea[k] for k in keys})
    out["by_bucket"] = {
        bucket: {f"margin_{k}": float(g[f"d_{k}"].mean()) for k in keys}
        for bucket, g in frame.groupby("bucket")
    }
    return out


SPLITS = {
    "test": ("test_split", "test_mask_index", "test_masks"),
    "validation": ("val_split", "val_mask_index", "val_masks"),
}


def _load_inputs(env: str | None, split: str = "test") -> dict[str, Any]:
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(ROOT)
    with KedroSession.create(project_path=ROOT, env=env) as session:
        context = session.load_context()
        catalog = context.catalog
        names = SPLITS[split]
        return {
            "images": catalog.load("images"),
            "test_split": catalog.load(names[0]),
            "test_mask_index": catalog.load(names[1]),
            "test_masks": catalog.load(names[2]),
            "evaluate": dict(context.params["evaluate"]),
            "snapshot_dir": context.params["training"]["snapshot_dir"],
        }


def newest_snapshot_folder(snapshot_dir: Path) -> Path:
    folders = [d for d in snapshot_dir.iterdir() if d.is_dir() and any(d.glob("minute_*"))]
    if not folders:
        raise SystemExit(
            f"{snapshot_dir}: no snapshots; train with training.snapshot_minutes set "
            "(e.g. --train --env cpu_real)"
        )
    return max(folders, key=lambda d: max(p.stat().st_mtime for p in d.glob("minute_*")))


def score_snapshots(
    folder: Path, inputs: dict[str, Any], include: list[Path] | tuple[Path, ...] = ()
) -> list[dict[str, Any]]:
    import torch

    from aerial_inpainting.pconv.checkpoint import load_model
    from aerial_inpainting.pipelines.evaluate.nodes import (
        compute_metrics,
        predict_images,
        prepare_evaluation_set,
    )

    evaluation_set, masks = prepare_evaluation_set(
        inputs["test_split"], inputs["test_mask_index"], inputs["test_masks"]
    )
    images = inputs["images"]
    test_images = np.asarray(images[evaluation_set["row"].to_numpy()])
    params = {**inputs["evaluate"], "baselines": ["telea"], "progress_bar": False}
    rows = []
    for path in [*include, *sorted(folder.glob("minute_*"))]:
        model = load_model(path)
        outputs = predict_images(
            model, test_images, masks, torch.device("cpu"), int(params["batch_size"]),
            channels_last=bool(params["channels_last"]), progress=False,
        )  # fmt: skip
        per_image = compute_metrics(images, evaluation_set, masks, outputs, params)
        extra = getattr(model, "extra", {}) or {}
        minutes = float(extra.get("minutes", 0.0 if path in include else np.nan))
        row = {"snapshot": path.name, "minutes": minutes,
               "step": int(extra.get("step", -1)), **paired_margins(per_image)}  # fmt: skip
        print(
            f"{row['minutes']:6.1f} min (step {row['step']}): PSNR {row['model_psnr']:.2f} vs "
            f"Telea {row['telea_psnr']:.2f} ({row['margin_psnr']:+.2f} ± {row['margin_psnr_se']:.2f} dB), "
            f"SSIM {row['model_ssim']:.4f} vs {row['telea_ssim']:.4f} "
            f"({row['margin_ssim']:+.4f} ± {row['margin_ssim_se']:.4f})"
            + (
                f", LPIPS {row['model_lpips']:.4f} vs {row['telea_lpips']:.4f} "
                f"({row['margin_lpips']:+.4f} ± {row['margin_lpips_se']:.4f})"
                if "model_lpips" in row
                else ""
            ),
            flush=True,
        )
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| CPU minutes | step | PSNR (dB) | Telea PSNR | margin PSNR (± s.e.) | won | SSIM | Telea SSIM | margin SSIM (± s.e.) | won |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['minutes']:.1f} | {r['step']} | {r['model_psnr']:.2f} | {r['telea_psnr']:.2f} | "
            f"{r['margin_psnr']:+.2f} ± {r['margin_psnr_se']:.2f} | {r['won_psnr']:.0%} | "
            f"{r['model_ssim']:.4f} | {r['telea_ssim']:.4f} | "
            f"{r['margin_ssim']:+.4f} ± {r['margin_ssim_se']:.4f} | {r['won_ssim']:.0%} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path, split: str = "test") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [r["minutes"] for r in rows]
    fig, (ax_p, ax_s) = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, unit in ((ax_p, "psnr", "dB"), (ax_s, "ssim", "")):
        ax.errorbar(minutes, [r[f"margin_{key}"] for r in rows],
                    yerr=[r[f"margin_{key}_se"] for r in rows], marker="o", capsize=3)  # fmt: skip
        ax.axhline(0, color="grey", lw=1, ls="--", label="Telea")
        ax.set(xlabel="CPU minutes of training (2 cores)",
               ylabel=f"model - Telea, {key.upper()} {unit}".strip(),
               title=f"Composite {key.upper()} margin over Telea ({split} split)")  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="cpu_real", help="Kedro environment (default cpu_real)")
    parser.add_argument("--train", action="store_true", help="run `kedro run --env=ENV` first")
    parser.add_argument("--snapshots", type=Path, default=None,
                        help="folder of minute_* model files (default: the newest under snapshot_dir)")  # fmt: skip
    parser.add_argument("--split", choices=sorted(SPLITS), default="test",
                        help="score on the test split (default) or the validation split")  # fmt: skip
    parser.add_argument("--include", type=Path, action="append", default=[],
                        help="also score this model file, as minute 0 (repeatable)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS / "quality_vs_time.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "quality_vs_time.png")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    if args.train:
        subprocess.run(["kedro", "run", f"--env={args.env}"], check=True)
    inputs = _load_inputs(args.env, args.split)
    folder = args.snapshots or newest_snapshot_folder(ROOT / inputs["snapshot_dir"])
    print(f"Scoring the snapshots in {folder} on {len(inputs['test_split'])} {args.split} images")
    rows = score_snapshots(folder, inputs, tuple(args.include))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"env": args.env, "split": args.split, "snapshots": str(folder),
                                    "points": rows}, indent=2))  # fmt: skip
    args.out.with_suffix(".md").write_text(markdown_table(rows))
    plot(rows, args.plot, args.split)
    print(markdown_table(rows))
    print(f"Wrote {args.out}, {args.out.with_suffix('.md')} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
