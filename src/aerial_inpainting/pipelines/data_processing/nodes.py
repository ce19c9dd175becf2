"""Nodes of the data_processing pipeline: ingest, split, masks. Thin wrappers over imaging/."""

from __future__ import annotations

import logging
import re
import zlib
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from aerial_inpainting.datasets import AerialListing
from aerial_inpainting.imaging.buckets import BUCKET_LABELS, bucket_of, hole_ratio
from aerial_inpainting.imaging.decode import decode_images
from aerial_inpainting.imaging.io import center_crop_resize
from aerial_inpainting.imaging.masks import (
    TEST_STREAM,
    TRAIN_STREAM,
    VAL_STREAM,
    MaskShapeConfig,
    mask_in_bucket,
    mask_rng,
)
from aerial_inpainting.imaging.synthetic import (
    SYNTHETIC_CLASSES,
    generate_scene,
    scene_rng,
    synthetic_file_name,
)
from aerial_inpainting.parameters import (
    DataProcessingParams,
    LargeHolesParams,
    MaskParams,
)

logger = logging.getLogger(__name__)

INDEX_COLUMNS = [
    "image_id",
    "class_name",
    "source_file",
    "original_width",
    "original_height",
    "original_mode",
    "data_source",
    "row",
]
REPORT_COLUMNS = ["source_file", "class_name", "problem", "action"]
EXPECTED_LAYOUT = "data/01_raw/Aerial_Landscapes/<Class>/<NNN>.jpg"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "x"


def _image_ids(entries: list[tuple[str, str]]) -> list[str]:
    """``<class_slug>_<stem_slug>``; the extension is appended when two files share a stem."""
    base = [f"{_slug(c)}_{_slug(Path(p).stem)}" for c, p in entries]
    counts = Counter(base)
    ids = [
        f"{b}_{_slug(Path(p).suffix)}" if counts[b] > 1 else b
        for b, (_, p) in zip(base, entries, strict=True)
    ]
    if len(set(ids)) != len(ids):  # pathological names: fall back to a positional suffix
        ids = [f"{i}_{k}" for k, i in enumerate(ids)]
    return ids


def _progress(params: DataProcessingParams) -> bool | None:
    return params.progress_bar


def _synthetic_images(
    listing: AerialListing, params: DataProcessingParams
) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    synth = params.synthetic
    size = params.image_size
    gen_size = int(synth.size or size)
    classes = list(synth.classes or SYNTHETIC_CLASSES)
    per_class = synth.images_per_class
    seed = synth.seed
    logger.warning(
        "SYNTHETIC DATA: raw folder %s is %s, so %d procedurally generated scenes "
        "(%d classes x %d, seed %d) are used. These are NOT SkyView aerial photographs; "
        "put the Kaggle images at %s for real results.",
        listing.root,
        "missing" if not listing.exists else "empty",
        len(classes) * per_class,
        len(classes),
        per_class,
        seed,
        EXPECTED_LAYOUT,
    )
    images = np.empty((len(classes) * per_class, size, size, 3), np.uint8)
    rows = []
    jobs = [(c, i) for c in classes for i in range(per_class)]
    for row, (class_name, index) in enumerate(
        tqdm(jobs, desc="Generating synthetic scenes", unit="img", disable=_disabled(params))
    ):
        scene = generate_scene(class_name, scene_rng(seed, class_name, index), gen_size)
        images[row] = center_crop_resize(scene, size)
        rows.append(
            {
                "class_name": class_name,
                "source_file": f"{class_name}/{synthetic_file_name(index)}",
                "original_width": gen_size,
                "original_height": gen_size,
                "original_mode": "RGB",
                "data_source": "synthetic",
                "row": row,
            }
        )
    index = pd.DataFrame(rows)
    index.insert(
        0, "image_id", _image_ids(list(zip(index.class_name, index.source_file, strict=True)))
    )
    report = pd.DataFrame(
        [
            *listing.problems,
            {
                "source_file": "",
                "class_name": "",
                "problem": f"raw folder {'missing' if not listing.exists else 'empty'} "
                f"(expected {EXPECTED_LAYOUT})",
                "action": f"used {len(images)} SYNTHETIC images instead",
            },
        ],
        columns=REPORT_COLUMNS,
    )
    return images, index[INDEX_COLUMNS], report


