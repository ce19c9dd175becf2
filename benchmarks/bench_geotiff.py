"""Windowed GeoTIFF inpainting: megapixels per second and peak RSS on a generated raster.

Generates an N x N 8-bit RGB GeoTIFF (tiled, DEFLATE, EPSG:32633, 0.3 m pixels) with a
nodata hole of ``--hole-size`` px in every ``--hole-every`` x ``--hole-every`` block (so every
window holds holes and runs the network), written strip by strip, then inpaints it with
:func:`aerial_inpainting.geotiff.inpaint_raster` in a fresh process whose peak RSS (VmHWM) is
read after the run. Both steps run in their own subprocess, so the peaks never mix.

The model: ``--model FILE`` (a trained model file), else a randomly initialised network of
the CPU configuration (depth 5, 32-256 channels): its speed and memory are those of a
trained one.

``--whole`` also runs the same raster through the whole-image path (everything in memory,
as plain pictures below Pillow's limit are processed), for the memory per megapixel.

Run: ``python benchmarks/bench_geotiff.py --size 4000 [--size 8000 ...] [--window-size 2048]
[--whole]`` (prints JSON and writes ``benchmarks/results/geotiff.json``). Needs the ``geo``
extra.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    RESULTS_DIR,
    machine_info,
    peak_rss_bytes,
    reset_peak_rss,
    run_in_subprocess,
    setup_torch,
)


def generate(path: str, size: int, hole_every: int, hole_size: int, strip: int = 512) -> dict:
    """Write the test raster strip by strip (memory: one strip); returns its hole count."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    profile = dict(
        driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32633",
        transform=from_origin(500_000.0, 4_000_000.0, 0.3, 0.3), nodata=0, tiled=True,
        blockxsize=256, blockysize=256, compress="deflate", BIGTIFF="IF_SAFER",
    )  # fmt: skip
    holes = 0
    xx = np.arange(size, dtype=np.float32)[None, :]
    with rasterio.open(path, "w", **profile) as dst:
        for y0 in range(0, size, strip):
            rows = min(strip, size - y0)
            yy = np.arange(y0, y0 + rows, dtype=np.float32)[:, None]
            bands = np.stack(
                [
                    128 + 90 * np.sin(xx / 9.0) * np.cos(yy / 31.0),
                    128 + 90 * np.cos(yy / 11.0 + xx / 53.0),
                    128 + 60 * np.sin((xx + yy) / 15.0),
                ]
            )
            data = np.clip(np.rint(bands), 1, 255).astype(np.uint8)
            ys = (np.arange(y0, y0 + rows) % hole_every) < hole_size
            xs = (np.arange(size) % hole_every) < hole_size
            hole = ys[:, None] & xs[None, :]
            data[:, hole] = 0
            holes += int(hole.sum())
            dst.write(data, window=Window(0, y0, size, rows))
    return {"hole_pixels": holes, "file_mib": Path(path).stat().st_size / 2**20}


def inpaint(
    path: str,
    out: str,
    model_path: str | None,
    window_size: int,
    halo: int | None,
    device: str,
    threads: int | None,
) -> dict[str, Any]:
    """Inpaint ``path`` once; seconds, peak RSS of the run and the RSS before it."""

    from aerial_inpainting.geotiff import default_halo, inpaint_raster
    from benchmarks.common import current_rss_bytes

    used_threads = setup_torch(threads)
    model = _benchmark_model(model_path)
    baseline = current_rss_bytes()
    reset_peak_rss()
    start = time.perf_counter()
    outcome = inpaint_raster(model, path, out, window_size=window_size, halo=halo, device=device)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_rss_bytes": peak_rss_bytes(),
        "rss_before_bytes": baseline,
        "hole_pixels": outcome.hole_pixels,
        "halo": halo if halo is not None else default_halo(model, window_size),
        "threads": used_threads,
        "device": device,
    }


def _benchmark_model(model_path: str | None):
    """The model file at ``model_path``, else a seeded random network of the base recipe's
    shape (the time per pixel does not depend on the weights)."""
    import torch

    from aerial_inpainting.pconv.checkpoint import load_model
    from aerial_inpainting.pconv.unet import PConvUNet, UNetConfig

    if model_path:
        return load_model(model_path, map_location="cpu")
    torch.manual_seed(0)
    return PConvUNet(UNetConfig(depth=5, base_channels=32, max_channels=256)).eval()


