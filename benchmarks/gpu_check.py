"""The prepared GPU check (issue 17): prove on one CUDA GPU, in at most 8 minutes, that training works.

    python benchmarks/gpu_check.py [--out-dir benchmarks/results] [--budget-s 480]
                                   [--images-dir ../shared/data/skyview-dev] [--sections ...]
    python benchmarks/gpu_check.py --cpu-dry-run --out-dir /tmp/gpu_check   # the same, tiny, on the CPU

Sections (each timed and guarded: a failure is recorded in the report and the next section
runs; a section that would not fit in what is left of ``--budget-s`` is skipped, and each runs
under a timeout of at most what is left), in this order:

1. ``tests``: the test suite's CUDA subset, ``pytest -m cuda`` (every test taking the ``device``
   fixture, on ``cuda``: PartialConv2d forward, ``forward_upsampled`` and gradients against the
   float64 CPU reference, PConvUNet and InpaintingLoss under fp16/bf16 autocast with large holes,
   model files, a few training steps under fp32/bf16/fp16 + GradScaler, save -> resume).
4. ``kedro``: a temporary copy of the Kedro project with ``--images-per-class`` real images per
   class copied from ``--images-dir``; ``kedro run --env=gpu`` for a few hundred steps, then
   ``kedro run --env=gpu --pipelines=evaluate``; both must finish, and the project's MLflow
   SQLite store must hold their runs (training losses, ``evaluate.model.psnr_mean``). Also
   reports the images/s of the real training loop (data loading included).
2. ``training_step``: one training step at paper scale (256x256, depth 7, batch 16, full loss
   with VGG-16) in fp32 NCHW, in bf16 autocast + channels_last (fp16 where bf16 is not
   supported) and in the original design's formulation (``benchmarks/original_design.py``),
   timed round-robin in one process: images/s, speedup (goal 1.5x), peak GPU memory, FLOPs and
   the achieved FLOP rate, and the number of steps that fit in a wall-time budget.
3. ``inference``: images/s at 256x256, batch 16, in every precision/layout, and one
   4096x4096 image through ``inpaint_image``'s tiling path.

``tests`` and ``kedro`` come first: they prove the paths work; the timings follow. Sections 2
and 3 run in fresh Python processes (a crash or an out-of-memory error cannot take the report
down). Writes ``gpu_check.json`` and ``gpu_check.md`` into ``--out-dir``; exit status 0 when
every section ran and passed, 1 otherwise, 2 without CUDA (unless ``--cpu-dry-run``).

``--cpu-dry-run``: everything at tiny sizes on the CPU (about a minute), so that the script is
known to work before a GPU is lent; ``tests/benchmarks/test_gpu_check.py`` runs it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    CUDA_TEST_DESELECT,
    CUDA_TEST_FILES,
    RESULTS_DIR,
    ROOT,
    run_in_subprocess,
)

SECTIONS = ("tests", "kedro", "training_step", "inference")
ISSUE_ITEM = {"tests": 1, "training_step": 2, "inference": 3, "kedro": 4}
TITLES = {
    "environment": "Machine",
    "tests": "1. CUDA subset of the test suite",
    "training_step": "2. Training step at paper scale",
    "inference": "3. Inference",
    "kedro": "4. `kedro run --env=gpu` on real images, then evaluate",
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
SKYVIEW_TRAIN_IMAGES = 10_800  # 15 classes x 800, 90 % train (data_processing.split)
SPEEDUP_GOAL = 1.5


@dataclass(frozen=True)
class Sizes:
    """What each section does in one mode (the GPU check, or the CPU dry run)."""

    device: str
    # section 1
    pytest_args: tuple[str, ...]
    # section 2
    batch: int
    size: int
    depth: int
    repeats: int
    warmup: int
    # section 3
    infer_batch: int
    large: int
    tile: int | None  # None: inpaint_image's own max_size (1024) decides the tiles
    # section 4
    images_per_class: int
    kedro_params: dict[str, Any]
    evaluate_params: dict[str, Any]
    # (minimum seconds worth starting, timeout cap) per section
    limits: dict[str, tuple[float, float]]


GPU = Sizes(
    device="cuda",
    pytest_args=("-m", "cuda", "-k", CUDA_TEST_DESELECT, *CUDA_TEST_FILES),
    batch=16,
    size=256,
    depth=7,
    repeats=5,
    warmup=2,
    infer_batch=16,
    large=4096,
    tile=None,
    images_per_class=40,
    kedro_params={
        "training.steps_stage1": 200,
        "training.steps_stage2": 100,
        "training.log_every": 25,
        "training.val_every": 100,
        "training.checkpoint_every": 100,
    },
    evaluate_params={},
    limits={
        "tests": (30, 100),
        "kedro": (90, 200),
        "training_step": (45, 110),
        "inference": (20, 60),
    },
)

DRY = Sizes(
    device="cpu",
    pytest_args=("-m", "devices", "tests/pconv/test_unet.py"),
    batch=2,
    size=32,
    depth=3,
    repeats=1,
    warmup=0,
    infer_batch=2,
    large=256,
    tile=128,  # a 256 px image in 128 px tiles: the tiling path, at CPU cost
    images_per_class=4,
    kedro_params={
        "data_processing.image_size": 64,
        "data_processing.num_workers": 1,
        "data_processing.masks.train_pool_size": 8,
        "training.device": "cpu",
        "training.model.depth": 3,
        "training.model.base_channels": 8,
        "training.model.max_channels": 32,
        "training.train_size": 64,
        "training.batch_size": 2,
        "training.steps_stage1": 2,
        "training.steps_stage2": 1,
        "training.num_workers": 0,
        "training.log_every": 1,
        "training.val_every": 3,
        "training.val_images": 1,
        "training.checkpoint_every": 3,
    },
    evaluate_params={
        "evaluate.device": "cpu",
        "evaluate.num_workers": 1,
        "evaluate.biharmonic_sample": 2,
        "evaluate.patchmatch_sample": 2,
    },
    limits={  # generous: a shared, loaded CPU can be ten times slower than a quiet one
        "tests": (5, 900),
        "kedro": (5, 1200),
        "training_step": (5, 900),
        "inference": (5, 900),
    },
)


def _log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _subprocess_env() -> dict[str, str]:
    """This checkout's package and benchmarks first on the path; no telemetry, no display."""
    paths = [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        "KEDRO_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "MPLBACKEND": "Agg",
    }


