"""Turning per-image metrics into reports: summary tables, Markdown, MLflow metrics, figures.

All functions take the per-image table (one row per image x method, columns ``image_id,
class_name, mask_id, hole_ratio, bucket, method`` and the metric columns) and are independent of
Kedro, so notebooks can rebuild any report from the CSV.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .metrics import PSNR_CAP_DB

METRICS = ("psnr", "ssim", "hole_psnr", "hole_l1", "ssim_raw", "lpips")
METRIC_LABELS = {
    "psnr": "PSNR (dB), composite",
    "ssim": "SSIM, composite",
    "hole_psnr": "PSNR (dB), hole only",
    "hole_l1": "L1, hole only",
    "ssim_raw": "SSIM, raw output",
    "lpips": "LPIPS, composite (lower = better)",
}
BUCKETS = ("0.01-0.1", "0.1-0.2", "0.2-0.3", "0.3-0.4", "0.4-0.5", "0.5-0.6")
MODEL = "model"
METHOD_LABELS = {
    "model": "PConv U-Net (ours)",
    "telea": "OpenCV Telea",
    "navier_stokes": "OpenCV Navier-Stokes",
    "biharmonic": "Biharmonic (scikit-image)",
    "mean_fill": "Mean-colour fill",
    "pull_push": "Pull-push fill",
    "patchmatch": "PatchMatch (pypatchmatch)",
}
# metric -> +1 when higher is better, -1 when lower is better (the paired margins' "won")
MARGIN_METRICS = {"psnr": 1, "ssim": 1, "lpips": -1}
HOLE_COLOUR = (255, 0, 255)
"""RGB colour the example figures draw holes in (magenta), as their titles say."""
HOLE_COLOUR_NAME = "magenta"


def _present_metrics(per_image: pd.DataFrame) -> list[str]:
    return [m for m in METRICS if m in per_image.columns]


def _method_order(methods: Sequence[str]) -> list[str]:
    known = [m for m in METHOD_LABELS if m in set(methods)]
    return known + sorted(set(methods) - set(known))


# ---------------------------------------------------------------------------- aggregation


def summarise(per_image: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std and count of each metric per method, overall / per bucket / per class.

    Returns a long table: ``method, group_type ('overall'|'bucket'|'class'), group, n`` and
    ``<metric>_mean``, ``<metric>_std`` (std with ddof=1; NaN for a single image). Metrics that
    are NaN for a row (hole metrics of an image without holes, ``ssim_raw`` of baselines) are
    left out of that row's statistics.
    """
    metrics = _present_metrics(per_image)
    frames = []
    for group_type, key in (("overall", None), ("bucket", "bucket"), ("class", "class_name")):
        keys = ["method"] if key is None else ["method", key]
        grouped = per_image.groupby(keys, sort=False, observed=True)
        stats = grouped[metrics].agg(["mean", "std"])
        stats.columns = [f"{m}_{s}" for m, s in stats.columns]
        stats.insert(0, "n", grouped.size())
        stats = stats.reset_index()
        stats.insert(1, "group_type", group_type)
        stats.insert(2, "group", "all" if key is None else stats.pop(key).astype(str))
        frames.append(stats)
    summary = pd.concat(frames, ignore_index=True)
    method_rank = {m: i for i, m in enumerate(_method_order(summary["method"].unique()))}
    bucket_rank = {b: i for i, b in enumerate(BUCKETS)}
    summary["_m"] = summary["method"].map(method_rank)
    summary["_t"] = summary["group_type"].map({"overall": 0, "bucket": 1, "class": 2})
    summary["_g"] = summary["group"].map(lambda g: bucket_rank.get(g, len(BUCKETS)))
    summary = summary.sort_values(["_m", "_t", "_g", "group"], kind="stable")
    return summary.drop(columns=["_m", "_t", "_g"]).reset_index(drop=True)


