"""Nodes of the ``evaluate`` pipeline: the model and classical baselines on the fixed test masks.

Thin wrappers around :mod:`aerial_inpainting.evaluation`: they line the test split up with its
masks, run the model in batches, score every method per image, and turn the scores into
reports. Every method is scored on uint8 images (the model's output clamped to [0, 1] and
rounded, as when it is saved as a picture), composite = ground truth on valid pixels.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from aerial_inpainting.evaluation import baselines as bl
from aerial_inpainting.evaluation import report
from aerial_inpainting.evaluation.perceptual import lpips_available
from aerial_inpainting.evaluation.scoring import Chunk, resolve_workers, score_chunks
from aerial_inpainting.inference import fill_holes
from aerial_inpainting.parameters import EvaluateParams
from aerial_inpainting.pconv.devices import resolve_device
from aerial_inpainting.pconv.tta import dihedral_mean

logger = logging.getLogger(__name__)

NO_MODEL_MESSAGE = (
    "No trained model found: run `kedro run` (or `kedro run --pipelines=training`) first"
)
PER_IMAGE_COLUMNS = [
    "image_id",
    "class_name",
    "mask_id",
    "hole_ratio",
    "bucket",
    "method",
    "psnr",
    "ssim",
    "hole_psnr",
    "hole_l1",
    "ssim_raw",
    "lpips",
]


def _progress(params: EvaluateParams) -> bool | None:
    """tqdm's ``disable``: None (``progress_bar: null``: only on a terminal), else forced."""
    return None if params.progress_bar is None else not params.progress_bar


def _nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)


def prepare_evaluation_set(
    test_split: pd.DataFrame, test_mask_index: pd.DataFrame, test_masks: Mapping[str, Any]
) -> tuple[pd.DataFrame, np.ndarray]:
    """The test images lined up with their fixed masks.

    Returns a table with one row per test image (image_id, class_name, row in ``images``,
    mask_id, hole_ratio, bucket; sorted by mask_id) and the masks stacked in the same order,
    bool (N, H, W) with True = valid, so later nodes do not decode the PNGs again.

    Refuses mismatched inputs with a message naming the dataset and the offending ids, since
    they mean the masks were generated for another split (rerun data_processing).
    """
    for name, frame, cols in (
        ("test_split", test_split, {"image_id", "class_name", "row"}),
        ("test_mask_index", test_mask_index, {"mask_id", "image_id", "hole_ratio", "bucket"}),
    ):
        missing = cols - set(frame.columns)
        if missing:
            raise ValueError(f"{name}: missing column(s) {sorted(missing)}")
    merged = test_mask_index[["mask_id", "image_id", "hole_ratio", "bucket"]].merge(
        test_split[["image_id", "class_name", "row"]],
        on="image_id",
        how="left",
        validate="one_to_one",
    )
    orphans = merged.loc[merged["row"].isna(), "image_id"].tolist()
    if orphans:
        raise ValueError(
            f"test_mask_index: {len(orphans)} mask(s) name images that are not in test_split "
            f"(e.g. {orphans[:3]}); rerun `kedro run --pipelines=data_processing`"
        )
    unmasked = sorted(set(test_split["image_id"]) - set(merged["image_id"]))
    if unmasked:
        raise ValueError(
            f"test_split: {len(unmasked)} image(s) have no test mask (e.g. {unmasked[:3]}); "
            "rerun `kedro run --pipelines=data_processing`"
        )
    absent = [m for m in merged["mask_id"] if m not in test_masks]
    if absent:
        raise ValueError(
            f"test_masks: {len(absent)} mask file(s) listed in test_mask_index are missing (e.g. {absent[:3]})"
        )
    merged["row"] = merged["row"].astype(int)
    merged = merged.sort_values("mask_id", kind="stable").reset_index(drop=True)
    shapes = {np.shape(test_masks[m]) for m in merged["mask_id"]}
    if len(shapes) > 1:
        raise ValueError(
            f"test_masks: masks of different shapes {sorted(shapes)}; expected one size"
        )
    masks = (
        np.stack([np.asarray(test_masks[m]).astype(bool) for m in merged["mask_id"]])
        if len(merged)
        else np.empty((0, 0, 0), dtype=bool)
    )
    return merged[["image_id", "class_name", "row", "mask_id", "hole_ratio", "bucket"]], masks


