"""Timing and memory helpers shared by the benchmark scripts (not part of the package).

Why these choices: the benchmark machines are shared and noisy, so every figure is the
*median* of several repeats after warm-up, and competing variants are timed interleaved
(round-robin) so that a burst of background load hits all of them alike. Peak memory of a
PyTorch step cannot be seen by ``tracemalloc`` (the allocations are native), so it is read
from the kernel (``VmHWM`` of ``/proc/self/status``, reset through ``/proc/self/clear_refs``
just before the measured code) in a fresh subprocess per measurement, so peaks never mix.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

# The test files whose ``device``-parametrised tests make the CUDA subset (``pytest -m cuda``).
# Listed rather than collected from tests/: a lent GPU machine has no Kedro or MLflow, which
# other test modules import; none of these needs either (tests/benchmarks checks that).
CUDA_TEST_FILES = tuple(
    f"tests/pconv/test_{name}.py"
    for name in (
        "partial_conv",
        "unet",
        "loss",
        "checkpoint",
        "train",
        "pushpull",
        "prefill",
        "device_stream",
    )
)
# Left out on the GPU machine: the tests that download ImageNet weights (it has no network).
CUDA_TEST_DESELECT = "not imagenet"


def setup_torch(threads: int | None = None) -> int:
    """Use every core the process may run on (or ``threads``); returns the thread count."""
    import torch

    if threads is None:
        if hasattr(os, "sched_getaffinity"):
            threads = len(os.sched_getaffinity(0))
        else:
            threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


def sync(device: Any = "cpu") -> None:
    """Wait for queued GPU work so that wall-clock time covers it (no-op on the CPU)."""
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn: Callable[[], Any], device: Any = "cpu") -> float:
    """Seconds taken by one call of ``fn`` (device work included)."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def summarize(times: Sequence[float]) -> dict[str, Any]:
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "repeats": len(times),
        "times_s": [round(t, 6) for t in times],
    }


def bench(
    fn: Callable[[], Any], repeats: int = 5, warmup: int = 1, device: Any = "cpu"
) -> dict[str, Any]:
    """Median (and spread) of ``repeats`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        time_call(fn, device)
    return summarize([time_call(fn, device) for _ in range(repeats)])


def bench_interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int = 5, warmup: int = 1, device: Any = "cpu"
) -> dict[str, dict[str, Any]]:
    """Time several variants round-robin (A B C A B C ...) so shared-machine noise hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            time_call(fn, device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(time_call(fn, device))
    return {name: summarize(ts) for name, ts in times.items()}


# ------------------------------------------------------------------ memory
def _status_kib(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(m.group(1)) if m else None


def current_rss_bytes() -> int | None:
    try:
        import psutil  # type: ignore[import-not-found]

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        kib = _status_kib("VmRSS")
        return None if kib is None else kib * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); False if impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    """Peak resident set size of this process (VmHWM, else getrusage's ru_maxrss)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    try:
        import resource

        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale
    except ImportError:
        return None


def run_in_subprocess(
    module: str, function: str, kwargs: dict[str, Any], timeout: float = 1800
) -> Any:
    """Call ``benchmarks.<module>.<function>(**kwargs)`` in a fresh interpreter; return its JSON result."""
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        f"from benchmarks.{module} import {function} as f\n"
        f"res = f(**json.loads({json.dumps(json.dumps(kwargs))}))\n"
        "print('__RESULT__' + json.dumps(res))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"},
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("__RESULT__"):
            return json.loads(line[len("__RESULT__") :])
    raise RuntimeError(
        f"benchmarks.{module}.{function} failed in its subprocess (exit {proc.returncode}):\n"
        f"{proc.stderr[-3000:]}"
    )


# ------------------------------------------------------------------ reporting
def machine_info() -> dict[str, Any]:
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    with contextlib.suppress(OSError):
        info["load_average_1min"] = os.getloadavg()[0]
    return info


def fmt_mib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.0f} MiB"


def markdown_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