def overall(summary: pd.DataFrame, method: str) -> pd.Series | None:
    """The overall row of one method, or None when the method was not evaluated."""
    rows = summary[(summary["method"] == method) & (summary["group_type"] == "overall")]
    return None if rows.empty else rows.iloc[0]


def _lpips_text(row: pd.Series) -> str:
    """``m ± s`` of a row's LPIPS, ``n/a`` when it was not computed (no weights)."""
    mean = row.get("lpips_mean", float("nan"))
    if mean is None or math.isnan(mean):
        return "n/a"
    std = row.get("lpips_std", float("nan"))
    return f"{mean:.4f} ± {'–' if std is None or math.isnan(std) else f'{std:.4f}'}"


def undertrained_note(training: Mapping[str, Any] | None) -> str | None:
    """``"undertrained: 219 of 6,000 steps in the 6-minute budget; see training.max_minutes"``
    for a model whose training run the wall-time budget cut short, else None.

    ``training``: the run's summary saved in the model file's ``extra["training"]``
    (:func:`aerial_inpainting.tracking.training_summary`: ``steps``, ``steps_configured``,
    ``cut_short``, ``max_minutes``); None or a summary without ``cut_short`` (the shipped
    model, files of older versions) gives None."""
    if not training or not training.get("cut_short"):
        return None
    budget = training.get("max_minutes")
    where = f" in the {float(budget):g}-minute budget" if budget else ""
    return (
        f"undertrained: {int(training['steps']):,} of {int(training['steps_configured']):,} "
        f"steps{where}; see training.max_minutes"
    )


def headline(
    summary: pd.DataFrame,
    baseline: str | Sequence[str] = ("telea", "patchmatch"),
    training: Mapping[str, Any] | None = None,
) -> str:
    """The original design's one-liner for the model, LPIPS added, with the baselines' figures
    beside it (``baseline``: one name or several, those evaluated; a baseline run on a sample
    says on how many images), and ``(undertrained: ...)`` when the model's training run was
    cut short (``training``: see :func:`undertrained_note`)."""
    model = overall(summary, MODEL)
    if model is None:
        raise ValueError("The summary has no 'model' rows: nothing to report")
    text = (
        f"Mean PSNR: {model['psnr_mean']:.2f} ± {model['psnr_std']:.2f} dB, "
        f"Mean SSIM: {model['ssim_mean']:.4f} ± {model['ssim_std']:.4f}, "
        f"Mean LPIPS: {_lpips_text(model)}"
    )
    parts = []
    for name in [baseline] if isinstance(baseline, str) else baseline:
        base = overall(summary, name)
        if base is None:
            continue
        label = METHOD_LABELS.get(name, name)
        if int(base["n"]) != int(model["n"]):
            label += f" on {int(base['n'])} images"
        parts.append(
            f"{label}: {base['psnr_mean']:.2f} ± {base['psnr_std']:.2f} dB, "
            f"{base['ssim_mean']:.4f} ± {base['ssim_std']:.4f}, LPIPS {_lpips_text(base)}"
        )
    if parts:
        text += f" (n={int(model['n'])}; " + "; ".join(parts) + ")"
    note = undertrained_note(training)
    if note:
        text += f" ({note})"
    return text


def mlflow_metrics(summary: pd.DataFrame) -> dict[str, dict[str, float | int]]:
    """Summary means/stds as ``{name: {"value": v, "step": 0}}`` for MlflowMetricsHistoryDataset.

    Names: ``<method>.<metric>_<mean|std>`` overall, ``<method>.bucket_<lo>-<hi>.<metric>_mean``
    per bucket (MLflow keys allow letters, digits, ``_-./`` and spaces). Per-class numbers stay in
    the CSV: 15 classes x 5 methods x 5 metrics would swamp the MLflow UI.
    """
    out: dict[str, dict[str, float | int]] = {}
    metric_cols = [c for c in summary.columns if c.endswith(("_mean", "_std"))]
    for _, row in summary.iterrows():
        if row["group_type"] == "overall":
            prefix, cols = f"{row['method']}", metric_cols
        elif row["group_type"] == "bucket":
            prefix = f"{row['method']}.bucket_{row['group']}"
            cols = [c for c in metric_cols if c.endswith("_mean")]
        else:
            continue
        for col in cols:
            value = row[col]
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                out[f"{prefix}.{col}"] = {"value": float(value), "step": 0}
        if row["group_type"] == "overall":
            out[f"{prefix}.n_images"] = {"value": float(row["n"]), "step": 0}
    return out


