"""The GPU bundle and the device run (issue 25), rehearsed on the CPU so neither rots before a
device is lent: a tiny project's data (generated images, never ../shared) packed by
benchmarks/gpu/bundle.py, then `bash benchmarks/gpu/run.sh --dry-run` with Kedro and MLflow
made unimportable, as on the device machine."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, run_pipeline

from aerial_inpainting.imaging.synthetic import write_synthetic_dataset
from aerial_inpainting.pconv.checkpoint import load_model


def _load_bundle_module():
    """benchmarks/gpu/bundle.py (``benchmarks`` here would be this tests package)."""
    spec = importlib.util.spec_from_file_location(
        "gpu_bundle", REPO_ROOT / "benchmarks/gpu/bundle.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bundle = _load_bundle_module()

BLOCKER = """
import sys
class _NotOnTheDevice:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not on the device machine)")
sys.meta_path.insert(0, _NotOnTheDevice())
"""
NOT_ON_THE_DEVICE = ("kedro", "kedro_datasets", "kedro_mlflow", "kedro_viz", "mlflow", "pydantic")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny project after `kedro run --pipelines=data_processing`: 4 classes x 12 images."""
    from conftest import make_kedro_project

    root = make_kedro_project(tmp_path_factory.mktemp("gpu") / "project")
    write_synthetic_dataset(
        root / "data/01_raw/Aerial_Landscapes",
        seed=3,
        classes=("Agriculture", "Forest", "Lake", "Desert"),
        images_per_class=12,
        size=64,
    )
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    try:
        run_pipeline(root, "data_processing", {"data_processing.image_size": 64})
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    return root


def _make(project: Path, out: Path, *extra: str) -> dict:
    args = bundle.parse_args(["--project", str(project), "--out", str(out), *extra])
    try:
        return bundle.make_bundle(args)
    except bundle.BundleError as error:
        if "pip download" in str(error):
            pytest.skip(f"the package registry cannot be reached: {error}")
        raise


def test_the_bundle_holds_what_the_device_lacks(project, tmp_path, imagenet_weights):
    manifest = _make(project, tmp_path / "b", "--val-images", "4")
    names = " ".join(manifest["wheels"])
    assert "pytorch_msssim" in names and "lpips" in names
    assert manifest["travel_bytes"] <= bundle.LIMIT_BYTES
    with np.load(tmp_path / "b/data/train.npz", allow_pickle=False) as train:
        assert len(train["offsets"]) - 1 == manifest["train"]["images"]
        assert set(train["image_id"]).isdisjoint(
            set(np.load(tmp_path / "b/data/val.npz")["image_id"])
        )
    counts = list(manifest["train"]["per_class"].values())
    assert max(counts) - min(counts) <= 1  # stratified
    assert manifest["val"]["images"] == 4


def test_as_many_training_images_as_fit_and_an_overfull_bundle_is_refused(
    project, tmp_path, imagenet_weights, monkeypatch
):
    full = _make(project, tmp_path / "full", "--no-wheels")
    room = full["travel_bytes"] - full["files"]["data/train.npz"]["bytes"]
    # Leave room for about half the training images: fewer are taken, still by class.
    half = full["files"]["data/train.npz"]["bytes"] // 2
    monkeypatch.setattr(bundle, "LIMIT_BYTES", room + half + int(1.5 * 2**20))
    partial = _make(project, tmp_path / "half", "--no-wheels")
    assert 0 < partial["train"]["images"] < full["train"]["images"]
    counts = list(partial["train"]["per_class"].values())
    assert max(counts) - min(counts) <= 1
    monkeypatch.setattr(bundle, "LIMIT_BYTES", room // 2)
    with pytest.raises(bundle.BundleError, match="no room for training images"):
        bundle.make_bundle(
            bundle.parse_args(
                ["--project", str(project), "--out", str(tmp_path / "x"), "--no-wheels"]
            )
        )


def test_the_device_run_rehearsed_on_the_cpu_without_kedro_or_mlflow(
    project, tmp_path, imagenet_weights
):
    _make(project, tmp_path / "bundle", "--val-images", "6")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER.format(blocked=NOT_ON_THE_DEVICE))
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "PYTHON": sys.executable,
        "GPU_BUNDLE": str(tmp_path / "bundle"),
        "OUT": str(out),
        "TMPDIR": str(tmp_path),
    }
    proc = subprocess.run(
        ["bash", str(REPO_ROOT / "benchmarks/gpu/run.sh"), "--dry-run", "--pool-size", "16"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    assert report["preflight"]["ok"] and report["tests"]["ok"]
    assert set(report["arms"]) == {"none", "pushpull"}
    assert all(arm["ok"] and arm["info"]["final_step"] == 6 for arm in report["arms"].values())
    assert set(report["score"]["methods"]) == {"telea", "pull_push", "none", "pushpull"}
    for name in ("run.log", "pytest.log", "report.md", "curves.png"):
        assert (out / name).stat().st_size > 0, name
    assert "preflight passed" in (out / "run.log").read_text()
    prefilled = load_model(out / "model-pushpull.safetensors")
    assert prefilled.config.prefill == "pushpull" and prefilled.extra["arm"] == "pushpull"
    assert load_model(out / "model-none.safetensors").config.prefill == "none"

    # The shipping step: the returned model and the shipped one through the evaluate pipeline
    # of the project, then the rule of benchmarks/gpu/ship.py on the two per-image tables.
    tables = {}
    for name, model in (
        ("candidate", out / "model-pushpull.safetensors"),
        ("shipped", "pretrained"),
    ):
        params = {
            "model": str(model),
            "biharmonic_sample": 2,
            "patchmatch_sample": 2,
            "num_workers": 1,
            "lpips_net": "alex",
        }
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
        try:
            run_pipeline(project, "evaluate", {"evaluate": params})
        finally:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        newest = sorted((project / "data/08_reporting/evaluation_per_image.csv").iterdir())[-1]
        tables[name] = newest / "evaluation_per_image.csv"
    ship = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks/gpu/ship.py"), str(tables["candidate"]),
         str(tables["shipped"]), "--out", str(tmp_path / "ship.json")],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert ship.returncode in (0, 1), ship.stderr
    decision = json.loads((tmp_path / "ship.json").read_text())
    assert set(decision["telea"]) == set(decision["shipped"]) == {"psnr", "ssim", "lpips"}
    assert ("ships:" in ship.stdout) == decision["ships"] == (ship.returncode == 0)
