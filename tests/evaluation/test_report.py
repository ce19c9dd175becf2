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
    fills = {"telea": imgs[::-1], "patchmatch": imgs, "model": imgs[::-1]}
    fig2 = report.plot_examples(imgs, masks, fills, ["a", "b"], {"model": [20.0, float("nan")]})
    assert len(fig2.axes) == 2 * 5
    # every panel carries its column's title: input, Telea, PatchMatch, the model, ground truth
    names = [
        "input (holes in magenta)",
        "OpenCV Telea",
        "PatchMatch (pypatchmatch)",
        "PConv U-Net (ours)",
        "ground truth",
    ]
    titles = [ax.get_title() for ax in fig2.axes]
    for row in range(2):
        for col, name in enumerate(names):
            assert titles[row * 5 + col].startswith(name), (row, col, titles[row * 5 + col])
    assert "PSNR 20.00 dB" in titles[3] and "PSNR" not in titles[5 + 3]  # NaN left out
    assert "magenta" in fig2.texts[0].get_text()  # the suptitle names the hole colour
    # the input panel: the image with exactly its hole pixels in magenta
    shown = fig2.axes[0].get_images()[0].get_array()
    np.testing.assert_array_equal(
        shown[~masks[0]], np.broadcast_to([255, 0, 255], (int((~masks[0]).sum()), 3))
    )
    np.testing.assert_array_equal(shown[masks[0]], imgs[0][masks[0]])
    # the fills are composites: ground truth outside the hole
    telea_panel = fig2.axes[1].get_images()[0].get_array()
    np.testing.assert_array_equal(telea_panel[masks[0]], imgs[0][masks[0]])
    np.testing.assert_array_equal(telea_panel[~masks[0]], imgs[1][~masks[0]])


def _with_sampled_baseline(per_image: pd.DataFrame) -> pd.DataFrame:
    """The fixture plus LPIPS and a PatchMatch run on 6 of the 12 images, rows shuffled."""
    rng = np.random.default_rng(5)
    frame = per_image.assign(lpips=rng.uniform(0.05, 0.4, len(per_image)))
    sample = frame[
        (frame.method == "model")
        & frame.mask_id.isin([f"test_{i:05d}" for i in (0, 2, 3, 5, 8, 11)])
    ]
    pm = sample.assign(
        method="patchmatch",
        psnr=rng.uniform(15, 35, len(sample)),
        ssim=rng.uniform(0.3, 0.95, len(sample)),
        lpips=rng.uniform(0.05, 0.4, len(sample)),
    )
    return pd.concat([frame, pm]).sample(frac=1.0, random_state=0).reset_index(drop=True)


def test_paired_margins_against_a_loop_over_images(per_image: pd.DataFrame) -> None:
    frame = _with_sampled_baseline(per_image)
    margins = report.all_paired_margins(frame)
    assert list(dict.fromkeys(margins.baseline)) == ["telea", "patchmatch"]
    # Independent reference: dictionaries keyed by mask id, one loop per baseline.
    value = {(r.method, r.mask_id): r for r in frame.itertuples()}
    for baseline in ("telea", "patchmatch"):
        ids = sorted(m for (method, m) in value if method == baseline)
        assert len(ids) == (12 if baseline == "telea" else 6)
        for metric, sign in (("psnr", 1), ("ssim", 1), ("lpips", -1)):
            diffs = np.array(
                [
                    getattr(value["model", m], metric) - getattr(value[baseline, m], metric)
                    for m in ids
                ]
            )
            row = margins[
                (margins.baseline == baseline)
                & (margins.group_type == "overall")
                & (margins.metric == metric)
            ].iloc[0]
            assert row["n"] == len(ids)
            assert row["diff"] == pytest.approx(diffs.mean())
            assert row["stderr"] == pytest.approx(diffs.std(ddof=1) / np.sqrt(len(ids)))
            assert row["won"] == pytest.approx(np.mean(sign * diffs > 0))
            assert row["model"] == pytest.approx(
                np.mean([getattr(value["model", m], metric) for m in ids])
            )
            for bucket in ("0.01-0.1", "0.3-0.4", "0.5-0.6"):
                in_bucket = [i for i, m in enumerate(ids) if value["model", m].bucket == bucket]
                hit = margins[
                    (margins.baseline == baseline)
                    & (margins.group == bucket)
                    & (margins.metric == metric)
                ]
                if not in_bucket:
                    assert hit.empty
                    continue
                assert hit.iloc[0]["n"] == len(in_bucket)
                assert hit.iloc[0]["diff"] == pytest.approx(diffs[in_bucket].mean())

    summary = report.summarise(frame)
    # the headline: Telea and PatchMatch beside the model, the sampled one with its count
    text = report.headline(summary)
    pm_rows = frame[frame.method == "patchmatch"]
    assert text.endswith(
        f"; PatchMatch (pypatchmatch) on 6 images: {pm_rows.psnr.mean():.2f} ± "
        f"{pm_rows.psnr.std():.2f} dB, {pm_rows.ssim.mean():.4f} ± {pm_rows.ssim.std():.4f}, "
        f"LPIPS {pm_rows.lpips.mean():.4f} ± {pm_rows.lpips.std():.4f})"
    )
    assert "(n=12; OpenCV Telea: " in text
    md = report.summary_markdown(summary, margins=margins)
    assert "## Paired margins of the model over each baseline" in md
    assert "| PatchMatch (pypatchmatch) | 6 |" in md and "| OpenCV Telea | 12 |" in md
    assert "### LPIPS margin per hole-ratio bucket" in md
    metrics = report.margin_metrics(margins)
    pm = margins[
        (margins.baseline == "patchmatch")
        & (margins.group_type == "overall")
        & (margins.metric == "psnr")
    ].iloc[0]
    assert metrics["model_vs_patchmatch.psnr_diff"]["value"] == pytest.approx(pm["diff"])
    assert metrics["model_vs_patchmatch.psnr_won"]["value"] == pytest.approx(pm["won"])
    assert "model_vs_telea.bucket_0.3-0.4.lpips_diff" in metrics


def test_select_examples_among_a_sample(per_image: pd.DataFrame) -> None:
    among = [f"test_{i:05d}" for i in (1, 4, 6, 9, 10, 7)]
    picks = report.select_examples(per_image, 1, among=among)
    model = per_image[(per_image.method == "model") & per_image.mask_id.isin(among)]
    ranked = model.sort_values("psnr", ascending=False).mask_id.tolist()
    assert [m for _, m in picks] == [ranked[0], ranked[len(ranked) // 2], ranked[-1]]