def paired_margins(per_image: pd.DataFrame, baseline: str, model: str = MODEL) -> pd.DataFrame:
    """The model's paired margins over one baseline, overall and per hole-ratio bucket.

    Images are paired by ``mask_id`` (the same image and mask); a baseline run on a sample
    (biharmonic, PatchMatch) is compared on its sample only. For each of PSNR, SSIM and LPIPS
    (those present and not all NaN): ``n`` pairs, the ``model`` and ``baseline`` means,
    ``diff`` = mean of (model - baseline), ``stderr`` = std(diff, ddof=1) / sqrt(n) (NaN for
    one pair) and ``won`` = share of pairs the model wins (higher PSNR/SSIM, lower LPIPS;
    ties lost). Returns a long table with columns ``baseline, group_type ('overall'|'bucket'),
    group, metric, n, model, baseline_mean, diff, stderr, won`` (empty when nothing pairs).
    """
    ours = per_image[per_image["method"] == model].set_index("mask_id")
    theirs = per_image[per_image["method"] == baseline].set_index("mask_id")
    common = ours.index.intersection(theirs.index, sort=False)
    ours, theirs = ours.loc[common], theirs.loc[common]
    rows = []
    for metric, sign in MARGIN_METRICS.items():
        if metric not in ours.columns or ours[metric].isna().all():
            continue
        pair = pd.DataFrame(
            {"a": ours[metric], "b": theirs[metric], "bucket": ours["bucket"].astype(str)}
        ).dropna(subset=["a", "b"])
        groups = [("overall", "all", pair)]
        groups += [
            ("bucket", bucket, pair[pair["bucket"] == bucket])
            for bucket in sorted(pair["bucket"].unique(), key=_bucket_rank)
        ]
        for group_type, group, part in groups:
            if part.empty:
                continue
            diff = part["a"] - part["b"]
            n = len(diff)
            rows.append(
                {
                    "baseline": baseline,
                    "group_type": group_type,
                    "group": group,
                    "metric": metric,
                    "n": n,
                    "model": float(part["a"].mean()),
                    "baseline_mean": float(part["b"].mean()),
                    "diff": float(diff.mean()),
                    "stderr": float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
                    "won": float((sign * diff > 0).mean()),
                }
            )
    columns = ["baseline", "group_type", "group", "metric", "n", "model", "baseline_mean"]
    return pd.DataFrame(rows, columns=[*columns, "diff", "stderr", "won"])


def all_paired_margins(per_image: pd.DataFrame, model: str = MODEL) -> pd.DataFrame:
    """:func:`paired_margins` of the model over every other method of the table, stacked."""
    baselines = [m for m in _method_order(per_image["method"].unique()) if m != model]
    frames = [paired_margins(per_image, b, model) for b in baselines]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else paired_margins(per_image, "")


def margin_metrics(margins: pd.DataFrame) -> dict[str, dict[str, float | int]]:
    """Paired margins as MLflow metrics (``{name: {"value": v, "step": 0}}``):
    ``model_vs_<baseline>.<metric>_diff`` / ``_stderr`` / ``_won`` overall and
    ``model_vs_<baseline>.bucket_<lo>-<hi>.<metric>_diff`` per bucket."""
    out: dict[str, dict[str, float | int]] = {}
    for _, row in margins.iterrows():
        prefix = f"model_vs_{row['baseline']}"
        if row["group_type"] == "overall":
            keys = ("diff", "stderr", "won")
        else:
            prefix, keys = f"{prefix}.bucket_{row['group']}", ("diff",)
        for key in keys:
            if not math.isnan(row[key]):
                out[f"{prefix}.{row['metric']}_{key}"] = {"value": float(row[key]), "step": 0}
    return out


