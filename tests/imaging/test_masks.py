"""Irregular masks: buckets, balance, binary PNG round trip, determinism."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import conf_parameters
from kedro.io import DatasetError, Version
from PIL import Image

from aerial_inpainting.datasets import MaskFolderDataset
from aerial_inpainting.imaging.buckets import BUCKET_LABELS, bucket_of
from aerial_inpainting.imaging.masks import MaskShapeConfig, mask_in_bucket, mask_rng, random_holes
from aerial_inpainting.pipelines.data_processing.nodes import (
    generate_test_masks,
    generate_train_masks,
    plot_mask_examples,
)

PARAMS = conf_parameters(
    "data_processing",
    {"image_size": 32, "progress_bar": False, "masks": {"seed": 11, "train_pool_size": 13}},
)
PARAMS["masks"]["shapes"] = {}  # MaskShapeConfig's defaults


def _test_split(n: int) -> pd.DataFrame:
    return pd.DataFrame({"image_id": [f"img_{k:03d}" for k in range(n)], "row": range(n)})


def _independent_hole_ratio(mask: np.ndarray) -> float:
    return float((np.asarray(mask) == 0).sum()) / mask.size


def test_bucket_edges_are_open_left_closed_right():
    assert bucket_of(0.01) is None and bucket_of(0.0100001) == "0.01-0.1"
    assert bucket_of(0.1) == "0.01-0.1" and bucket_of(0.6) == "0.5-0.6" and bucket_of(0.61) is None
    assert BUCKET_LABELS == ("0.01-0.1", "0.1-0.2", "0.2-0.3", "0.3-0.4", "0.4-0.5", "0.5-0.6")


@pytest.mark.parametrize("size", [16, 32, 64])
@pytest.mark.parametrize(
    ("label", "low", "high"),
    [("0.01-0.1", 0.01, 0.1), ("0.3-0.4", 0.3, 0.4), ("0.5-0.6", 0.5, 0.6)],
)
def test_mask_lands_in_requested_bucket(size: int, label: str, low: float, high: float):
    for index in range(5):
        mask = mask_in_bucket(size, label, mask_rng(0, 0, index))
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        assert low < _independent_hole_ratio(mask) <= high


def test_shapes_draw_strokes_circles_and_ellipses():
    only_circles = MaskShapeConfig(
        stroke_count=(0, 0), circle_count=(1, 1), ellipse_count=(0, 0), circle_radius=(0.2, 0.2)
    )
    holes = random_holes(np.random.default_rng(0), 64, only_circles)
    radius = round(0.2 * 64)
    # a filled disc of radius r has about pi r^2 pixels (cut by the border at most)
    assert 0 < holes.sum() <= np.pi * (radius + 1) ** 2
    with pytest.raises(ValueError, match="Unknown mask shape parameters"):
        MaskShapeConfig.from_params({"strokes": [1, 2]})


def test_test_masks_one_per_image_spread_evenly_over_buckets():
    masks, index = generate_test_masks(_test_split(25), PARAMS)
    assert list(index.columns) == ["mask_id", "image_id", "hole_ratio", "bucket"]
    assert index.image_id.tolist() == [f"img_{k:03d}" for k in range(25)]
    assert list(masks) == index.mask_id.tolist()
    counts = index.bucket.value_counts()
    assert set(counts.index) == set(BUCKET_LABELS) and counts.max() - counts.min() <= 1
    for row in index.itertuples():
        ratio = _independent_hole_ratio(masks[row.mask_id])
        assert ratio == pytest.approx(row.hole_ratio, abs=1e-6)
        low, high = (float(v) for v in row.bucket.split("-"))
        assert low < ratio <= high
    # each mask depends only on (seed, stream, index) and its bucket, not on generation order
    for k in (0, 7, 24):
        row = index.iloc[k]
        alone = mask_in_bucket(32, row.bucket, mask_rng(11, 0, k), MaskShapeConfig())
        np.testing.assert_array_equal(alone, masks[row.mask_id])


def test_train_pool_size_and_range():
    masks, index = generate_train_masks(PARAMS)
    assert len(masks) == len(index) == 13
    ratios = np.array([_independent_hole_ratio(m) for m in masks.values()])
    assert ((ratios > 0.01) & (ratios <= 0.6)).all()
    assert index.bucket.nunique() == 6


def test_mask_folder_round_trip_is_binary_and_byte_deterministic(tmp_path: Path):
    masks, _ = generate_test_masks(_test_split(12), PARAMS)
    digests = []
    for run in range(2):
        again, _ = generate_test_masks(_test_split(12), PARAMS)
        dataset = MaskFolderDataset(str(tmp_path / "test_masks"), version=Version(None, f"v{run}"))
        dataset.save(again)
        folder = tmp_path / "test_masks" / f"v{run}" / "test_masks"
        files = sorted(folder.iterdir())
        assert [f.name for f in files] == [f"{k}.png" for k in sorted(masks)]
        digests.append([hashlib.sha256(f.read_bytes()).hexdigest() for f in files])
        with Image.open(files[0]) as image:
            assert image.format == "PNG" and image.mode == "1"
            white = np.asarray(image.convert("L")) == 255
        np.testing.assert_array_equal(white, masks[files[0].stem] == 1)  # white = valid
        loaded = MaskFolderDataset(
            str(tmp_path / "test_masks"), version=Version(f"v{run}", None)
        ).load()
        assert list(loaded) == sorted(masks)
        for key, mask in loaded.items():
            assert mask.dtype == np.uint8
            np.testing.assert_array_equal(mask, masks[key])
    assert digests[0] == digests[1]
    assert not list((tmp_path / "test_masks" / "v0").glob(".*"))  # no temp folder left


def test_versioned_mask_folder_never_overwrites(tmp_path: Path):
    masks = {"a": np.ones((4, 4), np.uint8)}
    MaskFolderDataset(str(tmp_path / "m"), version=Version(None, "v1")).save(masks)
    with pytest.raises(DatasetError, match="must not exist"):
        MaskFolderDataset(str(tmp_path / "m"), version=Version(None, "v1")).save(masks)
    MaskFolderDataset(str(tmp_path / "m"), version=Version(None, "v2")).save(
        {"a": np.zeros((4, 4), np.uint8)}
    )
    latest = MaskFolderDataset(str(tmp_path / "m"), version=Version(None, None)).load()
    np.testing.assert_array_equal(latest["a"], np.zeros((4, 4)))


def test_loading_a_grey_png_names_the_file(tmp_path: Path):
    folder = tmp_path / "m"
    folder.mkdir()
    Image.fromarray(np.array([[0, 128], [255, 255]], np.uint8)).save(folder / "bad.png")
    with pytest.raises(DatasetError, match=r"bad\.png is not binary"):
        MaskFolderDataset(str(folder)).load()
    with pytest.raises(DatasetError, match="0/1"):
        MaskFolderDataset(str(tmp_path / "n")).save({"x": np.full((2, 2), 7, np.uint8)})


def test_plot_has_one_panel_per_bucket(tmp_path: Path):
    masks, index = generate_test_masks(_test_split(6), PARAMS)
    figure = plot_mask_examples(masks, index)
    assert len(figure.axes) == 6
    assert [ax.get_title().split("\n")[0] for ax in figure.axes] == list(BUCKET_LABELS)
    figure.savefig(tmp_path / "examples.png")
    assert (tmp_path / "examples.png").stat().st_size > 0
