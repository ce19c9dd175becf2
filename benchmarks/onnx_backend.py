"""PyTorch vs onnxruntime on the CPU for the shipped network (issue 30, ``--backend onnx``).

Times one forward pass (``forward_with_mask``) of the model with PyTorch (channels_last, as
:mod:`aerial_inpainting.inference` runs it) and with onnxruntime (its export by
:func:`aerial_inpainting.onnx_export.export_onnx`, run by
:class:`aerial_inpainting.onnx_backend.OnnxUNet`), interleaved (A B A B ...) with the same
thread count, on

* a batch of ``--batch`` images of ``--small`` px (default 8 x 256 px), and
* one image of ``--large`` px (default 2,048 px),

each with a random 20 % of holes in blocks; records the median times and the largest
|onnxruntime - PyTorch| output difference. The export is made once into ``--workdir``
(default: a temporary folder) and its time recorded.

Run: ``python benchmarks/onnx_backend.py [--threads 2] [--small 256 --batch 8 --large 2048]``
(prints JSON and writes ``benchmarks/results/onnx_backend.json``; ``--large 512`` for a
quick run). Needs the ``onnx`` extra.
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

from benchmarks.common import RESULTS_DIR, bench_interleaved, machine_info, setup_torch


def _inputs(batch: int, size: int, seed: int) -> tuple[Any, Any]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, size, size, generator=generator)
    blocks = torch.rand(batch, 1, size // 16, size // 16, generator=generator) > 0.2
    mask = blocks.float().repeat_interleave(16, dim=2).repeat_interleave(16, dim=3)
    return image, mask


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--small", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--large", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default=None, help="model file (default: the shipped one)")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=str(RESULTS_DIR / "onnx_backend.json"))
    args = parser.parse_args(argv)

    import torch

    from aerial_inpainting.onnx_backend import OnnxUNet
    from aerial_inpainting.onnx_export import export_onnx

    threads = setup_torch(args.threads)
    if args.model:
        from aerial_inpainting.pconv.checkpoint import load_model

        model = load_model(args.model, map_location="cpu").eval()
    else:
        from aerial_inpainting.pretrained_model import load_pretrained

        model = load_pretrained().eval()
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        start = time.perf_counter()
        path = export_onnx(model, Path(work) / "model.onnx")
        export_seconds = time.perf_counter() - start
        onnx_model = OnnxUNet(path, threads=threads)
        model = model.to(memory_format=torch.channels_last)
        rows = []
        for label, (batch, size) in (
            ("small_batch", (args.batch, args.small)),
            ("large_image", (1, args.large)),
        ):
            image, mask = _inputs(batch, size, seed=size)
            image_cl = image.contiguous(memory_format=torch.channels_last)

            def run_torch(image_cl: Any = image_cl, mask: Any = mask) -> Any:
                with torch.inference_mode():
                    return model.forward_with_mask(image_cl, mask)

            def run_onnx(image: Any = image, mask: Any = mask) -> Any:
                return onnx_model.forward_with_mask(image, mask)

            times = bench_interleaved(
                {"torch": run_torch, "onnx": run_onnx}, repeats=args.repeats, warmup=1
            )
            (a, ra), (b, rb) = run_torch(), run_onnx()
            megapixels = batch * size * size / 1e6
            row = {
                "case": label,
                "batch": batch,
                "size": size,
                "torch": times["torch"],
                "onnx": times["onnx"],
                "torch_megapixels_per_s": megapixels / times["torch"]["median_s"],
                "onnx_megapixels_per_s": megapixels / times["onnx"]["median_s"],
                "onnx_speedup": times["torch"]["median_s"] / times["onnx"]["median_s"],
                "max_abs_output_diff": float((a - b).abs().max()),
                "reached_equal": bool(torch.equal(ra > 0, rb > 0)),
            }
            print(json.dumps(row), file=sys.stderr)
            rows.append(row)
    report = {
        "command": "python benchmarks/onnx_backend.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "model": args.model or "shipped pretrained model (skyview-small, depth 5)",
        "threads": threads,
        "export_seconds": export_seconds,
        "machine": machine_info(),
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