def _bucket_rank(bucket: str) -> tuple[int, str]:
    return (BUCKETS.index(bucket) if bucket in BUCKETS else len(BUCKETS), bucket)


def _margin_text(row: pd.Series, metric: str) -> str:
    digits = 2 if metric == "psnr" else 4
    se = "–" if math.isnan(row["stderr"]) else f"{row['stderr']:.{digits}f}"
    return f"{row['diff']:+.{digits}f} ± {se} ({row['won']:.0%})"


def margins_markdown(margins: pd.DataFrame) -> list[str]:
    """Markdown lines: the paired margins overall (one row per baseline) and per bucket."""
    if margins.empty:
        return []
    metrics = [m for m in MARGIN_METRICS if m in set(margins["metric"])]
    baselines = list(dict.fromkeys(margins["baseline"]))
    lines = [
        "",
        "## Paired margins of the model over each baseline",
        "",
        "Mean of (model − baseline) on the same images and masks ± its standard error, "
        "and in brackets the share of images the model wins (higher PSNR/SSIM, lower LPIPS).",
        "",
    ]
    overall_rows = margins[margins["group_type"] == "overall"]
    rows = []
    for baseline in baselines:
        part = overall_rows[overall_rows["baseline"] == baseline].set_index("metric")
        cells = [METHOD_LABELS.get(baseline, baseline), int(part["n"].max())]
        cells += [_margin_text(part.loc[m], m) if m in part.index else "–" for m in metrics]
        rows.append(cells)
    lines += _table(["Baseline", "Images"] + [f"{m.upper()} margin" for m in metrics], rows)
    buckets = margins[margins["group_type"] == "bucket"]
    for metric in metrics:
        part = buckets[buckets["metric"] == metric]
        if part.empty:
            continue
        groups = sorted(part["group"].unique(), key=_bucket_rank)
        rows = []
        for group in groups:
            cells = [group]
            for baseline in baselines:
                hit = part[(part["group"] == group) & (part["baseline"] == baseline)]
                cells.append("–" if hit.empty else _margin_text(hit.iloc[0], metric))
            rows.append(cells)
        lines += ["", f"### {metric.upper()} margin per hole-ratio bucket", ""]
        lines += _table(["Hole-ratio bucket"] + [METHOD_LABELS.get(b, b) for b in baselines], rows)
    return lines


# ------------------------------------------------------------------------------- markdown


