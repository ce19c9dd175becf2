"""The device run's report files (issue 25): ``report.json`` after every step; at the end also
``report.md`` (the tables a reader wants) and ``curves.png`` (losses and validation PSNR over
the run's wall time, one line per arm)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

METRICS = (("psnr", "PSNR dB", 2), ("ssim", "SSIM", 4), ("lpips", "LPIPS", 4))


def test_summary(code: int | None, log: Path) -> dict[str, Any]:
    """The test subset's outcome: exit code (None = killed at its timeout), pytest's last line."""
    lines = log.read_text(errors="replace").strip().splitlines() if log.is_file() else []
    return {"ok": code == 0, "exit": code, "summary": lines[-1] if lines else ""}


def write(out: str | Path, report: dict[str, Any], final: bool = False) -> None:
    out = Path(out)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    if final:
        (out / "report.md").write_text(markdown(report))
        curves(report, out / "curves.png")


def _fmt(value: float, digits: int) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.{digits}f}"
    )


def markdown(report: dict[str, Any]) -> str:
    env = report.get("environment", {})
    lines = [
        "# Device run",
        "",
        f"{env.get('gpu', 'CPU (dry run)')}, torch {env.get('torch')}, CUDA {env.get('cuda')}; "
        f"started {report.get('started')}, {report.get('wall_seconds')} s in all.",
        "",
        "## Training",
        "",
        "| arm | steps | minutes | images/s (median) | step ms | peak GiB | parameters |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for arm, s in report.get("arms", {}).items():
        if not s.get("ok"):
            lines.append(f"| {arm} | failed (exit {s.get('exit')}) | | | | | |")
            continue
        info = s["info"]
        lines.append(
            f"| {arm} | {info['final_step']} | {info['elapsed_minutes']} | "
            f"{_fmt(s['images_per_s_median'], 0)} | {_fmt(s['step_ms_median'], 1)} | "
            f"{_fmt(s['peak_memory_gib'] or math.nan, 2)} | {s['parameters']:,} |"
        )
    score = report.get("score", {})
    if "methods" in score:
        lines += ["", f"## Validation ({score['n_images']} images carried in the bundle)", ""]
        lines += [
            "| method | PSNR dB | SSIM | LPIPS | PSNR over Telea | SSIM over Telea | LPIPS over Telea |"
        ]
        lines += ["| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name, means in score["methods"].items():
            row = [name, *(_fmt(means[m], d) for m, _, d in METRICS)]
            over = score["over_telea"].get(name)
            for m, _, d in METRICS:
                if over is None:
                    row.append("")
                else:
                    o = over[m]
                    row.append(
                        f"{o['mean']:+.{d}f} ± {o['se']:.{d}f} ({100 * o['share_better']:.0f} %)"
                    )
            lines.append("| " + " | ".join(row) + " |")
    elif "error" in score:
        lines += ["", "## Validation", "", "Scoring failed:", "", "```", score["error"], "```"]
    tests = report.get("tests", {})
    lines += [
        "",
        "## Tests",
        "",
        f"`pytest -m cuda` exit {tests.get('exit')}: {tests.get('summary')}",
    ]
    return "\n".join(lines) + "\n"


def curves(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for arm, s in report.get("arms", {}).items():
        if not s.get("ok"):
            continue
        logs = s["logs"]
        loss_ax.plot([r["wall_s"] / 60 for r in logs], [r["loss_total"] for r in logs], label=arm)
        rows = [
            r
            for r in s["history"]
            if r.get("val_psnr") is not None and not math.isnan(r["val_psnr"])
        ]
        val_ax.plot([r["step"] for r in rows], [r["val_psnr"] for r in rows], marker="o", label=arm)
    loss_ax.set(xlabel="training minutes", ylabel="total loss", yscale="log", title="Training loss")
    val_ax.set(
        xlabel="step", ylabel="PSNR dB (8 validation images)", title="Validation during training"
    )
    for ax in (loss_ax, val_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
