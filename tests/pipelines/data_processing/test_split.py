"""Stratified, seeded train/test split."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import conf_parameters
from kedro.io import Version
from kedro_datasets.pandas import CSVDataset

from aerial_inpainting.pipelines.data_processing.nodes import (
    INDEX_COLUMNS,
    split_train_test,
    split_train_validation,
)


def _params(split: dict) -> dict:
    """data_processing parameters of conf/base with ``split`` merged in."""
    return conf_parameters("data_processing", {"split": split})


def _index(counts: dict[str, int]) -> pd.DataFrame:
    rows = []
    for class_name, n in counts.items():
        for k in range(n):
            rows.append(
                {
                    "image_id": f"{class_name.lower()}_{k:03d}",
                    "class_name": class_name,
                    "source_file": f"{class_name}/{k:03d}.jpg",
                    "original_width": 256,
                    "original_height": 256,
                    "original_mode": "RGB",
                    "data_source": "real",
                    "row": len(rows),
                }
            )
    return pd.DataFrame(rows, columns=INDEX_COLUMNS)


COUNTS = {"Agriculture": 40, "Beach": 20, "City": 7, "Desert": 2}


def test_split_is_stratified_and_covers_every_class():
    index = _index(COUNTS)
    train, test = split_train_test(index, _params({"seed": 1, "test_fraction": 0.1}))
    # expected per class: round(n * 0.1) clipped to [1, n - 1], computed by hand
    expected_test = {"Agriculture": 4, "Beach": 2, "City": 1, "Desert": 1}
    assert test.class_name.value_counts().to_dict() == expected_test
    assert train.class_name.value_counts().to_dict() == {
        c: COUNTS[c] - expected_test[c] for c in COUNTS
    }
    assert set(train.row).isdisjoint(test.row)
    assert sorted([*train.row, *test.row]) == index.row.tolist()
    assert list(train.columns) == INDEX_COLUMNS
    assert train.row.is_monotonic_increasing and test.row.is_monotonic_increasing


def test_split_depends_on_seed_and_fraction():
    index = _index(COUNTS)
    _, a = split_train_test(index, _params({"seed": 1, "test_fraction": 0.1}))
    _, b = split_train_test(index, _params({"seed": 2, "test_fraction": 0.1}))
    _, c = split_train_test(index, _params({"seed": 1, "test_fraction": 0.5}))
    assert a.row.tolist() != b.row.tolist()
    assert c.class_name.value_counts().to_dict() == {
        "Agriculture": 20,
        "Beach": 10,
        "City": 4,
        "Desert": 1,
    }


def test_split_of_a_class_does_not_depend_on_other_classes():
    _, full = split_train_test(_index(COUNTS), _params({"seed": 5}))
    _, alone = split_train_test(_index({"Agriculture": 40}), _params({"seed": 5}))
    assert full[full.class_name == "Agriculture"].image_id.tolist() == alone.image_id.tolist()


def test_class_with_one_image_is_a_clear_error():
    with pytest.raises(ValueError, match=r"at least 2 images.*Solo \(1\)"):
        split_train_test(_index({"Agriculture": 5, "Solo": 1}), _params({"seed": 0}))


def test_split_files_are_byte_identical_across_runs(tmp_path: Path):
    index = _index(COUNTS)
    written = []
    for run in range(2):
        train, test = split_train_test(index.sample(frac=1, random_state=run), _params({"seed": 3}))
        for name, frame in (("train", train), ("test", test)):
            dataset = CSVDataset(
                filepath=str(tmp_path / f"{name}.csv"),
                save_args={"index": False},
                version=Version(None, f"v{run}"),
            )
            dataset.save(frame)
            written.append(
                (name, (tmp_path / f"{name}.csv" / f"v{run}" / f"{name}.csv").read_bytes())
            )
    assert written[0] == written[2] and written[1] == written[3]


def test_validation_split_is_stratified_disjoint_and_leaves_the_test_split_alone():
    index = _index(COUNTS)
    params = _params({"seed": 1, "test_fraction": 0.1, "val_fraction": 0.1})
    rest, test = split_train_test(index, params)
    train, val = split_train_validation(rest, params)
    # per class of the rest (36, 18, 6, 1): round(n * 0.1) clipped to [1, n - 1], by hand;
    # Desert keeps its one image for training
    assert val.class_name.value_counts().to_dict() == {"Agriculture": 4, "Beach": 2, "City": 1}
    assert set(train.row).isdisjoint(val.row) and set(val.row).isdisjoint(test.row)
    assert sorted([*train.row, *val.row]) == sorted(rest.row)
    again_rest, again_test = split_train_test(index, params)
    pd.testing.assert_frame_equal(again_test, test)  # the test split does not see val_fraction
    pd.testing.assert_frame_equal(split_train_validation(again_rest, params)[1], val)
    none_train, none_val = split_train_validation(
        rest, {**params, "split": {**params["split"], "val_fraction": 0}}
    )
    assert none_val.empty and len(none_train) == len(rest)
    with pytest.raises(ValueError, match="val_fraction"):
        split_train_validation(rest, _params({"seed": 1, "val_fraction": 1.5}))
