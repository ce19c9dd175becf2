"""Hole-aware filling (issue 30): this project vs OpenCV Telea on large rasters, sparse holes.

For each hole layout an N x N 8-bit RGB GeoTIFF (tiled, DEFLATE, EPSG:32633, nodata 0) is
generated, then filled

* by this project through :func:`aerial_inpainting.geotiff.inpaint_raster` (what
  ``aerial-inpaint IN.tif OUT.tif --fill-nodata all`` calls; default windows of 2,048 px),
  with the shipped model (or ``--model FILE``), counting the network calls and the pixels
  they computed (``fill_nodata="all"``: the stripes touch the border, which would otherwise
  make them a no-data collar that is kept);
* by OpenCV's Telea (``cv2.inpaint(rgb, holes, 3, cv2.INPAINT_TELEA)``) on the same raster:
  read whole, inpaint, written as a GeoTIFF with the same profile (``telea_seconds``), and
  the ``cv2.inpaint`` call alone (``telea_inpaint_seconds``);

each in a fresh subprocess whose peak RSS (VmHWM) is read after the run, with the same thread
count for PyTorch and OpenCV (``--threads``, default 2). Layouts (``--layout``, repeatable):

* ``grid``: a 48-px hole in every 512-px block (``benchmarks/bench_geotiff.py``'s layout,
  with the holes in the blocks' centres: no-data touching the raster's border is a collar,
  left as no-data by default, see :mod:`aerial_inpainting.geotiff`);
* ``blobs``: 20 round blobs in 4 clusters covering about 2 % of the area;
* ``stripes``: a 5-px full-width stripe every 500 rows;
* ``none``: no hole (reads and writes only: the run must make no network call).

``--baseline-src DIR`` also fills the ``grid`` raster with the package found in ``DIR`` (e.g.
the source tree of a commit before hole-aware filling) for a before/after figure in one run.

Run: ``python benchmarks/hole_aware.py [--size 4000] [--threads 2] [--baseline-src DIR]``
(prints JSON and writes ``benchmarks/results/hole_aware.json``; ``--size 1024`` for a quick
run). Needs the ``geo`` extra.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    RESULTS_DIR,
    ROOT,
    machine_info,
    peak_rss_bytes,
    reset_peak_rss,
    setup_torch,
)

LAYOUTS = ("grid", "blobs", "stripes", "none")
# Today's figure for the grid layout at 4,000 px (benchmarks/results/geotiff.json, before
# hole-aware filling): the network ran over every window holding a hole.
BEFORE_GRID_4000_SECONDS = 337.0


def hole_map(layout: str, size: int, seed: int = 0) -> Any:
    """bool (size, size), True = hole, for ``layout`` (see the module docstring)."""
    import numpy as np

    holes = np.zeros((size, size), dtype=bool)
    if layout == "grid":
        offset = np.arange(size) % 512
        index = (offset >= 232) & (offset < 280)  # centred: no hole touches the border
        holes = index[:, None] & index[None, :]
    elif layout == "blobs":
        rng = np.random.default_rng(seed)
        radius = np.sqrt(0.02 * size * size / (20 * np.pi))  # 20 discs: ~2 % of the area
        centres = rng.uniform(0.15 * size, 0.85 * size, size=(4, 2))
        yy, xx = np.ogrid[0:size, 0:size]
        for cy, cx in centres:
            for _ in range(5):
                y, x = rng.normal((cy, cx), 0.06 * size)
                r = radius * rng.uniform(0.7, 1.25)
                holes |= (yy - y) ** 2 + (xx - x) ** 2 <= r * r
    elif layout == "stripes":
        holes[(np.arange(size) % 500 >= 250) & (np.arange(size) % 500 < 255)] = True
    elif layout != "none":
        raise ValueError(f"unknown layout {layout!r}; one of {LAYOUTS}")
    return holes


def generate(path: str, size: int, layout: str) -> dict[str, Any]:
    """Write the test raster (a textured scene, holes = nodata 0); returns its hole count."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    profile = dict(
        driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32633",
        transform=from_origin(500_000.0, 4_000_000.0, 0.3, 0.3), nodata=0, tiled=True,
        blockxsize=256, blockysize=256, compress="deflate", BIGTIFF="IF_SAFER",
    )  # fmt: skip
    holes = hole_map(layout, size)
    rng = np.random.default_rng(1)
    with rasterio.open(path, "w", **profile) as dst:
        for y0 in range(0, size, 512):
            rows = min(512, size - y0)
            yy = np.arange(y0, y0 + rows, dtype=np.float32)[:, None]
            xx = np.arange(size, dtype=np.float32)[None, :]
            bands = np.stack(
                [
                    128 + 90 * np.sin(xx / 9.0) * np.cos(yy / 31.0),
                    128 + 90 * np.cos(yy / 11.0 + xx / 53.0),
                    128 + 60 * np.sin((xx + yy) / 15.0),
                ]
            ) + rng.normal(0, 8, (3, rows, size))
            data = np.clip(np.rint(bands), 1, 255).astype(np.uint8)
            data[:, holes[y0 : y0 + rows]] = 0
            dst.write(data, window=rasterio.windows.Window(0, y0, size, rows))
    return {"hole_pixels": int(holes.sum()), "hole_ratio": float(holes.mean())}


def _model(model_path: str | None) -> Any:
    if model_path:
        from aerial_inpainting.pconv.checkpoint import load_model

        return load_model(model_path, map_location="cpu").eval()
    from aerial_inpainting.pretrained_model import load_pretrained

    return load_pretrained().eval()