def _fmt(mean: float, std: float, metric: str) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    digits = 2 if "psnr" in metric else 4
    std_text = "–" if std is None or math.isnan(std) else f"{std:.{digits}f}"
    return f"{mean:.{digits}f} ± {std_text}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def summary_markdown(
    summary: pd.DataFrame,
    notes: Sequence[str] = (),
    training: Mapping[str, Any] | None = None,
    margins: pd.DataFrame | None = None,
) -> str:
    """A Markdown report: headline, overall table, the model's paired margins over each
    baseline (``margins``, :func:`all_paired_margins`; overall and per bucket), then
    PSNR/SSIM/LPIPS per hole-ratio bucket and class. ``training``: the model's training
    summary; the headline then carries ``(undertrained: ...)`` as the logged one does
    (:func:`headline`)."""
    methods = _method_order(summary["method"].unique())
    metrics = [m for m in METRICS if f"{m}_mean" in summary.columns]
    lines = ["# Evaluation on the test split", ""]
    if overall(summary, MODEL) is not None:
        lines += [f"**{headline(summary, training=training)}**", ""]
    lines += ["## Overall (mean ± std over images)", ""]
    rows = []
    for method in methods:
        row = overall(summary, method)
        rows.append(
            [METHOD_LABELS.get(method, method), int(row["n"])]
            + [_fmt(row[f"{m}_mean"], row[f"{m}_std"], m) for m in metrics]
        )
    lines += _table(["Method", "Images"] + [METRIC_LABELS[m] for m in metrics], rows)
    if margins is not None:
        lines += margins_markdown(margins)
    for group_type, title in (("bucket", "hole-ratio bucket"), ("class", "class")):
        part = summary[summary["group_type"] == group_type]
        if part.empty:
            continue
        groups = list(dict.fromkeys(part["group"]))
        shown = [
            m
            for m in ("psnr", "ssim", "lpips")
            if f"{m}_mean" in part.columns and part[f"{m}_mean"].notna().any()
        ]
        for metric in shown:
            lines += ["", f"## {METRIC_LABELS[metric]} per {title}", ""]
            rows = []
            for group in groups:
                cells = [group]
                for method in methods:
                    hit = part[(part["method"] == method) & (part["group"] == group)]
                    cells.append(
                        "–"
                        if hit.empty
                        else _fmt(
                            hit.iloc[0][f"{metric}_mean"], hit.iloc[0][f"{metric}_std"], metric
                        )
                    )
                rows.append(cells)
            header = [title.capitalize()] + [METHOD_LABELS.get(m, m) for m in methods]
            lines += _table(header, rows)
    lines += [
        "",
        "## Notes",
        "",
        "- Composite = ground truth on valid pixels, prediction in the hole (Liu et al. 2018).",
        f"- PSNR is capped at {PSNR_CAP_DB:.0f} dB (identical images); data range 1.0; SSIM as "
        "scikit-image (7x7 uniform window, K1=0.01, K2=0.03, channel mean).",
        "- Std is the sample standard deviation over images (ddof=1).",
    ]
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------- figures


def plot_metrics_vs_hole_ratio(per_image: pd.DataFrame) -> Figure:
    """Each metric against hole ratio: per-bucket mean ± std for every method, images as dots."""
    metrics = [
        m
        for m in ("psnr", "ssim", "hole_psnr", "hole_l1", "lpips")
        if m in per_image.columns and per_image[m].notna().any()
    ]
    methods = _method_order(per_image["method"].unique())
    ncols = 2
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6 * ncols, 4 * nrows), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, metric in zip(axes.flat, metrics, strict=False):
        for i, method in enumerate(methods):
            rows = per_image[(per_image["method"] == method) & per_image[metric].notna()]
            if rows.empty:
                continue
            colour = colours(i)
            ax.scatter(
                rows["hole_ratio"], rows[metric], s=3, alpha=0.15, color=colour, linewidths=0
            )
            stats = rows.groupby("bucket", observed=True).agg(
                x=("hole_ratio", "mean"), mean=(metric, "mean"), std=(metric, "std")
            )
            stats = stats.sort_values("x")
            std = stats["std"].fillna(0.0)
            ax.plot(
                stats["x"],
                stats["mean"],
                "o-",
                color=colour,
                label=METHOD_LABELS.get(method, method),
            )
            ax.fill_between(
                stats["x"], stats["mean"] - std, stats["mean"] + std, color=colour, alpha=0.12
            )
        ax.set_xlabel("hole ratio")
        ax.set_ylabel(METRIC_LABELS[metric])
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Metrics against hole ratio (line: bucket mean ± std; dots: images)")
    fig.tight_layout()
    return fig