def _disabled(params: DataProcessingParams) -> bool | None:
    progress = _progress(params)
    return None if progress is None else not progress


def ingest_images(
    raw_aerial_landscapes: AerialListing, params: Mapping[str, Any]
) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    """Decode every class folder into one uint8 stack, an index table and a quality report.

    Falls back to seeded synthetic scenes when the raw folder is missing or empty. Files
    that cannot be read are skipped and reported; the raw folder is only ever read.
    """
    params = DataProcessingParams.parse(params)
    listing = raw_aerial_landscapes
    if listing.is_empty:
        return _synthetic_images(listing, params)

    size = params.image_size
    small_images = params.small_images
    entries = listing.entries
    ids = _image_ids(entries)
    images, outcomes = decode_images(
        [path for _, path in entries],
        size,
        small_images=small_images,
        num_workers=params.num_workers,
        progress=_progress(params),
    )

    rows, problems = _index_rows(listing, ids, outcomes, size)
    report = pd.DataFrame(problems, columns=REPORT_COLUMNS)
    skipped = report[report.action == "skipped"]
    if not rows:
        examples = "; ".join(f"{r.source_file}: {r.problem}" for r in skipped.head(5).itertuples())
        raise ValueError(
            f"No readable image in {listing.root} ({listing.n_files} files seen, none usable"
            f"{': ' + examples if examples else ''}). Put the SkyView images as "
            f"{EXPECTED_LAYOUT} (one folder per class, JPEG/PNG/TIFF files inside), or empty "
            f"the folder to run on the built-in synthetic data."
        )
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    n_classes = index.class_name.nunique()
    logger.info(
        "Ingested %d real images from %d classes in %s", len(index), n_classes, listing.root
    )
    if len(skipped):
        counts = Counter(p.split(" (")[0] for p in skipped.problem)
        logger.warning(
            "Skipped %d of %d files (%s); details in the data-quality report",
            len(skipped),
            listing.n_files,
            ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())),
        )
    n_other = len(report) - len(skipped)
    if n_other:
        logger.warning(
            "%d other data-quality notes (empty class folders, upscaled images)", n_other
        )
    return images, index, report


