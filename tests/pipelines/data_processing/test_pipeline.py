"""End to end: `data_processing` through a KedroSession in a temporary copy of the project."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from aerial_inpainting.pipelines.data_processing import create_pipeline

OVERRIDES = {
    "data_processing": {
        "image_size": 32,
        "num_workers": 1,
        "progress_bar": False,
        "synthetic": {"images_per_class": 3, "classes": ["Forest", "Lake"]},
        "masks": {"train_pool_size": 6},
    }
}


def _versions(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_pipeline_nodes_have_names_and_tags():
    pipeline = create_pipeline()
    assert {n.name for n in pipeline.nodes} == {
        "ingest_images",
        "split_train_test",
        "split_train_validation",
        "generate_test_masks",
        "generate_val_masks",
        "generate_large_test_masks",
        "generate_train_masks",
        "plot_mask_examples",
    }
    assert all("data_processing" in n.tags for n in pipeline.nodes)


@pytest.mark.slow
def test_data_processing_runs_on_a_tiny_real_layout(
    kedro_project: Path, tiny_aerial_root: Path, kedro_runner
):
    raw = kedro_project / "data" / "01_raw" / "Aerial_Landscapes"
    shutil.copytree(tiny_aerial_root, raw)
    (raw / "Forest" / "999.jpg").write_bytes(b"broken")  # one bad file, reported

    kedro_runner(kedro_project, "data_processing", OVERRIDES)
    data = kedro_project / "data"
    images = np.load(data / "03_primary" / "images.npy")
    index = pd.read_csv(data / "02_intermediate" / "image_index.csv")
    assert images.shape == (18, 32, 32, 3) and len(index) == 18
    assert set(index.data_source) == {"real"}
    report = pd.read_csv(data / "08_reporting" / "data_quality_report.csv")
    assert report.source_file.tolist() == ["Forest/999.jpg"]
    [version] = _versions(data / "05_model_input" / "test_split.csv")
    test = pd.read_csv(data / "05_model_input" / "test_split.csv" / version / "test_split.csv")
    assert sorted(test.class_name.unique()) == ["Agriculture", "Forest", "Lake"]
    masks = sorted((data / "04_feature" / "test_masks").glob("*/test_masks/*.png"))
    assert len(masks) == len(test) == 3
    assert len(list((data / "04_feature" / "train_masks").glob("*/train_masks/*.png"))) == 6
    assert Image.open(data / "08_reporting" / "mask_examples.png").size[0] > 0
    assert (kedro_project / "mlflow.db").exists()

    # A second run adds new versions beside the first ones, never overwriting them.
    first = (data / "05_model_input" / "test_split.csv" / version / "test_split.csv").read_bytes()
    kedro_runner(kedro_project, "data_processing", OVERRIDES, isolated=True)
    for folder in (
        "05_model_input/train_split.csv",
        "05_model_input/test_split.csv",
        "04_feature/test_masks",
        "04_feature/test_mask_index.csv",
        "04_feature/train_masks",
        "04_feature/train_mask_index.csv",
    ):
        assert len(_versions(data / folder)) == 2, folder
    second = sorted(_versions(data / "05_model_input" / "test_split.csv"))[-1]
    assert (
        data / "05_model_input" / "test_split.csv" / second / "test_split.csv"
    ).read_bytes() == first


@pytest.mark.slow
def test_data_processing_falls_back_to_synthetic_and_tags_mlflow(kedro_project: Path, kedro_runner):
    import mlflow

    kedro_runner(kedro_project, "data_processing", OVERRIDES, isolated=True)
    index = pd.read_csv(kedro_project / "data" / "02_intermediate" / "image_index.csv")
    assert set(index.data_source) == {"synthetic"} and len(index) == 6
    mlflow.set_tracking_uri(f"sqlite:///{kedro_project / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True)
    assert runs["tags.data_source"].tolist() == ["synthetic"]


@pytest.mark.slow
def test_kedro_viz_build_exports_the_pipelines(kedro_project: Path):
    kedro = Path(sys.executable).with_name("kedro")
    env = {
        **os.environ,
        "DO_NOT_TRACK": "1",
        "KEDRO_DISABLE_TELEMETRY": "true",
        "MPLBACKEND": "Agg",
    }
    result = subprocess.run(
        [str(kedro), "viz", "build"],
        cwd=kedro_project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    main = json.loads((kedro_project / "build" / "api" / "main").read_text())
    pipeline_ids = {p["id"] for p in main["pipelines"]}
    assert {"__default__", "data_processing"} <= pipeline_ids
    names = {n["name"] for n in main["nodes"]}
    assert {"ingest_images", "split_train_test", "generate_test_masks"} <= {
        n.split(".")[-1] for n in names
    }
    layers = set(main.get("layers", []))
    assert {"raw", "intermediate", "primary", "model_input", "reporting"} <= layers


@pytest.mark.slow
def test_an_in_process_run_leaves_no_mlflow_run_open(
    kedro_project: Path, monkeypatch: pytest.MonkeyPatch
):
    """kedro-mlflow re-enters the pipeline's run before every node; with nested runs those
    re-entries piled up on MLflow's active-run stack and the run outlived the session."""
    import mlflow
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(kedro_project)
    monkeypatch.chdir(kedro_project)
    with KedroSession.create(project_path=kedro_project, runtime_params=OVERRIDES) as session:
        session.run(pipeline_names=["data_processing"])
    assert mlflow.active_run() is None