def _tail(text: str | bytes | None, n: int = 4000) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return text[-n:]


# ================================================================== environment
def environment(device: str) -> dict[str, Any]:
    """torch/CUDA versions, the GPU, TF32 flags, nvidia-smi, the git commit."""
    import torch

    from benchmarks.common import machine_info

    info: dict[str, Any] = {**machine_info(), "device": device}
    info["cuda_available"] = torch.cuda.is_available()
    info["torch_cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_count=torch.cuda.device_count(),
            compute_capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            bf16_supported=torch.cuda.is_bf16_supported(),
            cudnn=torch.backends.cudnn.version(),
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            matmul_precision=torch.get_float32_matmul_precision(),
        )
    smi = shutil.which("nvidia-smi")
    if smi:
        query = "--query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm"
        proc = subprocess.run(
            [smi, query, "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
        info["nvidia_smi"] = proc.stdout.strip() or _tail(proc.stderr, 500)
    try:
        proc = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
        )
        info["git_commit"] = proc.stdout.strip() or None
    except OSError:
        info["git_commit"] = None
    return info


def default_images_dir() -> Path:
    """``../shared/data/skyview-dev`` beside the checkout, else ``shared/...`` inside it."""
    candidates = [ROOT.parent / "shared/data/skyview-dev", ROOT / "shared/data/skyview-dev"]
    return next((p for p in candidates if p.is_dir()), candidates[0])


# ================================================================== 1. tests
def section_tests(sizes: Sizes, timeout: float, workdir: Path) -> dict[str, Any]:
    """``pytest <sizes.pytest_args>`` in a subprocess; counts and failures from its JUnit XML."""
    junit = workdir / "pytest.xml"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        *sizes.pytest_args,
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=_subprocess_env()
    )
    result: dict[str, Any] = {
        "command": " ".join(["python -m pytest", *sizes.pytest_args]),
        "exit_code": proc.returncode,
        "output_tail": _tail(proc.stdout, 3000),
    }
    if junit.is_file():
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        result.update(
            counts, passed=counts["tests"] - sum(v for k, v in counts.items() if k != "tests")
        )
        result["failed_tests"] = [
            {
                "test": f"{case.get('classname')}::{case.get('name')}",
                "message": _tail(bad.get("message") or bad.text or "", 600),
            }
            for case in suite.iter("testcase")
            for bad in (*case.findall("failure"), *case.findall("error"))
        ]
    if proc.returncode == 5:
        raise RuntimeError(f"pytest collected no test ({' '.join(sizes.pytest_args)})")
    if proc.returncode != 0:
        raise RuntimeError(
            f"pytest exit status {proc.returncode}: {result.get('failures', '?')} failed, "
            f"{result.get('errors', '?')} errors",
        )
    return result