def predict_images(
    model: torch.nn.Module,
    images: np.ndarray,
    masks: np.ndarray,
    device: torch.device,
    batch_size: int,
    autocast: bool = True,
    progress: bool | None = None,
    channels_last: bool = True,
    tta: bool = False,
) -> np.ndarray:
    """Raw model outputs, clamped to [0, 1] and rounded to uint8 (N, H, W, 3).

    ``tta``: the mean output over the eight flips and quarter turns
    (:func:`aerial_inpainting.pconv.tta.dihedral_mean`, eight times the compute).
    An image with hole pixels beyond the network's reach (its last layer's mask is 0 there and
    its output a default 0, not a prediction) is predicted instead by the inference path that
    every entry point shares (:func:`aerial_inpainting.inference.fill_holes`), so that no hole
    is scored as black.

    ``images`` uint8 (N, H, W, 3) (a memory map is read batch by batch), ``masks`` (N, H, W)
    with True = valid. Hole pixels of the input are zeroed before the model sees them.
    ``channels_last`` runs the model in NHWC memory format (the model is converted in place):
    oneDNN's NHWC convolutions made inference 1.7x faster on a 2-core CPU
    (``benchmarks/bench_evaluate.py``), and cuDNN prefers it under autocast too.
    """
    if len(images) == 0:
        return np.empty((0, 0, 0, 3), dtype=np.uint8)
    if masks.shape != images.shape[:3]:
        raise ValueError(
            f"test_masks: masks of shape {masks.shape[1:]} do not fit images of {images.shape[1:3]}"
        )
    check = getattr(model, "check_input_size", None)
    if check is not None:
        check(*images.shape[1:3])
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format).eval()
    use_amp = autocast and device.type == "cuda"
    outputs = np.empty((len(images), *images.shape[1:]), dtype=np.uint8)
    starts = range(0, len(images), batch_size)
    with torch.inference_mode():
        for start in tqdm(starts, desc="model", unit="batch", disable=progress):
            stop = min(start + batch_size, len(images))
            x = _nchw(np.asarray(images[start:stop])).to(device).float().div_(255.0)
            m = torch.from_numpy(masks[start:stop]).to(device).float()[:, None]
            x = (x * m).contiguous(memory_format=memory_format)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                if hasattr(model, "forward_with_mask"):
                    out, reach = model.forward_with_mask(x, m)
                    unreached = ((reach.amax(dim=1) <= 0) & (m[:, 0] <= 0)).flatten(1).any(1)
                else:  # stand-ins without reach information
                    out, unreached = model(x, m), torch.zeros(len(x), dtype=torch.bool)
                if tta:
                    out = dihedral_mean(model, x, m)
            out = out.float().clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
            outputs[start:stop] = out.permute(0, 2, 3, 1).cpu().numpy()
            for k in torch.nonzero(unreached.cpu()).flatten().tolist():
                outputs[start + k] = fill_holes(
                    model, np.asarray(images[start + k]), masks[start + k].astype(bool), device
                )
    return outputs


def predict_test_images(
    model: torch.nn.Module,
    images: np.ndarray,
    evaluation_set: pd.DataFrame,
    evaluation_masks: np.ndarray,
    params: Mapping[str, Any],
) -> np.ndarray:
    """The model's raw output for every test image, in ``evaluation_set`` order (uint8)."""
    params = EvaluateParams.parse(params)
    device = resolve_device(params.device)
    logger.info("Evaluating the model on %d test images (device %s)", len(evaluation_set), device)
    rows = evaluation_set["row"].to_numpy()
    return predict_images(
        model,
        np.asarray(images[rows]),
        evaluation_masks,
        device,
        params.batch_size,
        autocast=params.autocast,
        progress=_progress(params),
        channels_last=params.channels_last,
        tta=params.tta,
    )


def seeded_sample(n: int, size: int | None, seed: int) -> np.ndarray:
    """Sorted indices of the seeded sample a slow baseline runs on (all if size is None).

    One draw for every slow baseline (:data:`baselines.SAMPLE_PARAMETERS`): with equal sizes
    and the same seed, biharmonic and PatchMatch run on the same images.
    """
    if size is None or size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max(0, int(size)), replace=False))


