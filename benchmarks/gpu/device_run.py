"""The device run (issue 25): on a lent GPU machine, from the checkout and its bundle alone.

    bash benchmarks/gpu/run.sh                   # what the device tool runs (installs the wheels)
    bash benchmarks/gpu/run.sh --dry-run         # the same steps on the CPU, tiny, in about a minute
    python benchmarks/gpu/device_run.py --help

Steps, each logged with its time (everything streams to ``<out>/run.log`` through run.sh, and
``report.json`` is rewritten after every step, so a run cut short still says how far it got):

1. **environment**: torch, CUDA, the GPU, the CPU, the bundle's manifest;
2. **preflight**: every arm trains three steps through the same code (VGG from the bundle, SSIM
   term, bf16 autocast, channels_last, curriculum switch, stage 2, EMA, clipping) and the
   scoring runs on four images: a broken path fails here, in seconds, not after the budget;
3. **tests**: the CUDA subset of the test suite (``pytest -m cuda``, the ImageNet-download
   tests left out: the machine has no network) in the background, under ``--tests-timeout``;
4. **arms**: one process per arm (``--arms``; ``none`` = the paper's network, ``pushpull`` = the
   prefilled one), concurrently on the one GPU, each training ``--minutes`` of
   ``conf/base`` + ``conf/<--env>`` (``gpu_short``) on the bundle's images held on the GPU;
   each saves ``model-<arm>.safetensors`` (float16) into ``--out``;
5. **score**: Telea, pull-push and every model on the bundle's validation images (PSNR, SSIM,
   LPIPS, paired against Telea, by hole-ratio bucket);
6. **report**: ``report.json``, ``report.md`` and ``curves.png`` in ``--out``.

Exit status 0 when every step passed, 1 otherwise. Nothing here imports Kedro or MLflow.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

import torch

from benchmarks.common import CUDA_TEST_DESELECT, CUDA_TEST_FILES
from benchmarks.gpu import device_report as report_io
from benchmarks.gpu.device_train import ARMS, ROOT, score, train_arm, training_params

logger = logging.getLogger("gpu_run")
DRY_OVERRIDES = {
    "device": "cpu",
    "model": {"depth": 3, "base_channels": 8, "max_channels": 16},
    "train_size": 32,
    "late_train_size": 64,
    "batch_size": 4,
    "steps_stage1": 4,
    "steps_stage2": 2,
    "max_minutes": None,
    "warmup_steps": 2,
    "log_every": 1,
    "val_every": 3,
    "val_images": 2,
    "checkpoint_every": 3,
}
PREFLIGHT_OVERRIDES = {
    "steps_stage1": 2,
    "steps_stage2": 1,
    "max_minutes": None,
    "batch_size": 2,
    "warmup_steps": 1,
    "log_every": 1,
    "val_every": 3,
    "val_images": 2,
    "checkpoint_dir": None,
}


def arm_params(args: argparse.Namespace, arm: str, preflight: bool = False) -> dict[str, Any]:
    """The training parameters of ``arm`` in this run (see the module docstring)."""
    overrides: dict[str, Any] = {
        "device": "cuda",
        "max_minutes": args.minutes,
        "vgg_weights": str(Path(args.bundle) / "weights" / "vgg16_pool3_fp16.safetensors"),
        "vgg_offline_fallback": "error",
        "checkpoint_dir": str(Path(args.work) / f"checkpoints-{arm}"),
        "progress_bar": False,
        "snapshot_minutes": [],
        "num_workers": 0,
    }
    if args.dry_run:
        overrides.update(DRY_OVERRIDES)
    if preflight:
        overrides.update(PREFLIGHT_OVERRIDES)
    return training_params(args.env, arm, overrides)


def environment(args: argparse.Namespace) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cpu_count": os.cpu_count(),
        "cpu_bf16": "avx512_bf16" in Path("/proc/cpuinfo").read_text()
        if Path("/proc/cpuinfo").exists()
        else None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            bf16=torch.cuda.is_bf16_supported(),
        )
    manifest = Path(args.bundle) / "manifest.json"
    info["bundle"] = json.loads(manifest.read_text()) if manifest.is_file() else None
    if info["bundle"]:
        info["bundle"].pop("files", None)
    return info


def preflight(args: argparse.Namespace) -> dict[str, Any]:
    """Three steps of every arm and a four-image scoring, on the run's device."""
    models = {}
    for arm in args.arms:
        path = Path(args.work) / f"preflight-{arm}.safetensors"
        params = arm_params(args, arm, preflight=True)
        train_arm(Path(args.bundle), arm, params, path, 8, 1, 2, train_limit=8)
        models[arm] = path
    device = torch.device("cpu" if args.dry_run else "cuda")
    return score(Path(args.bundle), models, device, limit=4)


def start_tests(args: argparse.Namespace) -> subprocess.Popen:
    marker = ["-m", "devices", "tests/pconv/test_pushpull.py"] if args.dry_run else ["-m", "cuda"]
    files = [] if args.dry_run else list(CUDA_TEST_FILES)
    command = [sys.executable, "-m", "pytest", "-q", *marker, *files, "-k", CUDA_TEST_DESELECT]
    command += ["-p", "no:cacheprovider", "-o", "addopts="]
    log = open(Path(args.out) / "pytest.log", "w")  # noqa: SIM115 (closed by the process's end)
    env = {**os.environ, "OMP_NUM_THREADS": "4"}
    logger.info("tests: %s", " ".join(command[1:]))
    return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)