# ================================================================== 2. training step
def section_training_step(
    batch: int,
    size: int,
    depth: int,
    repeats: int,
    warmup: int,
    device: str,
    budget_minutes: float = 110.0,
) -> dict[str, Any]:
    """Round-robin timing of the project's step (fp32 NCHW; bf16/fp16 + channels_last) and the
    original design's, with per-variant peak GPU memory, the FLOPs of a step and the achieved
    rate; returns JSON-able results. Run in a fresh process (``run_in_subprocess``)."""
    import statistics

    import torch

    from benchmarks.bench_training import count_step_flops, original_step, project_step
    from benchmarks.common import setup_torch, time_call

    setup_torch()
    cuda = device.startswith("cuda")
    if cuda:
        torch.backends.cudnn.benchmark = True  # as pconv.train does on CUDA
    low = "bf16" if (not cuda or torch.cuda.is_bf16_supported()) else "fp16"
    names = {
        "fp32": "project, fp32, NCHW",
        "low": f"project, {low} autocast, channels_last",
        "original": "original design, fp32, NCHW",
    }
    steps = {
        names["fp32"]: project_step(batch, size, depth, "fp32", False, device),
        names["low"]: project_step(batch, size, depth, low, True, device),
        names["original"]: original_step(batch, size, depth, device),
    }
    times: dict[str, list[float]] = {n: [] for n in steps}
    # GPU memory: the absolute peak during a variant's step (it includes every variant's
    # weights and Adam state, all resident at once) and what the step itself added on top of
    # what was allocated before it (activations, autocast copies, cuDNN workspace).
    peak: dict[str, int | None] = dict.fromkeys(steps)
    extra: dict[str, int | None] = dict.fromkeys(steps)
    for _ in range(warmup):
        for fn in steps.values():
            time_call(fn, device)
    for _ in range(repeats):  # round-robin: drifts in clocks or load hit every variant alike
        for name, fn in steps.items():
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            times[name].append(time_call(fn, device))
            if cuda:
                top = torch.cuda.max_memory_allocated()
                peak[name] = max(peak[name] or 0, top)
                extra[name] = max(extra[name] or 0, top - before)
    medians = {n: statistics.median(t) for n, t in times.items()}
    flops = {n: count_step_flops(fn) for n, fn in steps.items()}
    finite = {n: bool(torch.isfinite(torch.tensor(fn()))) for n, fn in steps.items()}
    orig = medians[names["original"]]
    best = min((names["fp32"], names["low"]), key=medians.__getitem__)
    configs = {
        n: {
            "median_s": medians[n],
            "times_s": times[n],
            "images_per_s": batch / medians[n],
            "speedup_vs_original": orig / medians[n],
            "peak_gpu_memory_mib": None if peak[n] is None else peak[n] / 2**20,
            "step_gpu_memory_mib": None if extra[n] is None else extra[n] / 2**20,
            "gflop_per_step": flops[n] / 1e9,
            "achieved_tflop_per_s": flops[n] / medians[n] / 1e12,
            "loss_finite": finite[n],
        }
        for n in steps
    }
    # What a wall-time budget buys at this step time (meaningful at the GPU config's
    # batch 16, 256 px, depth 7; the data loader and validation come on top).
    step_s = medians[names["low"]]
    steps_in_budget = int(budget_minutes * 60 / step_s)
    return {
        "device": device,
        "batch": batch,
        "size": size,
        "depth": depth,
        "repeats": repeats,
        "configs": configs,
        "best_config": best,
        "speedup_best_vs_original": orig / medians[best],
        "speedup_goal": SPEEDUP_GOAL,
        "goal_met": orig / medians[best] >= SPEEDUP_GOAL,
        "sizing": {
            "config": names["low"],
            "step_s": step_s,
            "budget_minutes": budget_minutes,
            "steps_in_budget": steps_in_budget,
            "passes_over_skyview_train": steps_in_budget * batch / SKYVIEW_TRAIN_IMAGES,
        },
        "flags": {
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_precision": torch.get_float32_matmul_precision(),
        },
    }