_WARNED_UNAVAILABLE: set[str] = set()


def available_baselines(methods: list[str]) -> list[str]:
    """``methods`` without the baselines that cannot run here (:func:`baselines.unavailable_reason`:
    PatchMatch without its ``pypatchmatch`` wheel), each skipped with one WARNING per process
    that says why."""
    kept = []
    for name in methods:
        reason = bl.unavailable_reason(name)
        if reason is None:
            kept.append(name)
        elif name not in _WARNED_UNAVAILABLE:
            _WARNED_UNAVAILABLE.add(name)
            logger.warning("Baseline %s skipped: %s", name, reason)
    return kept


def _baseline_params(params: EvaluateParams) -> dict[str, Any]:
    """The ``evaluate:`` keys the baselines take (:data:`baselines.BASELINE_PARAMETERS`)."""
    keys = {k for bound in bl.BASELINE_PARAMETERS.values() for k in bound.values()}
    return {key: getattr(params, key) for key in sorted(keys)}


def compute_metrics(
    images: np.ndarray,
    evaluation_set: pd.DataFrame,
    evaluation_masks: np.ndarray,
    model_outputs: np.ndarray,
    params: Mapping[str, Any],
) -> pd.DataFrame:
    """Per-image metrics of the model and every baseline: one row per image and method.

    The slow baselines run on one seeded sample (``biharmonic_sample``, ``patchmatch_sample``
    images: :func:`seeded_sample`); a baseline that cannot run here (PatchMatch without
    ``pypatchmatch``) is skipped with one WARNING. Chunks of ``metrics_batch_size`` images
    are scored by ``num_workers`` processes (``auto``: one per CPU).
    ``lpips_net`` (``alex``, ``vgg`` or ``none``) picks the LPIPS backbone; without its
    converted ImageNet weights the ``lpips`` column is NaN and one WARNING names the command
    that fetches them.
    """
    params = EvaluateParams.parse(params)
    methods = list(params.baselines)
    unknown = sorted(set(methods) - set(bl.BASELINES))
    if unknown:
        raise ValueError(
            f"evaluate.baselines: unknown baseline(s) {unknown}; choose from {list(bl.BASELINES)}"
        )
    methods = available_baselines(methods)
    n = len(evaluation_set)
    workers = resolve_workers(params.num_workers)
    # Chunks small enough that every worker gets several (load balance), never above the batch size.
    chunk_size = max(1, min(params.metrics_batch_size, math.ceil(n / (4 * workers))))
    workers = min(workers, math.ceil(n / chunk_size))  # no idle processes on a tiny test set
    samples: dict[str, np.ndarray] = {}
    for name, key in bl.SAMPLE_PARAMETERS.items():
        if name in methods:
            samples[name] = np.zeros(n, dtype=bool)
            samples[name][seeded_sample(n, getattr(params, key), params.seed)] = True
    rows = evaluation_set["row"].to_numpy()
    baseline_params = _baseline_params(params)
    lpips_net = params.lpips_net
    size = tuple(evaluation_masks.shape[1:3]) if n else None
    baseline_params["lpips_net"] = lpips_net if n and lpips_available(lpips_net, size) else None
    if len(model_outputs) != n:
        raise ValueError(f"model_outputs: {len(model_outputs)} images for {n} test images")

    def chunks() -> Iterator[Chunk]:
        for start in range(0, n, chunk_size):
            idx = np.arange(start, min(start + chunk_size, n))
            yield Chunk(
                positions=idx,
                images=np.asarray(images[rows[idx]]),
                masks=evaluation_masks[idx],
                model_outputs=model_outputs[idx],
                samples={name: sample[idx] for name, sample in samples.items()},
                methods=methods,
                params=baseline_params,
            )

    logger.info(
        "Scoring %d test images: model + %s%s, %d worker(s)",
        n,
        ", ".join(methods),
        "".join(f" ({name} on {int(s.sum())})" for name, s in samples.items()),
        workers,
    )
    collected: dict[str, list[dict[str, np.ndarray]]] = {}
    bar = tqdm(total=n, desc="baselines + metrics", unit="img", disable=_progress(params))
    for result in score_chunks(chunks(), workers=workers):
        for method, scores in result.items():
            collected.setdefault(method, []).append(scores)
        bar.update(len(result["model"]["positions"]))
    bar.close()
    meta = evaluation_set[["image_id", "class_name", "mask_id", "hole_ratio", "bucket"]]
    frames = []
    for method in ["model", *methods]:
        parts = collected.get(method)
        if not parts:
            continue
        part = meta.iloc[np.concatenate([p["positions"] for p in parts])].reset_index(drop=True)
        part["method"] = method
        for key in ("psnr", "ssim", "hole_psnr", "hole_l1", "ssim_raw", "lpips"):
            part[key] = np.concatenate([p[key] for p in parts]) if key in parts[0] else np.nan
        frames.append(part)
    return pd.concat(frames, ignore_index=True)[PER_IMAGE_COLUMNS]


