"""Image-quality metrics for inpainting: PSNR, SSIM and L1, on the whole image or the hole alone.

scikit-image is the reference implementation (``data_range=1.0``; SSIM with ``channel_axis=-1``
and its defaults: 7x7 uniform window, K1=0.01, K2=0.03, sample covariance, mean over the
region whose window lies inside the image, then over channels). The batched PyTorch functions
below compute the same numbers for a whole batch at once, in float64, and are what the
pipeline uses for speed; ``tests/evaluation`` checks them against scikit-image.

PSNR is capped at ``PSNR_CAP_DB`` (100 dB, i.e. MSE floored at 1e-10 for data range 1): the
PSNR of identical images is therefore 100 dB, not infinity, so means and standard deviations
stay finite. Hole-only metrics of an image without holes are NaN (nothing to measure).
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import structural_similarity

PSNR_CAP_DB = 100.0
"""Upper bound on reported PSNR; identical images score exactly this."""

SSIM_WIN_SIZE = 7
SSIM_K1 = 0.01
SSIM_K2 = 0.03

# ------------------------------------------------------------------------------- helpers


def _mse_floor(data_range: float) -> float:
    return data_range**2 / 10 ** (PSNR_CAP_DB / 10)


def psnr_from_mse(mse: np.ndarray | float, data_range: float = 1.0) -> np.ndarray | float:
    """PSNR in dB of a mean squared error, capped at ``PSNR_CAP_DB``; NaN stays NaN."""
    mse_arr = np.asarray(mse, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        floored = np.where(np.isnan(mse_arr), np.nan, np.maximum(mse_arr, _mse_floor(data_range)))
    out = 10.0 * np.log10(data_range**2 / floored)
    return float(out) if out.ndim == 0 else out


def composite(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """I_comp = M * I_gt + (1 - M) * I_out: ground truth where valid, prediction in the hole."""
    return torch.where(mask.bool(), target, output)


def to_unit_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float64 tensor (N, 3, H, W) in [0, 1]."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"Expected images of shape (N, H, W, 3), got {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).double() / 255.0


def mask_to_tensor(masks: np.ndarray) -> torch.Tensor:
    """(N, H, W) 1/True = valid -> float64 tensor (N, 1, H, W) with 1 on valid pixels."""
    if masks.ndim != 3:
        raise ValueError(f"Expected masks of shape (N, H, W), got {masks.shape}")
    return torch.from_numpy(np.ascontiguousarray(masks).astype(np.float64))[:, None]


# ------------------------------------------------------------------- reference (scikit-image)


def psnr(pred: np.ndarray, target: np.ndarray, data_range: float = 1.0) -> float:
    """PSNR (dB) of two float images of one shape, capped at ``PSNR_CAP_DB``."""
    diff = np.asarray(pred, dtype=np.float64) - np.asarray(target, dtype=np.float64)
    return psnr_from_mse(float(np.mean(diff**2)), data_range)


def hole_psnr(
    pred: np.ndarray, target: np.ndarray, mask: np.ndarray, data_range: float = 1.0
) -> float:
    """PSNR over hole pixels only (mask (H, W), 1 = valid); valid pixels are ignored."""
    hole = ~np.asarray(mask, dtype=bool)
    if not hole.any():
        return float("nan")
    diff = np.asarray(pred, dtype=np.float64)[hole] - np.asarray(target, dtype=np.float64)[hole]
    return psnr_from_mse(float(np.mean(diff**2)), data_range)


def hole_l1(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute error over hole pixels and channels (mask (H, W), 1 = valid)."""
    hole = ~np.asarray(mask, dtype=bool)
    if not hole.any():
        return float("nan")
    diff = np.asarray(pred, dtype=np.float64)[hole] - np.asarray(target, dtype=np.float64)[hole]
    return float(np.mean(np.abs(diff)))


def ssim(pred: np.ndarray, target: np.ndarray, data_range: float = 1.0) -> float:
    """SSIM of two (H, W, 3) float images exactly as scikit-image computes it (the reference)."""
    return float(
        structural_similarity(
            np.asarray(pred, dtype=np.float64),
            np.asarray(target, dtype=np.float64),
            channel_axis=-1,
            data_range=data_range,
        )
    )


# ------------------------------------------------------------------------ batched (PyTorch)


