"""The ingest node: listing, bad input, synthetic fallback, index table."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import conf_parameters
from PIL import Image

from aerial_inpainting.datasets import AerialFolderDataset, ImageArrayDataset
from aerial_inpainting.imaging import decode
from aerial_inpainting.pipelines.data_processing.nodes import (
    INDEX_COLUMNS,
    REPORT_COLUMNS,
    ingest_images,
)

PARAMS = conf_parameters(
    "data_processing",
    {
        "image_size": 32,
        "num_workers": 1,
        "progress_bar": False,
        "synthetic": {"seed": 3, "classes": ["Forest", "Desert"], "images_per_class": 3},
    },
)


def _tree_hashes(root: Path) -> dict[str, str]:
    """Every path under root (files and folders) with its content hash."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "dir"
        for p in sorted(root.rglob("*"))
    }


def _ingest(root: Path, **overrides):
    return ingest_images(AerialFolderDataset(str(root)).load(), {**PARAMS, **overrides})


def test_ingest_reads_every_class_in_sorted_order(tiny_aerial_root: Path):
    images, index, report = _ingest(tiny_aerial_root)
    assert list(index.columns) == INDEX_COLUMNS
    assert images.shape == (18, 32, 32, 3) and images.dtype == np.uint8
    assert index.row.tolist() == list(range(18))
    assert index.image_id.is_unique
    assert index.image_id.iloc[0] == "agriculture_001"
    assert sorted(index.class_name.unique()) == ["Agriculture", "Forest", "Lake"]
    assert set(index.data_source) == {"real"}
    assert report.empty and list(report.columns) == REPORT_COLUMNS
    # each stored row is exactly the decoded file (no re-encoding)
    for row in index.itertuples():
        decoded = np.asarray(Image.open(tiny_aerial_root / row.source_file).convert("RGB"))
        np.testing.assert_array_equal(images[row.row], decoded)


def test_process_pool_gives_same_result(tiny_aerial_root: Path, monkeypatch: pytest.MonkeyPatch):
    serial, index_a, _ = _ingest(tiny_aerial_root)
    monkeypatch.setattr(decode, "MIN_FILES_FOR_POOL", 1)
    monkeypatch.setattr(decode, "CHUNK_SIZE", 4)
    pooled, index_b, _ = _ingest(tiny_aerial_root, num_workers=2)
    np.testing.assert_array_equal(serial, pooled)
    assert index_a.equals(index_b)


def _add_bad_inputs(root: Path) -> dict[str, str]:
    """Each bad case of the issue; returns source_file -> expected problem fragment."""
    good = (root / "Forest" / "001.jpg").read_bytes()
    (root / "Forest" / "900.jpg").write_bytes(good[: len(good) // 2])
    (root / "Forest" / "901.jpg").write_bytes(b"this is a text file, not a JPEG")
    (root / "Forest" / "902.jpg").write_bytes(b"")
    (root / "Forest" / "notes.txt").write_text("hello")
    Image.new("RGB", (20, 24), (9, 9, 9)).save(root / "Lake" / "903.png")
    (root / "Empty").mkdir()
    (root / "Lake" / "extra").mkdir()
    Image.new("RGB", (32, 32)).save(root / "Lake" / "extra" / "001.jpg")
    return {
        "Forest/900.jpg": "truncated",
        "Forest/901.jpg": "not a readable image",
        "Forest/902.jpg": "empty file",
        "Forest/notes.txt": "not an image file extension",
        "Lake/903.png": "smaller than the crop",
        "Empty": "class folder holds no image",
        "Lake/extra": "stray subfolder",
    }


def test_bad_inputs_are_skipped_and_reported(
    tiny_aerial_root: Path, caplog: pytest.LogCaptureFixture
):
    expected = _add_bad_inputs(tiny_aerial_root)
    before = _tree_hashes(tiny_aerial_root)
    with caplog.at_level(logging.WARNING):
        images, index, report = _ingest(tiny_aerial_root)
    assert _tree_hashes(tiny_aerial_root) == before  # raw files untouched
    assert len(images) == len(index) == 18  # only the good images
    assert "Lake/extra/001.jpg" not in set(index.source_file)
    problems = dict(zip(report.source_file, report.problem, strict=True))
    assert set(problems) == set(expected)
    for source, fragment in expected.items():
        assert fragment in problems[source], (source, problems[source])
    actions = dict(zip(report.source_file, report.action, strict=True))
    assert actions["Forest/900.jpg"] == "skipped"
    # 3 unreadable + 1 non-image + 1 too small + 1 stray subfolder
    assert "Skipped 6 of" in caplog.text
    assert "Traceback" not in caplog.text


def test_small_images_can_be_upscaled_and_are_still_reported(tiny_aerial_root: Path):
    Image.new("RGB", (20, 24), (9, 9, 9)).save(tiny_aerial_root / "Lake" / "903.png")
    images, index, report = _ingest(tiny_aerial_root, small_images="upscale")
    assert len(images) == 19
    row = index[index.source_file == "Lake/903.png"].iloc[0]
    assert (row.original_width, row.original_height) == (20, 24)
    np.testing.assert_array_equal(images[row.row], np.full((32, 32, 3), 9, np.uint8))
    assert report.action.tolist() == ["upscaled (kept)"]


def test_root_with_no_readable_image_fails_with_instructions(tmp_path: Path):
    root = tmp_path / "Aerial_Landscapes"
    (root / "Forest").mkdir(parents=True)
    (root / "Forest" / "001.jpg").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"No readable image") as info:
        _ingest(root)
    message = str(info.value)
    assert "data/01_raw/Aerial_Landscapes/<Class>/<NNN>.jpg" in message
    assert "Forest/001.jpg" in message


@pytest.mark.parametrize("make_root", [False, True])
def test_missing_or_empty_root_falls_back_to_synthetic(
    tmp_path: Path, make_root: bool, caplog: pytest.LogCaptureFixture
):
    root = tmp_path / "Aerial_Landscapes"
    if make_root:
        (root / "Forest").mkdir(parents=True)  # an empty class folder is still "empty"
    with caplog.at_level(logging.WARNING):
        images, index, report = _ingest(root)
    assert images.shape == (6, 32, 32, 3)
    assert set(index.data_source) == {"synthetic"}
    assert index.class_name.tolist() == ["Forest"] * 3 + ["Desert"] * 3
    assert "SYNTHETIC" in caplog.text and "NOT SkyView" in caplog.text
    assert report.action.iloc[-1].startswith("used 6 SYNTHETIC")
    again, _, _ = _ingest(root)
    np.testing.assert_array_equal(images, again)  # seeded


def test_image_array_dataset_round_trip(tmp_path: Path):
    data = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    dataset = ImageArrayDataset(str(tmp_path / "sub" / "images.npy"))
    assert not dataset.exists()
    dataset.save(data)
    loaded = dataset.load()
    assert isinstance(loaded, np.memmap)
    np.testing.assert_array_equal(loaded, data)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["images.npy"]  # no temp left
    with pytest.raises(Exception, match="uint8"):
        dataset.save(data.astype(np.float32))


def test_aerial_folder_dataset_is_read_only(tiny_aerial_root: Path):
    with pytest.raises(Exception, match="read-only"):
        AerialFolderDataset(str(tiny_aerial_root)).save({"x": 1})