def select_examples(
    per_image: pd.DataFrame,
    num_examples: int,
    method: str = MODEL,
    metric: str = "psnr",
    among: Sequence[str] | None = None,
) -> list[tuple[str, str]]:
    """(label, mask_id) of the best, median and worst images of ``method`` by ``metric``.

    ``num_examples`` per kind (fewer when the test set is small; no image twice). ``among``:
    choose only from these mask ids (e.g. the sample PatchMatch ran on), None = all.
    """
    rows = per_image[(per_image["method"] == method) & per_image[metric].notna()]
    if among is not None:
        rows = rows[rows["mask_id"].isin(set(among))]
    rows = rows.sort_values([metric, "mask_id"], ascending=[False, True]).reset_index(drop=True)
    n = len(rows)
    k = max(1, min(num_examples, n // 3 if n >= 3 else n))
    mid = n // 2 - k // 2
    picks = [("best", i) for i in range(k)]
    picks += [("median", i) for i in range(max(0, mid), max(0, mid) + k)]
    picks += [("worst", i) for i in range(n - k, n)]
    seen: set[int] = set()
    out = []
    for label, i in picks:
        if 0 <= i < n and i not in seen:
            seen.add(i)
            out.append(
                (f"{label}: {metric} {rows.loc[i, metric]:.2f}", str(rows.loc[i, "mask_id"]))
            )
    return out


def draw_holes(image: np.ndarray, valid: np.ndarray, colour=HOLE_COLOUR) -> np.ndarray:
    """uint8 (H, W, 3) copy of ``image`` with the hole pixels (``valid`` False) in ``colour``."""
    return np.where(valid[..., None], image, np.asarray(colour, dtype=np.uint8)).astype(np.uint8)


def example_columns(methods: Sequence[str]) -> list[str]:
    """The column titles of :func:`plot_examples` for fills of ``methods``, left to right."""
    return [
        f"input (holes in {HOLE_COLOUR_NAME})",
        *[METHOD_LABELS.get(m, m) for m in methods],
        "ground truth",
    ]


def plot_examples(
    images: np.ndarray,
    masks: np.ndarray,
    fills: Mapping[str, np.ndarray],
    labels: Sequence[str],
    scores: Mapping[str, Sequence[float]] | None = None,
) -> Figure:
    """Rows of input with the holes in magenta | each method's fill | ground truth.

    ``images`` uint8 (N, H, W, 3) ground truth, ``masks`` (N, H, W) 1/True = valid,
    ``fills``: {method: uint8 (N, H, W, 3) output}, drawn left to right in that order as
    composites (ground truth on valid pixels, the method's output in the hole), titled with
    :data:`METHOD_LABELS`; ``scores``: {method: N composite PSNRs (dB)} added to the titles
    (NaN: left out). Every panel carries its column's title; ``labels`` name the rows.
    """
    columns = example_columns(list(fills))
    n = len(images)
    fig, axes = plt.subplots(
        max(n, 1),
        len(columns),
        figsize=(2.4 * len(columns), 2.8 * max(n, 1)),
        squeeze=False,
        layout="constrained",  # room for every title and the suptitle, no overlaps
    )
    for r in range(n):
        valid = np.asarray(masks[r]).astype(bool)
        panels = [draw_holes(images[r], valid)]
        panels += [np.where(valid[..., None], images[r], fill[r]) for fill in fills.values()]
        panels.append(images[r])
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(panel.astype(np.uint8), vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            title = columns[c]
            method = list(fills)[c - 1] if 0 < c <= len(fills) else None
            value = (scores or {}).get(method, [math.nan] * n)[r] if method else math.nan
            if not math.isnan(value):
                title += f"\nPSNR {value:.2f} dB"
            elif c == 0:
                title += f"\nhole ratio {(~valid).mean():.2f}"
            ax.set_title(title, fontsize=8)
        axes[r, 0].set_ylabel(labels[r], fontsize=8)
    fig.suptitle(
        f"Holes drawn in {HOLE_COLOUR_NAME} in the input; each fill composited on the ground "
        "truth outside the hole, with that composite's PSNR",
        fontsize=9,
    )
    return fig