def inpaint_whole(
    path: str, out: str, model_path: str | None, device: str, threads: int | None
) -> dict[str, Any]:
    """The same raster through the whole-image path (what PNG/JPEG inputs below Pillow's
    limit take: prepare_inputs -> fill_holes -> compose_output, all in memory)."""
    import numpy as np
    import rasterio
    from PIL import Image

    from aerial_inpainting.inference import compose_output, fill_holes, prepare_inputs
    from benchmarks.common import current_rss_bytes

    used_threads = setup_torch(threads)
    model = _benchmark_model(model_path)
    baseline = current_rss_bytes()
    reset_peak_rss()
    start = time.perf_counter()
    with rasterio.open(path) as src:
        rgb = np.ascontiguousarray(src.read().transpose(1, 2, 0))
    mask = np.where((rgb == 0).all(axis=2), 0, 255).astype(np.uint8)
    inputs = prepare_inputs(rgb, mask)
    del rgb, mask
    filled = fill_holes(model, inputs.rgb, inputs.valid, device)
    Image.fromarray(compose_output(inputs, filled)).save(out)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_rss_bytes": peak_rss_bytes(),
        "rss_before_bytes": baseline,
        "hole_pixels": int((~inputs.valid).sum()),
        "halo": None,
        "threads": used_threads,
        "device": device,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, action="append", help="raster side (repeatable)")
    parser.add_argument("--window-size", type=int, default=2048)
    parser.add_argument("--halo", type=int, default=None, help="default: geotiff.default_halo")
    parser.add_argument("--hole-every", type=int, default=512)
    parser.add_argument("--hole-size", type=int, default=48)
    parser.add_argument("--model", default=None, help="model file (default: random CPU net)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workdir", default=None, help="where the rasters go (default: temp)")
    parser.add_argument(
        "--whole",
        action="store_true",
        help="also time the whole-image path (all in memory) on each raster, for comparison",
    )
    parser.add_argument("--out", default=str(RESULTS_DIR / "geotiff.json"))
    args = parser.parse_args(argv)
    sizes = args.size or [20_000]

    results = []
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        for size in sizes:
            src, dst = f"{work}/in_{size}.tif", f"{work}/out_{size}.tif"
            t0 = time.perf_counter()
            made = run_in_subprocess(
                "bench_geotiff", "generate",
                {"path": src, "size": size, "hole_every": args.hole_every,
                 "hole_size": args.hole_size},
                timeout=7200,
            )  # fmt: skip
            made["generate_seconds"] = time.perf_counter() - t0
            run = run_in_subprocess(
                "bench_geotiff", "inpaint",
                {"path": src, "out": dst, "model_path": args.model,
                 "window_size": args.window_size, "halo": args.halo,
                 "device": args.device, "threads": args.threads},
                timeout=4 * 7200,
            )  # fmt: skip
            runs = {"windowed": run}
            if args.whole:
                runs["whole"] = run_in_subprocess(
                    "bench_geotiff", "inpaint_whole",
                    {"path": src, "out": f"{work}/out_{size}.png", "model_path": args.model,
                     "device": args.device, "threads": args.threads},
                    timeout=4 * 7200,
                )  # fmt: skip
            megapixels = size * size / 1e6
            for path_name, result in runs.items():
                row = {
                    "size": size,
                    "path": path_name,
                    "megapixels": megapixels,
                    "window_size": args.window_size if path_name == "windowed" else None,
                    **made,
                    **result,
                    "megapixels_per_s": megapixels / result["seconds"],
                    "peak_rss_mib": result["peak_rss_bytes"] / 2**20,
                    "rss_before_mib": result["rss_before_bytes"] / 2**20,
                    "rss_above_baseline_mib_per_megapixel": (
                        result["peak_rss_bytes"] - result["rss_before_bytes"]
                    )
                    / 2**20
                    / megapixels,
                    "hole_ratio": made["hole_pixels"] / (size * size),
                }
                print(json.dumps(row), file=sys.stderr)
                results.append(row)
    report = {
        "command": "python benchmarks/bench_geotiff.py " + " ".join(sys.argv[1:]),
        "model": args.model or "random PConvUNet depth 5, 32-256 channels (CPU configuration)",
        "machine": machine_info(),
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