# ================================================================== 3. inference
def section_inference(
    batch: int,
    size: int,
    depth: int,
    repeats: int,
    large: int,
    tile: int | None,
    device: str,
) -> dict[str, Any]:
    """Batched images/s (every precision/layout and the original design) and one ``large``²
    image through ``inpaint_image``'s tiles, checked (valid pixels kept, right shape)."""
    import numpy as np
    import torch

    from aerial_inpainting.inference import inpaint_image
    from aerial_inpainting.pconv.unet import PConvUNet, UNetConfig
    from benchmarks.bench_inference import bench_batch_throughput
    from benchmarks.bench_training import make_batch
    from benchmarks.common import bench, setup_torch

    setup_torch()
    cuda = device.startswith("cuda")
    if cuda:
        torch.backends.cudnn.benchmark = True
    batched = bench_batch_throughput(batch, size, depth, repeats=repeats, device=device)

    torch.manual_seed(0)
    model = PConvUNet(UNetConfig(depth=depth)).eval()
    images, masks = make_batch(1, large, seed=2)
    rgb = (images[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    valid = masks[0, 0].numpy().astype(bool)
    result: dict[str, np.ndarray] = {}

    def run() -> None:
        result["out"] = inpaint_image(model, rgb, valid, device=device, tile_size=tile)

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    timing = bench(run, repeats=max(1, repeats // 2), warmup=1, device=device)
    out = result["out"]
    if out.shape != rgb.shape or not np.array_equal(out[valid], rgb[valid]):
        raise AssertionError("inpaint_image changed valid pixels or the shape")
    return {
        "depth": depth,
        "batch": batched,
        "large_image": {
            "size": large,
            "tile_size": tile or "inpaint_image default (1024)",
            "hole_fraction": float(1 - valid.mean()),
            **timing,
            "megapixel_per_s": large * large / 1e6 / timing["median_s"],
            "peak_gpu_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        },
    }


# ================================================================== 4. kedro run --env=gpu
def _class_folders(images_dir: Path) -> list[Path]:
    """Class folders of a Kaggle-layout download: ``<dir>/Aerial_Landscapes/<Class>/`` or
    ``<dir>/<Class>/``."""
    root = images_dir / "Aerial_Landscapes"
    root = root if root.is_dir() else images_dir
    if not root.is_dir():
        raise FileNotFoundError(f"--images-dir {images_dir}: no such folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise FileNotFoundError(
            f"--images-dir {images_dir}: no class folders (expected Aerial_Landscapes/<Class>/*.jpg)"
        )
    return folders


def make_project(destination: Path, images_dir: Path, images_per_class: int) -> dict[str, Any]:
    """A throw-away copy of the Kedro project (conf base + gpu, MLflow in a SQLite file inside
    it) with the first ``images_per_class`` images of every class of ``images_dir``."""
    import yaml

    destination.mkdir(parents=True)
    shutil.copy2(ROOT / "pyproject.toml", destination / "pyproject.toml")
    for env in ("base", "gpu"):
        shutil.copytree(ROOT / "conf" / env, destination / "conf" / env)
    (destination / "conf" / "local").mkdir()
    (destination / "src").mkdir()  # bootstrap_project wants it; the code is on PYTHONPATH
    (destination / ".telemetry").write_text("consent: false\n")
    layers = ("01_raw", "02_intermediate", "03_primary", "04_feature", "05_model_input",
              "06_models", "07_model_output", "08_reporting")  # fmt: skip
    for layer in layers:
        (destination / "data" / layer).mkdir(parents=True)
    mlflow_file = destination / "conf" / "base" / "mlflow.yml"
    config = yaml.safe_load(mlflow_file.read_text()) or {}
    config.setdefault("server", {})["mlflow_tracking_uri"] = (
        f"sqlite:///{destination / 'mlflow.db'}"
    )
    experiment = config.setdefault("tracking", {}).setdefault("experiment", {})
    experiment.setdefault("create_experiment_kwargs", {})["artifact_location"] = (
        destination / "mlartifacts"
    ).as_uri()
    mlflow_file.write_text(yaml.safe_dump(config, sort_keys=False))

    copied: dict[str, int] = {}
    for folder in _class_folders(images_dir):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        target = destination / "data" / "01_raw" / "Aerial_Landscapes" / folder.name
        target.mkdir(parents=True)
        for path in files[:images_per_class]:
            shutil.copy2(path, target / path.name)
        copied[folder.name] = min(len(files), images_per_class)
    if not sum(copied.values()):
        raise FileNotFoundError(f"--images-dir {images_dir}: the class folders hold no image")
    return copied


def _params_arg(params: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in params.items())


def _kedro(project: Path, args: list[str], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "kedro", "run", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd,
        cwd=project,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**_subprocess_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"},
    )
    seconds = time.perf_counter() - t0
    output = proc.stdout + proc.stderr
    headline = [line for line in output.splitlines() if "Mean PSNR" in line]
    out = {
        "command": " ".join(["kedro", "run", *args]),
        "exit_code": proc.returncode,
        "seconds": seconds,
        "headline": headline[-1].strip() if headline else None,
        "log_tail": _tail(output, 2500),
    }
    if proc.returncode != 0:
        raise RuntimeError(
            f"`{out['command']}` failed (exit {proc.returncode}):\n{out['log_tail']}"
        )
    return out


def mlflow_runs(db: Path) -> list[dict[str, Any]]:
    """Runs in an MLflow SQLite store: status, metric keys, a few tags (read with sqlite3)."""
    if not db.is_file():
        raise FileNotFoundError(f"{db}: no MLflow store was written")
    with sqlite3.connect(db) as con:
        runs = con.execute("SELECT run_uuid, status, start_time, end_time FROM runs").fetchall()
        out = []
        for run_id, status, start, end in runs:
            keys = {k for (k,) in con.execute(
                "SELECT DISTINCT key FROM metrics WHERE run_uuid = ?", (run_id,))}  # fmt: skip
            tags = dict(con.execute(
                "SELECT key, value FROM tags WHERE run_uuid = ? AND key IN "
                "('training.device', 'training.precision', 'data_source', 'vgg.weights')",
                (run_id,)).fetchall())  # fmt: skip
            psnr = con.execute(
                "SELECT value FROM metrics WHERE run_uuid = ? AND key = 'evaluate.model.psnr_mean'",
                (run_id,),
            ).fetchone()
            out.append(
                {
                    "run_id": run_id,
                    "status": status,
                    "seconds": (end - start) / 1000 if start and end else None,
                    "n_metric_keys": len(keys),
                    "has_training_losses": any(k.startswith("loss_") for k in keys),
                    "evaluate_model_psnr_mean": psnr[0] if psnr else None,
                    "tags": tags,
                }
            )
    return out


def section_kedro(
    sizes: Sizes, timeout: float, workdir: Path, images_dir: Path, vgg_weights: str
) -> dict[str, Any]:
    """``kedro run --env=gpu`` (few steps) then its evaluate pipeline in a temporary project."""
    import pandas as pd

    if importlib.util.find_spec("kedro") is None:
        raise SectionSkipped(
            "Kedro is not installed here (a lent GPU machine has none): the device run, "
            "bash benchmarks/gpu/run.sh, trains and scores without it"
        )
    deadline = time.perf_counter() + timeout
    project = workdir / "project"
    copied = make_project(project, images_dir, sizes.images_per_class)
    params = dict(sizes.kedro_params)
    if vgg_weights == "auto":  # the device machine may be offline: do not wait on a download
        cache = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
        cached = (cache / "hub" / "checkpoints" / "vgg16-397923af.pth").is_file()
        vgg_weights = "imagenet" if cached else "random"
    params["training.vgg_weights"] = vgg_weights
    params.update(sizes.evaluate_params)
    result: dict[str, Any] = {
        "images_dir": str(images_dir),
        "images_copied": sum(copied.values()),
        "classes": len(copied),
        "vgg_weights": vgg_weights,
        "project": str(project),
    }
    result["train_run"] = _kedro(
        project, ["--env=gpu", f"--params={_params_arg(params)}"], deadline - time.perf_counter()
    )
    eval_args = ["--env=gpu", "--pipelines=evaluate"]
    if sizes.evaluate_params:
        eval_args.append(f"--params={_params_arg(sizes.evaluate_params)}")
    result["evaluate_run"] = _kedro(project, eval_args, deadline - time.perf_counter())
    history_file = project / "data" / "08_reporting" / "training_history.csv"
    if history_file.is_file():
        history = pd.read_csv(history_file)
        result["final_step"] = int(history["step"].max())
        if "images_per_s" in history:
            rate = history["images_per_s"].dropna()
            result["training_images_per_s_median"] = float(rate.median()) if len(rate) else None
    runs = mlflow_runs(project / "mlflow.db")
    result["mlflow_runs"] = runs
    finished = [r for r in runs if r["status"] == "FINISHED"]
    if len(finished) < 2:
        raise AssertionError(f"expected 2 FINISHED MLflow runs, found {runs}")
    if not any(r["has_training_losses"] for r in finished):
        raise AssertionError("no MLflow run holds training losses (loss_*)")
    evaluated = [r for r in finished if r["evaluate_model_psnr_mean"] is not None]
    if len(evaluated) < 2:
        raise AssertionError("evaluate.model.psnr_mean missing from a run (expected in both)")
    return result


# ================================================================== orchestration
class SectionSkipped(Exception):
    """A section that cannot run on this machine; the message says why."""


def _guarded(
    name: str, fn: Callable[[float], dict[str, Any]], min_s: float, cap_s: float, deadline: float
) -> dict[str, Any]:
    """Run one section under min(cap, time left); record failure or skip instead of raising."""
    left = deadline - time.perf_counter()
    if left < min_s:
        _log(f"{name}: skipped ({left:.0f} s left, needs {min_s:.0f} s)")
        return {
            "status": "skipped",
            "reason": f"would not fit: {max(left, 0):.0f} s of the budget left, needs >= {min_s:.0f} s",
        }
    timeout = min(cap_s, left)
    _log(f"{name}: start (timeout {timeout:.0f} s)")
    t0 = time.perf_counter()
    try:
        out = {"status": "ok", **fn(timeout)}
    except SectionSkipped as reason:
        out = {"status": "skipped", "reason": str(reason)}
    except subprocess.TimeoutExpired:
        out = {"status": "timeout", "error": f"stopped after its timeout of {timeout:.0f} s"}
    except Exception as error:
        out = {
            "status": "failed",
            "error": f"{type(error).__name__}: {_tail(str(error), 3000)}",
            "traceback": _tail(traceback.format_exc(), 3000),
        }
    out["duration_s"] = round(time.perf_counter() - t0, 1)
    out["timeout_s"] = round(timeout, 1)
    _log(f"{name}: {out['status']} in {out['duration_s']} s")
    return out


def run_check(args: argparse.Namespace) -> dict[str, Any]:
    sizes = DRY if args.cpu_dry_run else GPU
    if args.images_per_class is not None:
        sizes = replace(sizes, images_per_class=args.images_per_class)
    # run_in_subprocess (sections 2, 3) passes os.environ on: this checkout's code first
    os.environ["PYTHONPATH"] = _subprocess_env()["PYTHONPATH"]
    start = time.perf_counter()
    deadline = start + args.budget_s
    report: dict[str, Any] = {
        "mode": "cpu-dry-run" if args.cpu_dry_run else "cuda",
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/gpu_check.py", *sys.argv[1:]]),
        "budget_s": args.budget_s,
        "sections": {},
    }
    try:
        report["environment"] = environment(sizes.device)
    except Exception as error:
        report["environment"] = {"error": f"{type(error).__name__}: {error}"}
    import torch

    if not args.cpu_dry_run and not torch.cuda.is_available():
        report["error"] = "CUDA is not available: nothing checked (use --cpu-dry-run on a CPU)"
        return report

    workroot = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    report["workdir"] = str(workroot)
    step_kwargs = {"batch": sizes.batch, "size": sizes.size, "depth": sizes.depth,
                   "repeats": sizes.repeats, "warmup": sizes.warmup, "device": sizes.device,
                   "budget_minutes": args.sizing_minutes}  # fmt: skip
    infer_kwargs = {"batch": sizes.infer_batch, "size": sizes.size, "depth": sizes.depth,
                    "repeats": sizes.repeats, "large": sizes.large, "tile": sizes.tile,
                    "device": sizes.device}  # fmt: skip
    sections: dict[str, Callable[[float], dict[str, Any]]] = {
        "tests": lambda t: section_tests(sizes, t, workroot),
        "kedro": lambda t: section_kedro(
            sizes, t, workroot / "kedro", Path(args.images_dir).expanduser(), args.vgg_weights
        ),
        "training_step": lambda t: run_in_subprocess(
            "gpu_check", "section_training_step", step_kwargs, timeout=t
        ),
        "inference": lambda t: run_in_subprocess(
            "gpu_check", "section_inference", infer_kwargs, timeout=t
        ),
    }
    try:
        for name in args.sections:
            min_s, cap_s = sizes.limits[name]
            report["sections"][name] = {
                "issue_item": ISSUE_ITEM[name],
                **_guarded(name, sections[name], min_s, cap_s, deadline),
            }
    finally:
        if not args.keep_workdir:
            shutil.rmtree(workroot, ignore_errors=True)
    report["total_s"] = round(time.perf_counter() - start, 1)
    report["all_ok"] = all(s["status"] == "ok" for s in report["sections"].values())
    return report


# ================================================================== Markdown
def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    from benchmarks.common import markdown_table

    env = report.get("environment", {})
    lines = [
        f"# GPU check ({report['mode']})",
        "",
        f"`{report['command']}`, started {report['started_utc']}, "
        f"{_fmt(report.get('total_s'))} s of a {report['budget_s']:.0f} s budget.",
        "",
        f"- machine: {env.get('gpu') or env.get('cpu')}; torch {env.get('torch')}, CUDA "
        f"{env.get('torch_cuda')}, cuDNN {env.get('cudnn', 'n/a')}; compute capability "
        f"{env.get('compute_capability', 'n/a')}, bf16 {env.get('bf16_supported', 'n/a')}; "
        f"commit {env.get('git_commit')}",
    ]
    if env.get("nvidia_smi"):
        lines.append(f"- nvidia-smi: {env['nvidia_smi']}")
    if report.get("error"):
        lines += ["", f"**{report['error']}**"]
    sections = report.get("sections", {})
    lines += ["", "| section | status | seconds |", "|---|---|---|"]
    for name, sec in sections.items():
        status = sec["status"] + (f": {sec.get('reason')}" if sec["status"] == "skipped" else "")
        lines.append(f"| {TITLES[name]} | {status} | {_fmt(sec.get('duration_s'))} |")
    for name, sec in sections.items():
        lines += ["", f"## {TITLES[name]}", ""]
        if sec["status"] != "ok":
            lines.append(f"**{sec['status']}**: {sec.get('reason') or sec.get('error', '')}")
            lines.append("")
        if name == "tests" and "tests" in sec:
            lines.append(
                f"`{sec['command']}`: {sec['tests']} tests, {sec['passed']} passed, "
                f"{sec['failures']} failed, {sec['errors']} errors, {sec['skipped']} skipped."
            )
            for bad in sec.get("failed_tests", []):
                lines.append(f"- `{bad['test']}`: {bad['message'][:300]}")
        elif name == "training_step" and "configs" in sec:
            rows = [
                [
                    n,
                    _fmt(c["images_per_s"]),
                    _fmt(c["median_s"] * 1000),
                    _fmt(c["speedup_vs_original"], 2) + "x",
                    _fmt(c["step_gpu_memory_mib"], 0),
                    _fmt(c["peak_gpu_memory_mib"], 0),
                    _fmt(c["gflop_per_step"], 0),
                    _fmt(c["achieved_tflop_per_s"], 2),
                ]
                for n, c in sec["configs"].items()
            ]
            header = ["variant", "images/s", "ms/step", "vs original", "step's GPU MiB",
                      "peak GPU MiB (all variants resident)", "GFLOP/step", "TFLOP/s"]  # fmt: skip
            lines.append(
                f"{sec['size']}x{sec['size']}, depth {sec['depth']}, batch {sec['batch']}, "
                f"VGG-16 loss, median of {sec['repeats']} round-robin repeats."
            )
            lines += ["", markdown_table(rows, header), ""]
            met = "met" if sec["goal_met"] else "**not met**"
            sizing = sec["sizing"]
            lines.append(
                f"Best project variant ({sec['best_config']}): "
                f"{sec['speedup_best_vs_original']:.2f}x the original design (goal "
                f"{sec['speedup_goal']}x: {met}). At {sizing['step_s'] * 1000:.1f} ms a step, "
                f"{sizing['budget_minutes']:.0f} minutes hold {sizing['steps_in_budget']:,} "
                f"steps ({sizing['passes_over_skyview_train']:.0f} passes over 10,800 images), "
                "before data loading and validation."
            )
        elif name == "inference" and "batch" in sec:
            b = sec["batch"]
            rows = [[n, _fmt(c["images_per_s"])] for n, c in b["configs"].items()]
            lines.append(
                f"{b['size']}x{b['size']}, batch {b['batch']}, depth-{sec['depth']} U-Net:"
            )
            lines += ["", markdown_table(rows, ["variant", "images/s"]), ""]
            big = sec["large_image"]
            lines.append(
                f"One {big['size']}x{big['size']} image through `inpaint_image` (tiles: "
                f"{big['tile_size']}): {big['median_s']:.2f} s ({big['megapixel_per_s']:.2f} "
                f"Mpixel/s), peak GPU memory {_fmt(big['peak_gpu_memory_mib'], 0)} MiB."
            )
        elif name == "kedro" and "train_run" in sec:
            lines.append(
                f"{sec['images_copied']} images of {sec['classes']} classes from "
                f"`{sec['images_dir']}`, VGG weights `{sec['vgg_weights']}`."
            )
            lines.append("")
            for key in ("train_run", "evaluate_run"):
                run = sec.get(key)
                if run:
                    lines.append(f"- `{run['command']}`: exit {run['exit_code']}, "
                                 f"{run['seconds']:.0f} s; {run['headline'] or ''}")  # fmt: skip
            lines.append(
                f"- final step {sec.get('final_step')}, training loop "
                f"{_fmt(sec.get('training_images_per_s_median'))} images/s (median, data "
                "loading included)"
            )
            for run in sec.get("mlflow_runs", []):
                lines.append(
                    f"- MLflow run {run['run_id'][:8]}: {run['status']}, "
                    f"{run['n_metric_keys']} metric keys, evaluate.model.psnr_mean "
                    f"{_fmt(run['evaluate_model_psnr_mean'], 2)}, tags {run['tags']}"
                )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=str(RESULTS_DIR),
                        help="where gpu_check.json and gpu_check.md go (e.g. $OUT on a lent machine)")  # fmt: skip
    parser.add_argument("--budget-s", type=float, default=None,
                        help="total wall time; sections that would not fit are skipped "
                             "(default 480, 8 minutes; 3600 with --cpu-dry-run)")  # fmt: skip
    parser.add_argument("--images-dir", default=str(default_images_dir()),
                        help="real images, Aerial_Landscapes/<Class>/*.jpg (section 4; default "
                             "../shared/data/skyview-dev, else shared/data/skyview-dev)")  # fmt: skip
    parser.add_argument("--images-per-class", type=int, default=None,
                        help="images copied per class (default 40; 4 with --cpu-dry-run)")  # fmt: skip
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}, run in that order")  # fmt: skip
    parser.add_argument("--vgg-weights", default="auto",
                        help="section 4: imagenet | random | auto (imagenet if in the torch hub cache)")  # fmt: skip
    parser.add_argument("--sizing-minutes", type=float, default=110.0,
                        help="section 2 reports how many steps fit in this many minutes")  # fmt: skip
    parser.add_argument("--keep-workdir", action="store_true",
                        help="keep the temporary project and pytest XML (path in the report)")  # fmt: skip
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="everything at tiny sizes on the CPU (about a minute)")  # fmt: skip
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    if args.budget_s is None:
        args.budget_s = 3600.0 if args.cpu_dry_run else 480.0

    report = run_check(args)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (out_dir / "gpu_check.md").write_text(markdown(report))
    _log(f"report: {out_dir / 'gpu_check.json'} and {out_dir / 'gpu_check.md'}")
    if report.get("error"):
        _log(report["error"])
        return 2
    return 0 if report["all_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