def batch_mse(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-image mean squared error; ``weight`` (N, 1, H, W) restricts it to pixels with weight 1."""
    sq = (pred.double() - target.double()) ** 2
    if weight is None:
        return sq.flatten(1).mean(1)
    w = weight.double().expand_as(sq)
    total = w.flatten(1).sum(1)
    return (sq * w).flatten(1).sum(1) / total  # NaN where the weight is empty


def batch_psnr(
    pred: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    data_range: float = 1.0,
) -> np.ndarray:
    """Per-image PSNR (dB, capped) of (N, C, H, W) batches, optionally over ``weight`` == 1 only."""
    return np.atleast_1d(psnr_from_mse(batch_mse(pred, target, weight).cpu().numpy(), data_range))


def batch_l1(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> np.ndarray:
    """Per-image mean absolute error, optionally over pixels where ``weight`` == 1."""
    ad = (pred.double() - target.double()).abs()
    if weight is None:
        return ad.flatten(1).mean(1).cpu().numpy()
    w = weight.double().expand_as(ad)
    return ((ad * w).flatten(1).sum(1) / w.flatten(1).sum(1)).cpu().numpy()


def _window_sums(x: torch.Tensor, win_size: int) -> torch.Tensor:
    """Sum over every win_size x win_size window lying inside the image (no padding)."""
    return x.unfold(-1, win_size, 1).sum(-1).unfold(-2, win_size, 1).sum(-1)


def batch_ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    win_size: int = SSIM_WIN_SIZE,
    k1: float = SSIM_K1,
    k2: float = SSIM_K2,
) -> np.ndarray:
    """Per-image SSIM of (N, C, H, W) batches, matching scikit-image's defaults.

    Float input is taken as is (``data_range`` in its units); uint8 input as value / 255, so
    ``data_range=1.0`` means 255 grey levels. scikit-image filters with a reflected border, then
    crops ``(win_size - 1) // 2`` pixels on every side before averaging; the kept pixels are
    exactly those whose window lies inside the image, so unpadded window sums give the same
    numbers without any border handling. The SSIM formula is rewritten on window *sums* (the
    1/P and 1/(P-1) factors cancel into the constants), which lets uint8 input use window sums
    that are exact integers in float32 (fast), then float64 for the differences of products.
    """
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(
            f"Expected two (N, C, H, W) batches of one shape, got {tuple(pred.shape)}, {tuple(target.shape)}"
        )
    if min(pred.shape[-2:]) < win_size:
        raise ValueError(
            f"Images of {tuple(pred.shape[-2:])} are smaller than the {win_size}x{win_size} SSIM window"
        )
    # uint8: window sums of values <= 255**2 * 49 < 2**24 are exact integers in float32.
    scale = 255.0 * data_range if pred.dtype == torch.uint8 else data_range
    # One image at a time: the five moment maps of a 256 px RGB image stay cache-sized, which
    # is faster on the CPU than one huge batched tensor (measured in benchmarks/bench_evaluate).
    return np.array(
        [
            _ssim_one(pred[i : i + 1], target[i : i + 1], scale, win_size, k1, k2)
            for i in range(len(pred))
        ],
        dtype=np.float64,
    )


def _ssim_one(
    pred: torch.Tensor, target: torch.Tensor, scale: float, win_size: int, k1: float, k2: float
) -> float:
    if pred.dtype == torch.uint8:
        x, y = pred.float(), target.float()
    else:
        x, y = pred.double(), target.double()
    c = x.shape[1]
    sums = _window_sums(torch.cat([x, y, x * x, y * y, x * y], dim=1), win_size).double()
    sx, sy, sxx, syy, sxy = sums.split(c, dim=1)
    p = win_size**2
    c1 = (k1 * scale * p) ** 2
    c2 = (k2 * scale) ** 2 * p * (p - 1)  # sample covariance: the P / (P - 1) factor
    num = (2 * sx * sy + c1) * (2 * (p * sxy - sx * sy) + c2)
    den = (sx * sx + sy * sy + c1) * ((p * sxx - sx * sx) + (p * syy - sy * sy) + c2)
    return float((num / den).reshape(c, -1).mean(1).mean())


def inpainting_metrics(
    output: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    raw_ssim: bool = False,
    data_range: float = 1.0,
) -> dict[str, np.ndarray]:
    """Every per-image metric of one method on one batch.

    ``output``/``target`` (N, 3, H, W), both float in [0, 1] or both uint8 (value / 255);
    ``mask`` (N, 1, H, W) with 1 on valid pixels. Returns psnr and ssim of the composite,
    hole_psnr and hole_l1 on the hole alone (where composite and output agree), and, when
    ``raw_ssim``, the SSIM of the raw output.
    """
    if output.dtype != target.dtype:
        raise ValueError(f"output ({output.dtype}) and target ({target.dtype}) must share a dtype")
    valid = mask.bool()
    comp = torch.where(valid, target, output)
    # The composite equals the target on valid pixels, so its error lives in the hole only:
    # one pass gives the whole-image and the hole-only sums (exact integers for uint8).
    if comp.dtype == torch.uint8:
        diff = comp.to(torch.int16) - target.to(torch.int16)
        sq = (diff.to(torch.int32) ** 2).flatten(1).sum(1).double() / 255.0**2
        ab = diff.abs().flatten(1).sum(1).double() / 255.0
    else:
        diff = comp.double() - target.double()
        sq = (diff**2).flatten(1).sum(1)
        ab = diff.abs().flatten(1).sum(1)
    channels = comp.shape[1]
    n_all = torch.full_like(sq, float(comp[0].numel())) if len(comp) else sq
    n_hole = (~valid).flatten(1).sum(1).double() * channels
    with np.errstate(invalid="ignore", divide="ignore"):
        hole_mse = (sq / n_hole).cpu().numpy()  # NaN without holes (0 / 0)
        hole_l1 = (ab / n_hole).cpu().numpy()
    result = {
        "psnr": np.atleast_1d(psnr_from_mse((sq / n_all).cpu().numpy(), data_range)),
        "ssim": batch_ssim(comp, target, data_range=data_range),
        "hole_psnr": np.atleast_1d(psnr_from_mse(hole_mse, data_range)),
        "hole_l1": hole_l1,
    }
    if raw_ssim:
        result["ssim_raw"] = batch_ssim(output, target, data_range=data_range)
    return result