def start_arm(args: argparse.Namespace, arm: str) -> subprocess.Popen:
    """A child process for ``arm``: this run's options, its work folder, ``--arm``."""
    command = [sys.executable, __file__, *args.argv, "--work", args.work, "--arm", arm]
    return subprocess.Popen(command, cwd=ROOT)


def run_arm(args: argparse.Namespace) -> int:
    """The child process of one arm: train, then write its summary for the parent."""
    arm = args.arm
    summary = train_arm(
        Path(args.bundle),
        arm,
        arm_params(args, arm),
        Path(args.out) / f"model-{arm}.safetensors",
        pool_size=args.pool_size,
        workers=max(1, (os.cpu_count() or 2) // (len(args.arms) + 1)),
        val_images=8,
    )
    (Path(args.work) / f"arm-{arm}.json").write_text(json.dumps(summary, default=str))
    logger.info("[%s] done: %s steps", arm, summary["info"]["final_step"])
    return 0


def wait_all(procs: dict[str, subprocess.Popen], deadline: float) -> dict[str, int | None]:
    codes: dict[str, int | None] = {}
    for name, proc in procs.items():
        try:
            codes[name] = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes[name] = None
            logger.error("%s: still running at the deadline; killed", name)
    return codes


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    deadline = started + args.deadline_s
    report: dict[str, Any] = {"started": datetime.now(timezone.utc).isoformat(), "args": vars(args)}
    report["environment"] = environment(args)
    report_io.write(args.out, report)
    logger.info("environment: %s", json.dumps(report["environment"], default=str)[:2000])
    step = time.monotonic()
    try:
        report["preflight"] = {"ok": True, "score": preflight(args)}
    except Exception:
        report["preflight"] = {"ok": False, "error": traceback.format_exc()}
        logger.error("preflight failed:\n%s", report["preflight"]["error"])
        report_io.write(args.out, report)
        return 1
    report["preflight"]["seconds"] = round(time.monotonic() - step, 1)
    logger.info("preflight passed in %.1f s", report["preflight"]["seconds"])
    report_io.write(args.out, report)

    tests, tests_started = start_tests(args), time.monotonic()
    arms = {arm: start_arm(args, arm) for arm in args.arms}
    codes = wait_all(arms, deadline)
    report["arms"] = {}
    for arm, code in codes.items():
        summary_file = Path(args.work) / f"arm-{arm}.json"
        ok = code == 0 and summary_file.is_file()
        report["arms"][arm] = json.loads(summary_file.read_text()) if ok else {"exit": code}
        report["arms"][arm]["ok"] = ok
    report_io.write(args.out, report)
    test_deadline = min(deadline, tests_started + args.tests_timeout)
    code = wait_all({"pytest": tests}, max(test_deadline, time.monotonic() + 1))["pytest"]
    report["tests"] = report_io.test_summary(code, Path(args.out) / "pytest.log")
    models = {
        arm: Path(args.out) / f"model-{arm}.safetensors"
        for arm, summary in report["arms"].items()
        if summary["ok"]
    }
    step = time.monotonic()
    device = torch.device("cpu" if args.dry_run else "cuda")
    try:
        report["score"] = score(Path(args.bundle), models, device)
    except Exception:
        report["score"] = {"error": traceback.format_exc()}
        logger.error("scoring failed:\n%s", report["score"]["error"])
    report["score_seconds"] = round(time.monotonic() - step, 1)
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    report_io.write(args.out, report, final=True)
    ok = all(s["ok"] for s in report["arms"].values()) and "error" not in report["score"]
    logger.info("done in %.0f s: %s", report["wall_seconds"], "passed" if ok else "FAILED")
    return 0 if ok and report["tests"]["ok"] else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=str(ROOT / ".gpu_bundle"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_run"))
    parser.add_argument("--work", default=None, help="checkpoints, summaries (default: a temp dir)")
    parser.add_argument("--env", default="gpu_short", help="conf/<env>/parameters_training.yml")
    parser.add_argument("--arms", default="none,pushpull", help=f"comma-separated: {list(ARMS)}")
    parser.add_argument("--minutes", type=float, default=6.0, help="training budget of each arm")
    parser.add_argument("--pool-size", type=int, default=16384, help="masks held on the GPU")
    parser.add_argument("--tests-timeout", type=float, default=150.0)
    parser.add_argument("--deadline-s", type=float, default=540.0, help="the whole run's limit")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes (tests, CI)")
    parser.add_argument("--arm", default=None, help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(args.arms) - set(ARMS))
    if unknown:
        parser.error(f"--arms: unknown {unknown}; choose from {list(ARMS)}")
    if args.dry_run:
        args.pool_size = min(args.pool_size, 32)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.work is None:
        args.work = tempfile.mkdtemp(prefix="gpu_run_")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tag = f"arm {args.arm}" if args.arm else "run"
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s [{tag}] %(name)s %(levelname)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stdout,
        force=True,
    )
    if not args.dry_run and not torch.cuda.is_available():
        logger.error("no CUDA device here: run with --dry-run for the CPU rehearsal")
        return 2
    return run_arm(args) if args.arm else run(args)


if __name__ == "__main__":
    sys.exit(main())
