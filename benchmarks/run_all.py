"""Run every benchmark of the project and print one Markdown table.

    python benchmarks/run_all.py [--quick] [--repeats N] [--skip data,evaluate,partial_conv]
                                 [--images-dir ../shared/data/skyview-dev]

Figures (issue 7): (1) training step images/s of this project in its CPU configurations against
a re-implementation of the original design (``benchmarks/original_design.py``), timed in the
same process; (2) the training step's achieved FLOP rate as a fraction of the best large
``nn.Conv2d`` rate measured in the same run, with a profile of where the time goes; (3)
inference images/s at 256x256 batch 16 and the latency of one 1024x1024 image; (4) peak RSS of
a training step at batch 4 and 16 (one fresh process each); (5) the data_processing,
partial-convolution and evaluation benchmarks (their own scripts, run as subprocesses).
CUDA figures are added when a GPU is present. Everything goes to
``benchmarks/results/summary.json``; the other scripts also write their own JSON there.

``--quick`` (about 3 minutes): 128x128 inputs, batch 2 for training and 4 for inference,
512x512 for the large image, 2 repeats and small data/evaluation runs; for a smoke check only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks import bench_inference as bi
from benchmarks import bench_training as bt
from benchmarks.common import (
    BENCH_DIR,
    RESULTS_DIR,
    ROOT,
    fmt_mib,
    machine_info,
    markdown_table,
    run_in_subprocess,
    setup_torch,
)

EXTERNAL = ("data", "partial_conv", "evaluate")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _guard(name: str, fn, *args, **kwargs) -> Any:
    """Run one figure; a failure is recorded (and reported as a row) instead of aborting."""
    _log(f"{name} ...")
    t0 = time.perf_counter()
    try:
        out = fn(*args, **kwargs)
    except Exception as error:
        _log(f"{name} FAILED: {error}")
        return {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    _log(f"{name} done in {time.perf_counter() - t0:.0f} s")
    return out


def _external(script: str, args: list[str], out: Path, timeout: float) -> dict[str, Any]:
    """Run another helper's benchmark script and read the JSON it writes."""
    path = BENCH_DIR / script
    if not path.is_file():
        raise FileNotFoundError(f"TODO: {path.relative_to(ROOT)} does not exist yet")
    proc = subprocess.run(
        [sys.executable, str(path), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{script} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return json.loads(out.read_text())


# ------------------------------------------------------------------ run
def run(
    quick: bool, repeats: int | None, skip: set[str], images_dir: str | None = None
) -> dict[str, Any]:
    threads = setup_torch()
    reps = repeats or (2 if quick else 5)
    size, train_batch = (128, 2) if quick else (256, 4)
    infer_batch, large = (4, 512) if quick else (16, 1024)
    mem_size = 128 if quick else 256
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    res: dict[str, Any] = {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/run_all.py", *sys.argv[1:]]),
        "quick": quick,
        "repeats": reps,
        "machine": machine_info(),
        "threads": threads,
    }
    for dev in devices:
        d: dict[str, Any] = {}
        d["training"] = _guard(
            f"[{dev}] training throughput", bt.bench_training_throughput,
            train_batch, size, 7, reps, 1, dev,
        )  # fmt: skip
        best = d["training"].get("best_config", "bf16, channels_last")
        precision, layout = (s.strip() for s in best.split(","))
        cl = layout == "channels_last"
        d["flop_rate"] = _guard(
            f"[{dev}] FLOP rate", bt.bench_flop_rate,
            train_batch, size, 7, precision, cl, reps, quick, dev,
        )  # fmt: skip
        d["profile"] = _guard(
            f"[{dev}] profile", bt.profile_training_step,
            train_batch, size, 7, precision, cl, 1 if quick else 2, dev,
        )  # fmt: skip
        d["inference"] = _guard(
            f"[{dev}] inference batch", bi.bench_batch_throughput,
            infer_batch, size, 7, reps, 1, dev,
        )  # fmt: skip
        d["large_image"] = _guard(
            f"[{dev}] inference {large}x{large}", bi.bench_large_image,
            large, 7, max(2, reps - 2), 1, dev,
        )  # fmt: skip
        if dev == "cpu":
            mem = {}
            for design, batches in (("project", (4, 16)), ("original", (4, 16))):
                for b in batches:
                    mem[f"{design}_b{b}"] = _guard(
                        f"peak RSS {design} batch {b}", run_in_subprocess,
                        "bench_training", "peak_rss_training_step",
                        {"batch": b, "size": mem_size, "depth": 7, "precision": precision,
                         "channels_last": cl, "design": design},
                    )  # fmt: skip
            d["memory"] = mem
        res[dev] = d

    ext: dict[str, Any] = {}
    if "data" not in skip:
        out = RESULTS_DIR / "data_processing.json"
        n, r = ("600", "1") if quick else ("12000", str(min(reps, 3)))
        ext["data_processing"] = _guard(
            "data_processing", _external, "bench_data_processing.py",
            ["--n", n, "--repeats", r, "--out", str(out)], out, 1800,
        )  # fmt: skip
    if "partial_conv" not in skip:
        out = RESULTS_DIR / "partial_conv.json"
        r = "3" if quick else str(max(reps, 7))
        ext["partial_conv"] = _guard(
            "partial_conv", _external, "bench_partial_conv.py",
            ["--repeats", r, "--warmup", "1", "--output", str(out)], out, 900,
        )  # fmt: skip
    if "evaluate" not in skip:
        out = RESULTS_DIR / "evaluate.json"
        args = ["--out", str(out)]
        if images_dir:
            args += ["--images-dir", images_dir]
        args += (
            ["--n-images", "48", "--stage-images", "16", "--repeats", "1", "--stage-repeats", "1",
             "--skip-default-model"]
            if quick
            else ["--repeats", str(min(reps, 3))]
        )  # fmt: skip
        ext["evaluate"] = _guard("evaluate", _external, "bench_evaluate.py", args, out, 1800)
    for name, filename in (
        ("data_processing", "data_processing.json"),
        ("partial_conv", "partial_conv.json"),
        ("evaluate", "evaluate.json"),
    ):
        # A skipped external benchmark still shows its latest saved result, marked as such.
        saved = RESULTS_DIR / filename
        if name not in ext and saved.exists():
            ext[name] = {**json.loads(saved.read_text()), "from_saved_file": str(saved.name)}
    res["external"] = ext
    return res


# ------------------------------------------------------------------ table
def _ok(d: Any) -> bool:
    return isinstance(d, dict) and "error" not in d


def _err(d: Any) -> str:
    return (d or {}).get("error", "not run") if isinstance(d, dict) else "not run"


def _met(value: float, target: float, higher: bool = True) -> str:
    ok = value >= target if higher else value <= target
    return "met" if ok else "**not met**"


def rows_for_device(dev: str, d: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    tag = "CPU" if dev == "cpu" else dev.upper()
    tr = d.get("training")
    if _ok(tr):
        shape = f"{tr['size']}², depth {tr['depth']}, batch {tr['batch']}"
        for name, c in tr["configs"].items():
            who = "original design" if name.startswith("original") else "project"
            cfg = "fp32, NCHW" if who == "original design" else name
            best = " (best)" if name == tr["best_config"] else ""
            rows.append(
                [f"1 training step [{tag}]", f"{who}: {cfg}{best}, {shape}",
                 f"{c['images_per_s']:.2f} img/s", f"median {c['median_s']:.2f} s of {c['repeats']}", ""]
            )  # fmt: skip
        sp = tr["speedup_best_vs_original"]
        rows.append(
            [f"1 training speedup [{tag}]", f"project ({tr['best_config']}) / original",
             f"{sp:.2f}×", f"fp32 NCHW alone: {tr['speedup_fp32_nchw_vs_original']:.2f}×",
             f"≥ 1.5×: {_met(sp, 1.5)}"]
        )  # fmt: skip
    else:
        rows.append([f"1 training step [{tag}]", "", "error", _err(tr), ""])
    fr = d.get("flop_rate")
    if _ok(fr):
        pk = fr["conv_peak"][next(iter(fr["conv_peak"]))]
        rows.append(
            [f"2 FLOP rate [{tag}]", f"project step ({fr['config']}): {fr['step_gflops']:.0f} GFLOP "
             f"in {fr['step_median_s']:.2f} s",
             f"{fr['achieved_gflop_per_s']:.0f} GFLOP/s = {fr['fraction_of_peak']:.0%} of peak",
             f"peak {fr['peak_gflop_per_s']:.0f} GFLOP/s ({pk['precision']}, {pk['best_shape']})"
             + (f"; {fr['fraction_of_fp32_peak']:.0%} of fp32 peak "
                f"{fr['conv_peak']['fp32']['best_gflop_per_s']:.0f}" if "fp32" in fr["conv_peak"]
                and pk["precision"] != "fp32" else ""),
             f"≥ 60%: {_met(fr['fraction_of_peak'], 0.6)}"]
        )  # fmt: skip
    else:
        rows.append([f"2 FLOP rate [{tag}]", "", "error", _err(fr), ""])
    pr = d.get("profile")
    if _ok(pr):
        cats = pr["categories"]
        conv = cats.get("convolution (oneDNN/cuDNN)", {"share": 0.0})["share"]
        others = ", ".join(
            f"{k} {v['share']:.0%}" for k, v in cats.items() if not k.startswith("convolution")
        )
        inside = pr["conv_gflop_per_s_inside_convs"]
        rows.append(
            [f"2 profile [{tag}]", f"self time by op ({pr['config']})",
             f"convolutions {conv:.0%} of time, {pr['conv_flop_share']:.0%} of FLOPs",
             f"{inside:.0f} GFLOP/s inside convs; {others}", ""]
        )  # fmt: skip
    inf = d.get("inference")
    if _ok(inf):
        extra = ""
        if "original_images_per_s" in inf:
            extra = f"original design {inf['original_images_per_s']:.1f} img/s ({inf['speedup_best_vs_original']:.2f}×)"
        rows.append(
            [f"3 inference [{tag}]", f"{inf['size']}², batch {inf['batch']}, {inf['best_config']}",
             f"{inf['best_images_per_s']:.1f} img/s", extra, ""]
        )  # fmt: skip
    else:
        rows.append([f"3 inference [{tag}]", "", "error", _err(inf), ""])
    li = d.get("large_image")
    if _ok(li):
        rows.append(
            [f"3 one large image [{tag}]", f"{li['size']}×{li['size']}, {li['path']}",
             f"{li['median_s']:.2f} s", f"median of {li['repeats']}", ""]
        )  # fmt: skip
    else:
        rows.append([f"3 one large image [{tag}]", "", "error", _err(li), ""])
    for key, m in (d.get("memory") or {}).items():
        if _ok(m):
            rows.append(
                [f"4 peak RSS [{tag}]", f"{m['design']} training step, {m['config']}, "
                 f"{m['size']}², batch {m['batch']}",
                 fmt_mib(m["peak_rss_bytes"]), f"RSS before the step {fmt_mib(m['rss_before_step_bytes'])}", ""]
            )  # fmt: skip
        else:
            rows.append([f"4 peak RSS [{tag}]", key, "error", _err(m), ""])
    return rows


def rows_external(ext: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    dp = ext.get("data_processing")
    if _ok(dp):
        rows.append(
            ["5 data_processing", f"{dp['n_images']} images, ingest+split+masks, {dp['workers']} workers",
             f"{dp['images_per_second']:.0f} img/s", f"median of {dp['repeats']}",
             f"≥ {dp['target_images_per_second']} img/s: {_met(dp['images_per_second'], dp['target_images_per_second'])}"]
        )  # fmt: skip
    elif dp is not None:
        rows.append(
            ["5 data_processing", "TODO" if "TODO" in _err(dp) else "", "error", _err(dp), ""]
        )
    pc = ext.get("partial_conv")
    if _ok(pc):
        s = pc["shape"]
        byname = {r["variant"]: r for r in pc["results"]}
        ours = next(r for n, r in byname.items() if "this project" in n)
        dense = next((r for n, r in byname.items() if "dense" in n), None)
        rows.append(
            ["5 PartialConv2d fwd+bwd", f"{s['in_channels']}→{s['out_channels']} {s['kernel']}×{s['kernel']}, "
             f"{s['height']}², batch {s['batch']}, {pc['threads']} threads",
             f"{ours['ratio_vs_conv2d']:.3f}× nn.Conv2d ({ours['median_ms']:.0f} ms)",
             f"dense-mask approach {dense['ratio_vs_conv2d']:.2f}×" if dense else "",
             f"≤ 1.15×: {_met(ours['ratio_vs_conv2d'], pc.get('target_ratio', 1.15), higher=False)}"]
        )  # fmt: skip
    elif pc is not None:
        rows.append(["5 PartialConv2d fwd+bwd", "", "error", _err(pc), ""])
    ev = ext.get("evaluate")
    if _ok(ev) and "end_to_end" in ev:
        e2e = ev["end_to_end"]
        model = next(v for k, v in ev["stages"].items() if k.startswith("model [cpu-scale"))
        saved = f" (saved {ev['from_saved_file']})" if "from_saved_file" in ev else ""
        rows.append(
            ["5 evaluate", f"{ev['n_images']} images end to end: model ({ev['model']}) + every "
             f"baseline + every metric, {ev['workers']} workers{saved}",
             f"{e2e['median_s']:.0f} s ({e2e['images_per_s']:.1f} img/s)",
             f"model alone {model['images_per_s']:.1f} img/s, median of {e2e['repeats']}",
             f"< 120 s: {_met(e2e['median_s'], 120, higher=False)}"]
        )  # fmt: skip
    elif ev is not None:
        rows.append(["5 evaluate", "", "error", _err(ev), ""])
    return rows


def table(res: dict[str, Any]) -> str:
    rows: list[list[str]] = []
    for dev in ("cpu", "cuda"):
        if dev in res:
            rows += rows_for_device(dev, res[dev])
    rows += rows_external(res.get("external", {}))
    return markdown_table(rows, ["figure", "what", "value", "detail", "target"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, ~3 minutes")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per figure")
    parser.add_argument(
        "--skip",
        default="",
        help=f"comma-separated external benchmarks to skip: {','.join(EXTERNAL)}",
    )
    parser.add_argument(
        "--images-dir",
        default=None,
        help="real images for bench_evaluate (e.g. ../shared/data/skyview-dev)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "summary.json")
    args = parser.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    t0 = time.perf_counter()
    res = run(args.quick, args.repeats, skip, args.images_dir)
    res["wall_s"] = time.perf_counter() - t0
    text = table(res)
    res["table_markdown"] = text
    m = res["machine"]
    print(
        f"\n{m['cpu']}, {m['logical_cpus']} logical CPUs, {res['threads']} torch threads, torch "
        f"{m['torch']}, load average {m.get('load_average_1min', float('nan')):.1f} at start; "
        f"{'quick' if args.quick else 'full'} run, {res['repeats']} repeats, medians\n"
    )
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out} "
          f"({res['wall_s']:.0f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
