"""Training and scoring on the device machine (issue 25), from the bundle alone.

Imports nothing the device lacks: the package's plain-PyTorch parts (``pconv``, ``imaging``,
``evaluation``), NumPy, Pillow, OpenCV, PyYAML, and the two carried wheels. No Kedro, no MLflow.

* :func:`training_params`: ``conf/base`` + ``conf/<env>`` parameters (deep-merged, as Kedro's
  soft merge does), then the arm's and the run's overrides;
* :func:`train_arm`: one arm of the run: the bundle's images decoded once and held on the GPU
  with a seeded pool of masks (:class:`~aerial_inpainting.pconv.device_stream.DeviceTrainStream`),
  the package's own training loop, the model saved as float16 safetensors;
* :func:`score`: the bundle's validation images and masks, filled by Telea, pull-push and each
  model; PSNR/SSIM as the evaluate pipeline computes them, LPIPS (AlexNet), paired against Telea.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Mapping
from functools import partial
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

from aerial_inpainting.evaluation import baselines
from aerial_inpainting.evaluation.metrics import inpainting_metrics
from aerial_inpainting.evaluation.perceptual import LPIPSScorer
from aerial_inpainting.imaging.buckets import bucket_of
from aerial_inpainting.imaging.masks import MaskShapeConfig, random_mask
from aerial_inpainting.pconv.checkpoint import load_model, save_model
from aerial_inpainting.pconv.config import TrainConfig
from aerial_inpainting.pconv.device_stream import DeviceTrainStream
from aerial_inpainting.pconv.train import TrainingCallback, TrainingData, train

logger = logging.getLogger("gpu_run")
ROOT = Path(__file__).resolve().parents[2]
POOL_STREAM = 3  # the mask pool's seed stream (0-2: the project's test, train, val masks)
ARMS = {"none": {"model": {"prefill": "none"}}, "pushpull": {"model": {"prefill": "pushpull"}}}


def merged(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in, nested mappings key by key."""
    out = dict(base)
    for key, value in override.items():
        nested = isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
        out[key] = merged(out[key], value) if nested else value
    return out


def read_block(env: str, block: str) -> dict[str, Any]:
    """``conf/<env>/parameters_<block>.yml``'s ``<block>:`` (empty when the file is absent)."""
    path = ROOT / "conf" / env / f"parameters_{block}.yml"
    return (yaml.safe_load(path.read_text()) or {}).get(block, {}) if path.is_file() else {}