def summarise_evaluation(
    evaluation_per_image: pd.DataFrame,
    params: Mapping[str, Any],
    model: torch.nn.Module | None = None,
) -> tuple[pd.DataFrame, str, dict[str, dict[str, float | int]]]:
    """Summary table (CSV), the Markdown report and the MLflow metrics.

    The report and the metrics carry the model's paired margins over every baseline
    (:func:`report.all_paired_margins`, overall and per hole-ratio bucket), and notes on the
    slow baselines' samples and on any baseline skipped because it cannot run here.
    ``model``: the evaluated model; when its training run was cut short
    (``model.extra["training"]``), the report's headline says so, as the logged headline does
    (:func:`report_headline`).
    """
    params = EvaluateParams.parse(params)
    summary = report.summarise(evaluation_per_image)
    margins = report.all_paired_margins(evaluation_per_image)
    notes = []
    methods = set(evaluation_per_image["method"])
    n_model = int((evaluation_per_image["method"] == "model").sum())
    for name, key in bl.SAMPLE_PARAMETERS.items():
        n_sampled = int((evaluation_per_image["method"] == name).sum())
        if n_sampled and n_sampled < n_model:
            notes.append(
                f"{report.METHOD_LABELS.get(name, name)} is slow: it ran on a seeded random sample "
                f"of {n_sampled} of the {n_model} test images (`evaluate.{key}`, seed "
                f"{params.seed}); its figures are over that sample, and its paired margins "
                "compare the model on the same images."
            )
    if "patchmatch" in methods:
        notes.append(
            "PatchMatch (Barnes et al. 2009): the `pypatchmatch` wheel's exemplar-based fill, "
            f"patch radius {params.patchmatch_patch_size} (`evaluate.patchmatch_patch_size`), "
            f"its random search seeded with `evaluate.seed` ({params.seed})."
        )
    for name in params.baselines:
        reason = bl.unavailable_reason(name) if name not in methods else None
        if reason:
            notes.append(f"{report.METHOD_LABELS.get(name, name)} was not run: {reason}.")
    lpips_net = params.lpips_net
    if "lpips" in evaluation_per_image and evaluation_per_image["lpips"].notna().any():
        backbone = {"alex": "AlexNet", "vgg": "VGG-16"}.get(lpips_net, lpips_net)
        notes.append(
            f"LPIPS v0.1 (Zhang et al. 2018) of the composite against the ground truth, {backbone} "
            f"backbone (`evaluate.lpips_net`), as the reference `lpips` package computes it; "
            "lower is better."
        )
    else:
        notes.append(
            "LPIPS was not computed (ImageNet weights absent: run `aerial-inpainting weights "
            "fetch`, or `evaluate.lpips_net` is none)."
        )
    training = (getattr(model, "extra", None) or {}).get("training")
    metrics = {**report.mlflow_metrics(summary), **report.margin_metrics(margins)}
    markdown = report.summary_markdown(summary, notes, training=training, margins=margins)
    return summary, markdown, metrics


def plot_evaluation(evaluation_per_image: pd.DataFrame) -> Figure:
    """Each metric against hole ratio, for the model and every baseline."""
    return report.plot_metrics_vs_hole_ratio(evaluation_per_image)


EXAMPLE_BASELINES = ("telea", "patchmatch")
"""The baselines drawn beside the model in ``evaluation_examples`` (those that were scored)."""