def _index_rows(
    listing: AerialListing, ids: list[str], outcomes: list, size: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(index rows of the decoded images, data-quality rows: the listing's problems, then
    the files skipped or upscaled), from the decoding outcomes of ``listing.entries``."""
    problems = list(listing.problems)
    rows: list[dict[str, Any]] = []
    for image_id, (class_name, path), outcome in zip(ids, listing.entries, outcomes, strict=True):
        source = listing.relative(path)
        if not outcome.ok:
            problems.append(
                {
                    "source_file": source,
                    "class_name": class_name,
                    "problem": outcome.reason,
                    "action": "skipped",
                }
            )
            continue
        if outcome.upscaled:
            problems.append(
                {
                    "source_file": source,
                    "class_name": class_name,
                    "problem": f"image smaller than the crop ({outcome.original_width}x"
                    f"{outcome.original_height} < {size}x{size})",
                    "action": "upscaled (kept)",
                }
            )
        rows.append(
            {
                "image_id": image_id,
                "class_name": class_name,
                "source_file": source,
                "original_width": outcome.original_width,
                "original_height": outcome.original_height,
                "original_mode": outcome.original_mode,
                "data_source": "real",
                "row": len(rows),
            }
        )
    return rows, problems


def split_train_test(
    image_index: pd.DataFrame, params: Mapping[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified, seeded train/test split: the test fraction is taken inside every class.

    Each class gets its own generator, seeded from (seed, class name), so adding a class
    never changes the split of the others. Every class lands in both splits.
    """
    split = DataProcessingParams.parse(params).split
    seed, fraction = split.seed, split.test_fraction
    if not 0 < fraction < 1:
        raise ValueError(f"split.test_fraction must be in (0, 1), got {fraction}")
    counts = image_index.groupby("class_name").size()
    too_small = counts[counts < 2]
    if len(too_small):
        raise ValueError(
            "Cannot split: every class needs at least 2 images (one train, one test); "
            f"too few in {', '.join(f'{c} ({n})' for c, n in too_small.items())}"
        )
    test_rows = []
    for class_name in sorted(counts.index):
        rows = np.sort(image_index.loc[image_index.class_name == class_name, "row"].to_numpy())
        n_test = min(max(int(np.floor(len(rows) * fraction + 0.5)), 1), len(rows) - 1)
        rng = np.random.default_rng([seed, zlib.crc32(class_name.encode())])
        test_rows.extend(rows[rng.permutation(len(rows))[:n_test]].tolist())
    is_test = image_index.row.isin(test_rows)
    ordered = image_index.sort_values("row", kind="stable")
    train = ordered[~ordered.row.isin(test_rows)].reset_index(drop=True)
    test = ordered[ordered.row.isin(test_rows)].reset_index(drop=True)
    logger.info(
        "Split %d images into %d train / %d test (test fraction %.3f per class, seed %d)",
        len(image_index),
        len(train),
        int(is_test.sum()),
        fraction,
        seed,
    )
    return train, test


def split_train_validation(
    train_split: pd.DataFrame, params: Mapping[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Carve a stratified, seeded validation split out of the training split.

    ``split.val_fraction`` of every class (at least one image while the class keeps one for
    training); each class's generator is seeded from (seed, class name, 1), independent of the
    test split's. Training monitoring and the choice of checkpoints use it, never the test split.
    Returns ``(fit_split, val_split)``.
    """
    split = DataProcessingParams.parse(params).split
    seed, fraction = split.seed, split.val_fraction
    if not 0 <= fraction < 1:
        raise ValueError(
            f"parameters_data_processing.yml: split.val_fraction must be in [0, 1), got {fraction}"
        )
    val_rows: list[int] = []
    for class_name in sorted(train_split.class_name.unique()) if fraction else []:
        rows = np.sort(train_split.loc[train_split.class_name == class_name, "row"].to_numpy())
        n_val = min(max(int(np.floor(len(rows) * fraction + 0.5)), 1), len(rows) - 1)
        rng = np.random.default_rng([seed, zlib.crc32(class_name.encode()), 1])
        val_rows.extend(rows[rng.permutation(len(rows))[:n_val]].tolist())
    is_val = train_split.row.isin(val_rows)
    fit = train_split[~is_val].reset_index(drop=True)
    val = train_split[is_val].reset_index(drop=True)
    logger.info("Validation split: %d images (%d left for fitting)", len(val), len(fit))
    return fit, val


def _mask_params(params: Mapping[str, Any]) -> tuple[int, int, MaskShapeConfig, MaskParams]:
    parsed = DataProcessingParams.parse(params)
    masks = parsed.masks
    return parsed.image_size, masks.seed, MaskShapeConfig.from_params(masks.shapes), masks


def _balanced_buckets(n: int, rng: np.random.Generator) -> list[str]:
    """Buckets for n masks: round-robin over a seeded shuffled order (counts differ by <= 1)."""
    order = rng.permutation(n)
    buckets = [""] * n
    for position, item in enumerate(order):
        buckets[item] = BUCKET_LABELS[position % len(BUCKET_LABELS)]
    return buckets


def _make_masks(
    prefix: str, n: int, stream: int, params: Mapping[str, Any]
) -> tuple[dict[str, np.ndarray], list[str], list[float], list[str]]:
    params = DataProcessingParams.parse(params)
    size, seed, config, _ = _mask_params(params)
    buckets = _balanced_buckets(n, np.random.default_rng([seed, stream, 2**31]))
    masks, ids, ratios = {}, [], []
    for k in tqdm(range(n), desc=f"{prefix} masks", unit="mask", disable=_disabled(params)):
        mask = mask_in_bucket(size, buckets[k], mask_rng(seed, stream, k), config)
        mask_id = f"{prefix}_{k:05d}"
        masks[mask_id] = mask
        ids.append(mask_id)
        ratios.append(round(hole_ratio(mask), 6))
    wrong = [m for m, r, b in zip(ids, ratios, buckets, strict=True) if bucket_of(r) != b]
    if wrong:  # cannot happen unless mask_in_bucket is broken; never write bad artefacts
        raise RuntimeError(f"Masks outside their hole-ratio bucket: {wrong[:5]}")
    return masks, ids, ratios, buckets


def _masks_for_split(
    split: pd.DataFrame, prefix: str, stream: int, params: Mapping[str, Any]
) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """One fixed mask per image of ``split`` from its own random stream, buckets balanced."""
    masks, ids, ratios, buckets = _make_masks(prefix, len(split), stream, params)
    index = pd.DataFrame(
        {
            "mask_id": ids,
            "image_id": split.image_id.to_list(),
            "hole_ratio": ratios,
            "bucket": buckets,
        }
    )
    logger.info(
        "Generated %d %s masks: %s", len(index), prefix, dict(sorted(Counter(buckets).items()))
    )
    return masks, index


def generate_test_masks(
    test_split: pd.DataFrame, params: Mapping[str, Any]
) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """One fixed mask per test image; hole ratios spread evenly over the six buckets."""
    return _masks_for_split(test_split, "test", TEST_STREAM, params)


def generate_val_masks(
    val_split: pd.DataFrame, params: Mapping[str, Any]
) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """One fixed mask per validation image, like the test masks but from their own stream."""
    return _masks_for_split(val_split, "val", VAL_STREAM, params)


def generate_train_masks(params: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """A seeded pool of training masks, hole ratios spread over (0.01, 0.6]."""
    _, _, _, mask_params = _mask_params(params)
    n = mask_params.train_pool_size
    if n < 1:
        raise ValueError(f"masks.train_pool_size must be >= 1, got {n}")
    masks, ids, ratios, buckets = _make_masks("train", n, TRAIN_STREAM, params)
    index = pd.DataFrame({"mask_id": ids, "hole_ratio": ratios, "bucket": buckets})
    logger.info("Generated a pool of %d training masks", len(index))
    return masks, index


def plot_mask_examples(test_masks: dict[str, np.ndarray], test_mask_index: pd.DataFrame) -> Figure:
    """One test mask per hole-ratio bucket (white = valid, black = hole)."""
    figure = Figure(figsize=(2.2 * len(BUCKET_LABELS), 2.6))
    axes = figure.subplots(1, len(BUCKET_LABELS))
    for ax, label in zip(axes, BUCKET_LABELS, strict=True):
        ax.set_axis_off()
        rows = test_mask_index[test_mask_index.bucket == label].sort_values("mask_id")
        if rows.empty:
            ax.set_title(f"{label}\n(none)", fontsize=9)
            continue
        row = rows.iloc[0]
        ax.imshow(
            np.asarray(test_masks[row.mask_id]) * 255,
            cmap="gray",
            vmin=0,
            vmax=255,
            interpolation="nearest",
        )
        ax.set_title(f"{label}\n{row.mask_id}: {row.hole_ratio:.3f}", fontsize=9)
    figure.suptitle(
        "Test masks, one per hole-ratio bucket (white = valid, black = hole)", fontsize=10
    )
    figure.tight_layout()
    return figure


def generate_large_test_masks(
    test_split: pd.DataFrame, image_size: int, params: Mapping[str, Any]
) -> tuple[dict[str, np.ndarray], pd.DataFrame, pd.DataFrame]:
    """A second evaluation mask set: one large compact hole per test image (issue 14).

    Rectangles and blobs up to ``params["max_fraction"]`` of the side
    (:mod:`aerial_inpainting.imaging.large_holes`), seeded by ``params["seed"]`` and the
    image's position in ``test_split``, for a seeded sample of ``params["n_images"]`` test images
    (null: all). Returns masks (uint8 (size, size), 1 = valid) keyed by ``large_<i>``, their
    index (mask_id, image_id, kind, hole_ratio, bucket) and the sampled rows of ``test_split``.
    """
    from aerial_inpainting.imaging.large_holes import large_hole_masks

    params = LargeHolesParams.parse(params)
    n_images = params.n_images
    if n_images is not None and n_images < len(test_split):
        # A seeded sample keeps the second evaluation cheap; its rows stay in test-split order.
        rng = np.random.default_rng([params.seed, 2**31])
        test_split = test_split.iloc[np.sort(rng.permutation(len(test_split))[:n_images])]
    masks, index = large_hole_masks(
        test_split.image_id.astype(str).to_list(),
        int(image_size),
        seed=params.seed,
        min_fraction=params.min_fraction,
        max_fraction=params.max_fraction,
    )
    index["bucket"] = [bucket_of(r) for r in index["hole_ratio"]]
    logger.info(
        "Generated %d large-hole test masks: %s",
        len(index),
        dict(sorted(Counter(index["kind"]).items())),
    )
    return masks, index, test_split.reset_index(drop=True)