def project(path: str, out: str, model_path: str | None, threads: int) -> dict[str, Any]:
    """Fill ``path`` with :func:`inpaint_raster`; seconds, peak RSS, network calls/pixels."""
    import cv2

    from aerial_inpainting.geotiff import inpaint_raster
    from benchmarks.common import current_rss_bytes

    setup_torch(threads)
    cv2.setNumThreads(threads)
    model = _model(model_path)
    calls: list[tuple[int, ...]] = []

    def counting(method: Any) -> Any:
        def counted(x: Any, m: Any) -> Any:
            calls.append(tuple(x.shape))
            return method(x, m)

        return counted

    # The network's two entries: the image with holes, or (prefilled networks, whose pre-fill
    # the hole-aware path computes once per window) the pre-filled image.
    for name in ("forward_with_mask", "forward_on_prefill"):
        if hasattr(model, name):
            setattr(model, name, counting(getattr(model, name)))
    baseline = current_rss_bytes()
    reset_peak_rss()
    start = time.perf_counter()
    # Every no-data pixel is a hole, the full-width stripes (which touch the border) too.
    import inspect

    options = {}
    if "fill_nodata" in inspect.signature(inpaint_raster).parameters:
        options["fill_nodata"] = "all"
    outcome = inpaint_raster(model, path, out, device="cpu", **options)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_rss_mib": peak_rss_bytes() / 2**20,
        "rss_before_mib": baseline / 2**20,
        "hole_pixels_filled": outcome.hole_pixels,
        "network_calls": len(calls),
        "network_megapixels": sum(n * h * w for n, _, h, w in calls) / 1e6,
    }


def telea(path: str, out: str, threads: int) -> dict[str, Any]:
    """Read the raster whole, cv2.inpaint (Telea, radius 3) its nodata pixels, write it."""
    import cv2
    import numpy as np
    import rasterio

    from benchmarks.common import current_rss_bytes

    cv2.setNumThreads(threads)
    baseline = current_rss_bytes()
    reset_peak_rss()
    start = time.perf_counter()
    with rasterio.open(path) as src:
        profile = dict(src.profile)
        rgb = np.ascontiguousarray(src.read().transpose(1, 2, 0))
    holes = (rgb == 0).all(axis=2).astype(np.uint8)
    t0 = time.perf_counter()
    filled = cv2.inpaint(rgb, holes, 3, cv2.INPAINT_TELEA)
    inpaint_seconds = time.perf_counter() - t0
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(filled.transpose(2, 0, 1))
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "inpaint_seconds": inpaint_seconds,
        "peak_rss_mib": peak_rss_bytes() / 2**20,
        "rss_before_mib": baseline / 2**20,
    }


def _run(function: str, kwargs: dict[str, Any], src: str | None = None) -> dict[str, Any]:
    """``benchmarks.hole_aware.<function>(**kwargs)`` in a fresh interpreter (with the package
    from ``src`` first on the path when given)."""
    code = (
        "import json, sys\n"
        f"from benchmarks.hole_aware import {function} as f\n"
        f"res = f(**json.loads({json.dumps(json.dumps(kwargs))}))\n"
        "print('__RESULT__' + json.dumps(res))\n"
    )
    paths = [str(ROOT)] + ([src] if src else []) + [os.environ.get("PYTHONPATH", "")]
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)},
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("__RESULT__"):
            return json.loads(line[len("__RESULT__") :])
    raise RuntimeError(f"{function} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4000, help="raster side (default 4000)")
    parser.add_argument("--layout", action="append", choices=LAYOUTS, help="default: all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default=None, help="model file (default: the shipped one)")
    parser.add_argument("--baseline-src", default=None, help="package source tree to compare")
    parser.add_argument("--workdir", default=None, help="where the rasters go (default: temp)")
    parser.add_argument("--out", default=str(RESULTS_DIR / "hole_aware.json"))
    args = parser.parse_args(argv)
    rows = []
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        for layout in args.layout or LAYOUTS:
            src = f"{work}/{layout}.tif"
            made = _run("generate", {"path": src, "size": args.size, "layout": layout})
            ours = _run(
                "project",
                {"path": src, "out": f"{work}/{layout}_out.tif", "model_path": args.model,
                 "threads": args.threads},
            )  # fmt: skip
            classic = _run(
                "telea", {"path": src, "out": f"{work}/{layout}_telea.tif", "threads": args.threads}
            )
            row: dict[str, Any] = {"layout": layout, "size": args.size, **made}
            row.update({f"project_{k}": v for k, v in ours.items()})
            row.update({f"telea_{k}": v for k, v in classic.items()})
            row["project_over_telea"] = ours["seconds"] / classic["seconds"]
            if layout == "grid" and args.baseline_src:
                before = _run(
                    "project",
                    {"path": src, "out": f"{work}/{layout}_before.tif",
                     "model_path": args.model, "threads": args.threads},
                    src=args.baseline_src,
                )  # fmt: skip
                row.update({f"before_{k}": v for k, v in before.items()})
                row["speedup_over_before"] = before["seconds"] / ours["seconds"]
            if layout == "grid" and args.size == 4000:
                row["speedup_over_geotiff_json_337s"] = BEFORE_GRID_4000_SECONDS / ours["seconds"]
            print(json.dumps(row), file=sys.stderr)
            rows.append(row)
    report = {
        "command": "python benchmarks/hole_aware.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "model": args.model or "shipped pretrained model (skyview-small, depth 5)",
        "threads": args.threads,
        "machine": machine_info(),
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
