"""benchmarks/gpu_check.py, the prepared GPU check, in its --cpu-dry-run form: it must keep
working before a GPU is lent. Tiny generated images only (never ../shared)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT

from aerial_inpainting.imaging.synthetic import write_synthetic_dataset

SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.py"
SECTION_ORDER = ["tests", "kedro", "training_step", "inference"]


def run_check(tmp_path: Path, *args: str, timeout: float = 3600) -> tuple[int, dict, str]:
    """Run the script in a fresh process; temporary files under ``tmp_path``.

    The dry run takes about 1.5 minutes on a quiet 2-core machine; the timeout only guards
    against a hang (a shared machine under heavy load was seen to take ten times longer)."""
    out = tmp_path / "out"
    env = {
        **os.environ,
        "TMPDIR": str(tmp_path),  # its temporary project and pytest XML land here
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out-dir", str(out), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    report = json.loads((out / "gpu_check.json").read_text())
    return proc.returncode, report, (out / "gpu_check.md").read_text()


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """A Kaggle-layout folder: Aerial_Landscapes/<Class>/<NNN>.jpg, 3 classes x 5, 64 px."""
    root = tmp_path / "images"
    write_synthetic_dataset(
        root / "Aerial_Landscapes",
        seed=3,
        classes=("Agriculture", "Forest", "Lake"),
        images_per_class=5,
        size=64,
    )
    return root


@pytest.mark.slow
def test_cpu_dry_run_runs_every_section_and_writes_both_reports(tmp_path, image_dir):
    rc, report, md = run_check(
        tmp_path, "--cpu-dry-run", "--images-dir", str(image_dir), "--keep-workdir"
    )
    sections = report["sections"]
    assert rc == 0, json.dumps({k: v.get("error") for k, v in sections.items()}, indent=1)
    assert report["mode"] == "cpu-dry-run" and report["all_ok"] is True
    assert list(sections) == SECTION_ORDER
    assert {s["issue_item"] for s in sections.values()} == {1, 2, 3, 4}
    assert all(s["status"] == "ok" and s["duration_s"] > 0 for s in sections.values())
    assert report["environment"]["torch"] == torch.__version__

    tests = sections["tests"]
    assert tests["tests"] > 0 and tests["passed"] == tests["tests"] and tests["failures"] == 0

    step = sections["training_step"]
    configs = step["configs"]
    assert set(configs) == {
        "project, fp32, NCHW",
        "project, bf16 autocast, channels_last",
        "original design, fp32, NCHW",
    }
    for c in configs.values():
        assert c["images_per_s"] > 0 and c["loss_finite"]
        assert c["images_per_s"] == pytest.approx(step["batch"] / c["median_s"])
    # the original design's dense mask convolutions cost FLOPs the project does not spend
    assert (
        configs["original design, fp32, NCHW"]["gflop_per_step"]
        > configs["project, fp32, NCHW"]["gflop_per_step"]
    )
    assert step["sizing"]["steps_in_budget"] == int(110 * 60 / step["sizing"]["step_s"])

    infer = sections["inference"]
    assert infer["batch"]["best_images_per_s"] > 0
    assert infer["large_image"]["size"] == 256 and infer["large_image"]["median_s"] > 0

    kedro = sections["kedro"]
    assert kedro["images_dir"] == str(image_dir) and kedro["images_copied"] == 3 * 4
    assert kedro["train_run"]["exit_code"] == 0 and kedro["evaluate_run"]["exit_code"] == 0
    assert kedro["final_step"] == 3
    assert kedro["train_run"]["headline"].startswith("Mean PSNR")
    # the MLflow store, read independently through MLflow's own client
    from mlflow.tracking import MlflowClient

    project = Path(kedro["project"])
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("aerial_inpainting")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert all("evaluate.model.psnr_mean" in r.data.metrics for r in runs)
    assert any("loss_total" in r.data.metrics for r in runs)

    assert md.startswith("# GPU check (cpu-dry-run)")
    for title in ("1. CUDA subset", "2. Training step", "3. Inference", "4. `kedro run"):
        assert f"## {title}" in md


def test_a_failing_section_is_recorded_and_the_next_one_runs(tmp_path):
    rc, report, md = run_check(
        tmp_path,
        "--cpu-dry-run",
        "--sections",
        "kedro,tests",
        "--images-dir",
        str(tmp_path / "missing"),
    )
    assert rc == 1 and report["all_ok"] is False
    kedro, tests = report["sections"]["kedro"], report["sections"]["tests"]
    assert kedro["status"] == "failed" and "missing: no such folder" in kedro["error"]
    assert tests["status"] == "ok" and tests["passed"] > 0
    assert "**failed**" in md


def test_a_section_that_does_not_fit_the_budget_is_skipped(tmp_path):
    rc, report, md = run_check(
        tmp_path, "--cpu-dry-run", "--sections", "inference", "--budget-s", "0"
    )
    assert rc == 1
    section = report["sections"]["inference"]
    assert section["status"] == "skipped" and "would not fit" in section["reason"]
    assert "skipped: would not fit" in md


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message on a machine without CUDA"
)
def test_without_cuda_the_gpu_mode_says_so(tmp_path):
    rc, report, md = run_check(tmp_path, "--sections", "inference")
    assert rc == 2 and "CUDA is not available" in report["error"]
    assert report["sections"] == {} and "--cpu-dry-run" in md