def training_params(env: str, arm: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``training:`` of conf/base + conf/<env>, then the arm's and the run's overrides."""
    params = merged(read_block("base", "training"), read_block(env, "training"))
    return merged(merged(params, ARMS[arm]), overrides)


def mask_shapes() -> MaskShapeConfig:
    """The project's mask family (conf/base/parameters_data_processing.yml)."""
    masks = read_block("base", "data_processing")["masks"]
    return MaskShapeConfig.from_params(masks["shapes"])


def masks_seed() -> int:
    return int(read_block("base", "data_processing")["masks"]["seed"])


# ------------------------------------------------------------------ the bundle's arrays
def load_npz(bundle: Path, name: str) -> dict[str, np.ndarray]:
    with np.load(bundle / "data" / f"{name}.npz", allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def _decode(blob: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))


def decode_all(
    arrays: Mapping[str, np.ndarray], workers: int, limit: int | None = None
) -> np.ndarray:
    """The packed JPEGs (the first ``limit``) as uint8 (N, H, W, 3), decoded by Pillow in
    ``workers`` processes."""
    data, offsets = arrays["jpeg"], arrays["offsets"]
    count = len(offsets) - 1 if limit is None else min(limit, len(offsets) - 1)
    blobs = [data[offsets[i] : offsets[i + 1]].tobytes() for i in range(count)]
    if workers > 1:
        with Pool(workers) as pool:
            return np.stack(pool.map(_decode, blobs, chunksize=64))
    return np.stack([_decode(b) for b in blobs])


def unpack_masks(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """The bundle's validation masks as uint8 (N, H, W), 1 = valid."""
    height, width = (int(v) for v in arrays["mask_shape"])
    return np.unpackbits(arrays["masks"], axis=-1)[..., :width].reshape(-1, height, width)


def _pool_mask(key: tuple[int, int, int], shapes: MaskShapeConfig) -> np.ndarray:
    seed, index, size = key
    return random_mask(np.random.default_rng([seed, POOL_STREAM, index]), size, size, shapes)


def mask_pool(n: int, size: int, workers: int) -> np.ndarray:
    """``n`` masks (uint8 (n, size, size), 1 = valid) of the project's family, mask ``i`` drawn
    from ``default_rng([data_processing.masks.seed, 3, i])``: the same pool on every machine."""
    draw = partial(_pool_mask, shapes=mask_shapes())
    keys = [(masks_seed(), i, size) for i in range(n)]
    if workers > 1:
        with Pool(workers) as pool:
            return np.stack(pool.map(draw, keys, chunksize=64))
    return np.stack([draw(k) for k in keys])


# ------------------------------------------------------------------ one arm
class Recorder(TrainingCallback):
    """The run's log windows and validations, with their wall-clock times."""

    def __init__(self) -> None:
        self.logs: list[dict[str, float]] = []
        self.started = 0.0

    def on_train_start(self, info: Mapping[str, Any]) -> None:
        import time

        self.started = time.perf_counter()

    def on_log(self, step: int, metrics: Mapping[str, float]) -> None:
        import time

        self.logs.append({"step": step, "wall_s": time.perf_counter() - self.started, **metrics})


def train_arm(
    bundle: Path,
    arm: str,
    params: Mapping[str, Any],
    out_file: Path,
    pool_size: int,
    workers: int,
    val_images: int,
    train_limit: int | None = None,
) -> dict[str, Any]:
    """Train one arm on the bundle's images; save its model (EMA weights, float16) to
    ``out_file``; return what the report needs (history, info, speed, memory)."""
    cfg = TrainConfig.from_params(dict(params))
    images = decode_all(load_npz(bundle, "train"), workers, train_limit)
    masks = mask_pool(pool_size, images.shape[1], workers)
    device = torch.device(cfg.device if cfg.device != "auto" else "cuda")
    stream = DeviceTrainStream(
        images, masks, cfg.train_size, cfg.seed, device=device, dihedral=cfg.augment.dihedral
    )
    val = load_npz(bundle, "val")
    val_rgb = decode_all(val, 1, val_images)
    val_masks = unpack_masks(val)[:val_images]
    vi = torch.from_numpy(val_rgb).permute(0, 3, 1, 2).float() / 255.0
    vm = torch.from_numpy(val_masks).unsqueeze(1).float()
    description = {"bundle_train_images": len(images), "mask_pool": pool_size, "arm": arm}
    logger.info("[%s] %d images and %d masks on %s; training", arm, len(images), len(masks), device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    recorder = Recorder()
    result = train(cfg, TrainingData(stream, vi, vm, description), callbacks=[recorder])
    half = result.model.to("cpu").half()
    extra = {"arm": arm, "steps": result.info["final_step"], **description}
    extra["minutes"] = result.info["elapsed_minutes"]
    save_model(out_file, half, extra=extra)
    speeds = [r["images_per_s"] for r in recorder.logs[len(recorder.logs) // 10 :]]
    return {
        "arm": arm,
        "model_file": out_file.name,
        "info": dict(result.info),
        "history": result.history.to_dict(orient="records"),
        "logs": recorder.logs,
        "images_per_s_median": float(np.median(speeds)) if speeds else math.nan,
        "step_ms_median": 1000.0 * cfg.batch_size / float(np.median(speeds))
        if speeds
        else math.nan,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30
        if device.type == "cuda"
        else None,
        "parameters": sum(p.numel() for p in result.model.parameters()),
    }


# ------------------------------------------------------------------ scoring
def _model_fill(path: Path, rgb: np.ndarray, masks: np.ndarray, device: torch.device) -> np.ndarray:
    """The model's composite, uint8 (N, H, W, 3), float32 on ``device`` (no autocast)."""
    model = load_model(path).to(device).eval()
    out = np.empty_like(rgb)
    with torch.inference_mode():
        for start in range(0, len(rgb), 16):
            x = torch.from_numpy(rgb[start : start + 16]).to(device).permute(0, 3, 1, 2) / 255.0
            m = torch.from_numpy(masks[start : start + 16]).to(device)[:, None].float()
            y = (model(x * m, m).clamp(0, 1) * 255).round().to(torch.uint8)
            out[start : start + 16] = y.permute(0, 2, 3, 1).cpu().numpy()
    return np.where(masks[..., None] > 0, rgb, out)


def _paired(values: np.ndarray, reference: np.ndarray, lower_is_better: bool) -> dict[str, float]:
    diff = values - reference
    better = diff < 0 if lower_is_better else diff > 0
    se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else math.nan
    return {"mean": float(diff.mean()), "se": se, "share_better": float(better.mean())}


def score(
    bundle: Path, models: Mapping[str, Path], device: torch.device, limit: int | None = None
) -> dict[str, Any]:
    """Telea, pull-push and every model on the bundle's validation images: per-method means,
    paired margins over Telea (mean, standard error, share of images better), by bucket."""
    val = load_npz(bundle, "val")
    rgb = decode_all(val, 1, limit)
    masks = unpack_masks(val)[: len(rgb)]
    params = {"telea_radius": 3, "ns_radius": 3}
    fills = {
        name: baselines.inpaint_batch(baselines.get_baseline(name, params), rgb, masks)
        for name in ("telea", "pull_push")
    }
    fills.update({name: _model_fill(path, rgb, masks, device) for name, path in models.items()})
    weights = bundle / "weights" / "alexnet_features_fp16.safetensors"
    from safetensors.torch import load_file

    scorer = LPIPSScorer("alex", backbone_state=load_file(str(weights)))
    gt_features = scorer.features(rgb)
    target = torch.from_numpy(rgb).permute(0, 3, 1, 2)
    mask_t = torch.from_numpy(masks)[:, None]
    scores: dict[str, dict[str, np.ndarray]] = {}
    for name, fill in fills.items():
        metrics = inpainting_metrics(torch.from_numpy(fill).permute(0, 3, 1, 2), target, mask_t)
        metrics["lpips"] = scorer.distance(scorer.features(fill), gt_features)
        scores[name] = metrics
    ratios = val["hole_ratio"][: len(rgb)]
    buckets = np.array([bucket_of(float(r)) or "other" for r in ratios])
    report: dict[str, Any] = {"n_images": len(rgb), "methods": {}, "over_telea": {}, "buckets": {}}
    for name, metrics in scores.items():
        report["methods"][name] = {m: float(np.mean(metrics[m])) for m in ("psnr", "ssim", "lpips")}
        if name == "telea":
            continue
        report["over_telea"][name] = {
            m: _paired(metrics[m], scores["telea"][m], m == "lpips")
            for m in ("psnr", "ssim", "lpips")
        }
        report["buckets"][name] = {
            label: {
                m: float(
                    np.mean(metrics[m][buckets == label] - scores["telea"][m][buckets == label])
                )
                for m in ("psnr", "ssim", "lpips")
            }
            | {"n": int((buckets == label).sum())}
            for label in sorted(set(buckets))
        }
    return report
