"""Aggregation against an independent pandas groupby; Markdown, MLflow metrics and figures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from aerial_inpainting.evaluation import report


@pytest.fixture
def per_image() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        bucket = ["0.01-0.1", "0.3-0.4", "0.5-0.6"][i % 3]
        for method in ("model", "telea"):
            rows.append(
                {
                    "image_id": f"img{i}",
                    "class_name": ["Forest", "Port"][i % 2],
                    "mask_id": f"test_{i:05d}",
                    "hole_ratio": {"0.01-0.1": 0.05, "0.3-0.4": 0.35, "0.5-0.6": 0.55}[bucket]
                    + 0.001 * i,
                    "bucket": bucket,
                    "method": method,
                    "psnr": rng.uniform(15, 35),
                    "ssim": rng.uniform(0.3, 0.95),
                    "hole_psnr": rng.uniform(10, 30),
                    "hole_l1": rng.uniform(0.01, 0.2),
                    "ssim_raw": rng.uniform(0.2, 0.9) if method == "model" else np.nan,
                }
            )
    return pd.DataFrame(rows)


def test_summary_matches_pandas_groupby(per_image: pd.DataFrame) -> None:
    summary = report.summarise(per_image)
    # Independent reference: explicit loops over each group with numpy.
    for group_type, key in (("overall", None), ("bucket", "bucket"), ("class", "class_name")):
        for method in ("model", "telea"):
            sub = per_image[per_image.method == method]
            groups = {"all": sub} if key is None else dict(list(sub.groupby(key)))
            for group, frame in groups.items():
                row = summary[
                    (summary.method == method)
                    & (summary.group_type == group_type)
                    & (summary.group == group)
                ]
                assert len(row) == 1, (method, group_type, group)
                row = row.iloc[0]
                assert row["n"] == len(frame)
                for metric in ("psnr", "ssim", "hole_psnr", "hole_l1"):
                    values = frame[metric].to_numpy()
                    assert row[f"{metric}_mean"] == pytest.approx(values.mean())
                    assert row[f"{metric}_std"] == pytest.approx(values.std(ddof=1))
                if method == "telea":
                    assert np.isnan(row["ssim_raw_mean"])
    # Buckets in the paper's order, model first.
    buckets = summary[(summary.method == "model") & (summary.group_type == "bucket")][
        "group"
    ].tolist()
    assert buckets == ["0.01-0.1", "0.3-0.4", "0.5-0.6"]
    assert summary["method"].iloc[0] == "model"


def test_headline_markdown_and_mlflow_metrics(per_image: pd.DataFrame) -> None:
    summary = report.summarise(per_image)
    model = per_image[per_image.method == "model"]
    telea = per_image[per_image.method == "telea"]
    text = report.headline(summary)
    expected = (
        f"Mean PSNR: {model.psnr.mean():.2f} ± {model.psnr.std():.2f} dB, "
        f"Mean SSIM: {model.ssim.mean():.4f} ± {model.ssim.std():.4f}"
    )
    assert text.startswith(expected)
    assert f"{telea.psnr.mean():.2f} ± {telea.psnr.std():.2f} dB" in text

    assert text.endswith(")") and "undertrained" not in text
    cut_short = {"steps": 219, "steps_configured": 6000, "cut_short": True, "max_minutes": 6}
    assert report.headline(summary, training=cut_short) == (
        f"{text} (undertrained: 219 of 6,000 steps in the 6-minute budget; "
        "see training.max_minutes)"
    )
    assert report.headline(summary, training={**cut_short, "cut_short": False}) == text
    assert report.undertrained_note(None) is None

    md = report.summary_markdown(summary, notes=["a note"])
    assert expected in md and "OpenCV Telea" in md and "- a note" in md
    assert "undertrained" not in md
    md_cut = report.summary_markdown(summary, notes=["a note"], training=cut_short)
    assert f"**{text} (undertrained: 219 of 6,000 steps in the 6-minute budget; " in md_cut
    assert "| 0.3-0.4 |" in md and "| Forest |" in md

    metrics = report.mlflow_metrics(summary)
    assert metrics["model.psnr_mean"] == {"value": pytest.approx(model.psnr.mean()), "step": 0}
    assert metrics["telea.ssim_std"]["value"] == pytest.approx(telea.ssim.std())
    bucket = model[model.bucket == "0.5-0.6"]
    assert metrics["model.bucket_0.5-0.6.psnr_mean"]["value"] == pytest.approx(bucket.psnr.mean())
    assert "telea.ssim_raw_mean" not in metrics  # NaN metrics are not logged
    assert all(isinstance(v["value"], float) for v in metrics.values())


def test_select_examples_best_median_worst(per_image: pd.DataFrame) -> None:
    picks = report.select_examples(per_image, 2)
    model = per_image[per_image.method == "model"].sort_values("psnr", ascending=False)
    ids = [mask_id for _, mask_id in picks]
    assert ids[:2] == model.mask_id.tolist()[:2]
    assert ids[-2:] == model.mask_id.tolist()[-2:]
    assert len(set(ids)) == len(ids) == 6
    assert picks[0][0].startswith("best") and picks[-1][0].startswith("worst")


def test_figures(per_image: pd.DataFrame) -> None:
    fig = report.plot_metrics_vs_hole_ratio(per_image)
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (2, 16, 16, 3)).astype(np.uint8)
    masks = rng.random((2, 16, 16)) > 0.3
    fig2 = report.plot_examples(imgs, masks, imgs[::-1], ["a", "b"])
    assert len(fig2.axes) == 10
