"""How to fill hole pixels beyond the U-Net's reach, measured (issue 14, part 1).

A partial-convolution U-Net of depth D only propagates the valid mask so far: with the CPU
network (depth 5) a hole pixel more than about 79 px from any valid pixel keeps mask 0 after
the last layer and gets the network's zero default, not a prediction. Candidates for those
*out-of-reach* pixels, scored on exactly those pixels against the ground truth:

* ``coarse``: ``fill_holes(far_holes="coarse")``, the default: the image and mask shrunk 2x
  (recursively where still needed), filled, and upsampled (bilinear) into those pixels;
* ``passes``: ``fill_holes(far_holes="passes")``: repeated passes, each with every pixel
  predicted so far counted as valid;
* ``telea``: OpenCV's Telea inpainting (radius 3) of the whole hole, read on the same pixels;
* ``mean``: the mean colour of the valid pixels (a floor).

Images: 512x512, a centred 384x384 hole (the issue's case: 51,076 out-of-reach pixels per
image with depth 5). ``--images-dir`` takes real photographs (e.g.
../shared/data/skyview-dev/Aerial_Landscapes, each 256x256 upscaled 2x with Lanczos);
without it, the project's synthetic aerial scenes are generated at 512x512.

    python benchmarks/bench_out_of_reach.py --model MODEL [--images-dir DIR] [--n 30]

MODEL: a model file or training checkpoint (``aerial_inpainting.pconv.checkpoint.load_model``);
without it an untrained CPU-default network is used (then only the timing means anything).
Writes benchmarks/results/out_of_reach.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, machine_info, setup_torch

from aerial_inpainting.inference import _predict, _reflect_pad, _round_up, fill_holes
from aerial_inpainting.pconv.checkpoint import load_model
from aerial_inpainting.pconv.unet import PConvUNet, UNetConfig

SIZE, HOLE = 512, 384


def load_images(images_dir: str | None, n: int, seed: int) -> tuple[list[np.ndarray], str]:
    if images_dir is None:
        from aerial_inpainting.imaging.synthetic import generate_scene, scene_rng

        classes = ["Agriculture", "Forest", "Lake", "Highway", "Residential", "Desert"]
        return [
            generate_scene(classes[i % len(classes)], scene_rng(seed, classes[i % 6], i), SIZE)
            for i in range(n)
        ], "synthetic scenes (imaging.synthetic), 512x512"
    files = sorted(Path(images_dir).glob("*/*.jpg"))
    rng = np.random.default_rng(seed)
    chosen = [
        files[i] for i in sorted(rng.choice(len(files), size=min(n, len(files)), replace=False))
    ]
    images = []
    for path in chosen:
        with Image.open(path) as picture:
            picture = picture.convert("RGB").resize((SIZE, SIZE), Image.Resampling.LANCZOS)
            images.append(np.asarray(picture).copy())
    return images, f"{len(images)} photographs from {images_dir}, upscaled 2x (Lanczos) to 512x512"


def predict_padded(model, image, valid):
    multiple = 2**model.config.depth
    h, w = valid.shape
    ph, pw = _round_up(h, multiple), _round_up(w, multiple)
    out, reach = _predict(
        model, _reflect_pad(image, ph, pw), _reflect_pad(valid, ph, pw), torch.device("cpu")
    )
    return out[:h, :w], reach[:h, :w]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--images-dir", default=None)
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args(argv)
    threads = setup_torch()
    if args.model:
        model, model_desc = load_model(args.model).eval(), f"{args.model}"
    else:
        torch.manual_seed(0)
        model = PConvUNet(UNetConfig(depth=5, base_channels=32, max_channels=256)).eval()
        model_desc = "untrained CPU-default network (depth 5, 32-256), seed 0"
    model = model.to(memory_format=torch.channels_last)
    images, images_desc = load_images(args.images_dir, args.n, args.seed)
    valid = np.ones((SIZE, SIZE), dtype=bool)
    lo = (SIZE - HOLE) // 2
    valid[lo : lo + HOLE, lo : lo + HOLE] = False
    mask8 = (~valid).astype(np.uint8) * 255

    scores: dict[str, dict[str, list[float]]] = {}
    times: dict[str, list[float]] = {"passes": [], "coarse": [], "telea": []}
    n_out = 0
    for image in images:
        _, reach = predict_padded(model, image, valid)
        out_of_reach = ~valid & ~reach
        n_out = int(out_of_reach.sum())
        t = time.perf_counter()
        passes = fill_holes(model, image, valid, far_holes="passes")
        times["passes"].append(time.perf_counter() - t)
        t = time.perf_counter()
        coarse = fill_holes(model, image, valid, far_holes="coarse")
        times["coarse"].append(time.perf_counter() - t)
        t = time.perf_counter()
        telea = cv2.cvtColor(
            cv2.inpaint(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), mask8, 3, cv2.INPAINT_TELEA),
            cv2.COLOR_BGR2RGB,
        )
        times["telea"].append(time.perf_counter() - t)
        mean = np.broadcast_to(image[valid].mean(axis=0).round().astype(np.uint8), image.shape)
        truth = image[out_of_reach]
        for name, filled in (
            ("passes", passes),
            ("coarse", coarse),
            ("telea", telea),
            ("mean", mean),
        ):
            got = filled[out_of_reach]
            entry = scores.setdefault(name, {"psnr": [], "l1": []})
            entry["psnr"].append(psnr(got, truth))
            entry["l1"].append(float(np.abs(got.astype(float) - truth.astype(float)).mean() / 255))
        also_reached = ~valid & reach  # pixels pass 1 reached: the same in every method
        assert np.array_equal(passes[also_reached], coarse[also_reached])

    summary = {
        name: {
            "psnr_mean": float(np.mean(v["psnr"])),
            "psnr_std": float(np.std(v["psnr"])),
            "l1_mean": float(np.mean(v["l1"])),
        }
        for name, v in scores.items()
    }

    def paired(a: str, b: str) -> dict[str, float | None]:
        diff = np.array(scores[a]["psnr"]) - np.array(scores[b]["psnr"])
        stderr = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else None
        return {"mean": float(diff.mean()), "stderr": stderr, "wins": float((diff > 0).mean())}

    result = {
        "images": images_desc,
        "n_images": len(images),
        "model": model_desc,
        "hole": f"centred {HOLE}x{HOLE} in {SIZE}x{SIZE}",
        "out_of_reach_pixels_per_image": n_out,
        "summary_on_out_of_reach_pixels": summary,
        "paired_psnr_differences": {
            f"{a}-{b}": paired(a, b)
            for a, b in (
                ("coarse", "telea"),
                ("coarse", "passes"),
                ("passes", "telea"),
                ("coarse", "mean"),
            )
        },
        "per_image_psnr": {name: v["psnr"] for name, v in scores.items()},
        "seconds_per_image_median": {k: float(np.median(v)) for k, v in times.items()},
        "threads": threads,
        "machine": machine_info(),
    }
    print(json.dumps(result, indent=2))
    RESULTS_DIR.mkdir(exist_ok=True)
    name = "out_of_reach.json" if args.images_dir else "out_of_reach_synthetic.json"
    (RESULTS_DIR / name).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