def plot_evaluation_examples(
    images: np.ndarray,
    evaluation_set: pd.DataFrame,
    evaluation_masks: np.ndarray,
    model_outputs: np.ndarray,
    evaluation_per_image: pd.DataFrame,
    params: Mapping[str, Any],
) -> Figure:
    """The model's best, median and worst test images by composite PSNR, each beside OpenCV
    Telea and PatchMatch (:data:`EXAMPLE_BASELINES`, those scored in ``evaluation_per_image``)
    and the ground truth, with every panel's PSNR.

    When PatchMatch was scored, the examples are chosen among the images of its sample
    (:func:`seeded_sample`), so every row has it. The baselines' fills are recomputed for
    these few images with the same parameters (deterministic: the scored fills).
    """
    params = EvaluateParams.parse(params)
    per_image = evaluation_per_image
    shown = [m for m in EXAMPLE_BASELINES if m in set(per_image["method"])]
    among = None
    if "patchmatch" in shown:
        among = per_image.loc[per_image["method"] == "patchmatch", "mask_id"].tolist()
    picks = report.select_examples(per_image, params.num_examples, among=among)
    position = {m: i for i, m in enumerate(evaluation_set["mask_id"])}
    idx = np.array([position[mask_id] for _, mask_id in picks], dtype=int)
    truth = np.asarray(images[evaluation_set["row"].to_numpy()[idx]])
    masks = evaluation_masks[idx]
    fills = {
        name: bl.inpaint_batch(bl.get_baseline(name, _baseline_params(params)), truth, masks)
        for name in shown
    }
    fills[report.MODEL] = model_outputs[idx]
    mask_ids = [mask_id for _, mask_id in picks]
    scores = {}
    for name in fills:
        psnr = per_image[per_image["method"] == name].set_index("mask_id")["psnr"]
        scores[name] = [float(psnr.get(m, np.nan)) for m in mask_ids]
    return report.plot_examples(
        truth, masks, fills, [f"{label}\n{mask_id}" for label, mask_id in picks], scores
    )


HEADLINE_BASELINES = ("telea", "patchmatch")
"""The baselines whose figures the headline gives beside the model's (those evaluated): the
best classical method of each family, diffusion and exemplar-based."""


def report_headline(evaluation_summary: pd.DataFrame, model: torch.nn.Module) -> None:
    """Log and print the headline: the model's composite PSNR/SSIM/LPIPS with Telea's and
    PatchMatch's beside it (:data:`HEADLINE_BASELINES`),
    and ``(undertrained: 219 of 6,000 steps in the 6-minute budget; ...)`` when the evaluated
    model's training run was cut short by its wall-time budget (the summary its file's header
    holds, ``model.extra["training"]``; a WARNING then)."""
    training = (getattr(model, "extra", None) or {}).get("training")
    text = report.headline(evaluation_summary, baseline=HEADLINE_BASELINES, training=training)
    if report.undertrained_note(training):
        logger.warning(text)
    else:
        logger.info(text)
    print(text)


def record_model_score(
    evaluation_summary: pd.DataFrame,
    model: torch.nn.Module,
    test_split: pd.DataFrame,
    data_processing: Mapping[str, Any],
) -> dict[str, dict[str, Any]]:
    """The evaluated model's score on this test split, as one record for ``auto`` model
    selection (:mod:`aerial_inpainting.model_selection`): ``{"<weights digest>_<split
    digest>": record}`` (a partition of the catalog's ``model_scores``). The record names the
    model by a digest of its weights and the split by the parameters that fix it
    (``params:data_processing``, the data source, the number of test images scored)."""
    from aerial_inpainting.model_selection import (
        score_record,
        split_definition,
        split_digest,
        weights_digest,
    )

    has_source = "data_source" in test_split and len(test_split)
    sources = sorted(set(test_split["data_source"].astype(str))) if has_source else ["unknown"]
    overall = evaluation_summary[
        (evaluation_summary["method"] == "model") & (evaluation_summary["group_type"] == "overall")
    ]
    n_images = int(overall["n"].iloc[0]) if len(overall) else len(test_split)
    definition = split_definition(data_processing, "+".join(sources), n_images)
    digest = weights_digest(model)
    record = score_record(evaluation_summary, digest, definition)
    logger.info(
        "Recorded the model's test score (weights %s) for `auto` model selection: PSNR %.2f dB",
        digest,
        record["scores"]["psnr_mean"],
    )
    return {f"{digest}_{split_digest(definition)}": record}
