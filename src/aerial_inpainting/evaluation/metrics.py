"""Image-quality metrics for inpainting: PSNR, SSIM and L1, on the whole image or the hole alone.

scikit-image is the reference implementation (``data_range=1.0``; SSIM with ``channel_axis=-1``
and its defaults: 7x7 uniform window, K1=0.01, K2=0.03, sample covariance, mean over the
region whose window lies inside the image, then over channels). The batched functions below
take PyTorch (N, C, H, W) batches, compute the same numbers for a whole batch (uint8 images
with exact integer sums and OpenCV box filters, one image at a time; float images in float64),
and are what the pipeline uses for speed; ``tests/evaluation`` checks them against scikit-image.

PSNR is capped at ``PSNR_CAP_DB`` (100 dB, i.e. MSE floored at 1e-10 for data range 1): the
PSNR of identical images is therefore 100 dB, not infinity, so means and standard deviations
stay finite. Hole-only metrics of an image without holes are NaN (nothing to measure).
"""

from __future__ import annotations

import cv2
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


def _window_sums(
    x: np.ndarray, win_size: int, ddepth: int, dst: np.ndarray | None = None
) -> np.ndarray:
    """Sums over every win_size x win_size window lying inside an (H, W, C) image.

    One ``cv2.boxFilter`` (unnormalised, window anchored at its top-left pixel; written into
    ``dst`` when given), cropped to the windows that lie inside the image:
    (H - win_size + 1, (W - win_size + 1) * C), channels interleaved along the last axis (a 2-D
    view with long contiguous rows, which numpy runs through much faster than a 3-D view whose
    innermost axis holds only C values).
    """
    h, w, c = x.shape
    sums = cv2.boxFilter(
        x,
        ddepth,
        (win_size, win_size),
        dst=dst,
        anchor=(0, 0),
        normalize=False,
        borderType=cv2.BORDER_CONSTANT,
    )
    return sums.reshape(h, w * c)[: h - win_size + 1, : (w - win_size + 1) * c]


def _fits_int32(win_size: int) -> bool:
    """uint8 SSIM terms (up to 2 * (255 * P)**2, P = win_size**2) are exact in int32."""
    return 2 * (255 * win_size**2) ** 2 < 2**31


_BAND_VALUES = 64 * 256 * 3
"""Values per row band of the uint8 SSIM (64 rows of a 256 px RGB image): small enough for the
work arrays of a band to stay in the CPU caches (measured 20-30% faster than whole images)."""


class _Uint8Buffers:
    """Work arrays for the uint8 SSIM of (H, W, C) images, reused band after band, image after image.

    Fresh arrays of image size (about 1 MB each) come from the system allocator as new pages
    every time, and touching those cost as much as the arithmetic (measured: 3-4x slower).
    """

    def __init__(self, shape: tuple[int, ...], win_size: int) -> None:
        h, w, c = shape
        self.shape = tuple(shape)
        self.rows = min(h - win_size + 1, max(16, _BAND_VALUES // (w * c)))  # output rows
        band = (self.rows + win_size - 1, w, c)
        kept = (self.rows, (w - win_size + 1) * c)
        self.box = [np.empty(band, np.int32) for _ in range(4)]  # window sums (whole band)
        self.maps = [np.empty(band, np.int32) for _ in range(2)] + [np.empty(band, np.uint16)]
        self.ints = [np.empty(kept, np.int32) for _ in range(5)]
        self.floats = [np.empty(kept, np.float64) for _ in range(3)]
        self.images = [np.empty((h, w, c), np.uint8) for _ in range(3)]

    def contiguous(self, image: np.ndarray, slot: int) -> np.ndarray:
        """``image`` itself when C-contiguous, else a copy in a reused array."""
        if image.flags.c_contiguous:
            return image
        np.copyto(self.images[slot], image)
        return self.images[slot]


def _ssim_uint8(
    x: np.ndarray, y: np.ndarray, c1: float, c2: float, win_size: int, buf: _Uint8Buffers
) -> float:
    """SSIM of two uint8 (H, W, C) images: exact int32 window sums and terms, float64 ratio.

    Computed in bands of ``buf.rows`` output rows (each band reads ``win_size - 1`` more input
    rows); returns the mean over all windows lying inside the image.
    """
    x, y = buf.contiguous(x, 0), buf.contiguous(y, 1)
    h, w, c = x.shape
    out_rows = h - win_size + 1
    total = 0.0
    for r in range(0, out_rows, buf.rows):
        m = min(buf.rows, out_rows - r)
        band = slice(r, r + m + win_size - 1)
        total += _ssim_band_sum(x[band], y[band], c1, c2, win_size, buf, m)
    return 4.0 * total / (out_rows * (w - win_size + 1) * c)


def _ssim_band_sum(
    x: np.ndarray,
    y: np.ndarray,
    c1: float,
    c2: float,
    win_size: int,
    buf: _Uint8Buffers,
    m: int,
) -> float:
    """Sum over the m rows of windows of one band of 4 x the SSIM map (see ``_ssim_uint8``)."""
    p = win_size**2
    n_in = m + win_size - 1
    box_x, box_y, box_q, box_xy = (z[:n_in] for z in buf.box)
    q, q2, xy = (z[:n_in] for z in buf.maps)
    a, b, cov, var, t = (z[:m] for z in buf.ints)
    num, den, tf = (z[:m] for z in buf.floats)
    # Every window sum and every product of two below is an integer < 2**31: exact int32.
    sx = _window_sums(x, win_size, cv2.CV_32S, box_x)
    sy = _window_sums(y, win_size, cv2.CV_32S, box_y)
    np.multiply(x, x, out=q, dtype=np.int32)
    q += np.multiply(y, y, out=q2, dtype=np.int32)
    sq = _window_sums(q, win_size, cv2.CV_32S, box_q)  # sum(x^2) + sum(y^2)
    np.multiply(x, y, out=xy, dtype=np.uint16)  # <= 255**2
    sxy = _window_sums(xy, win_size, cv2.CV_32S, box_xy)
    np.multiply(sx, sy, out=a)
    np.multiply(sx, sx, out=b)
    b += np.multiply(sy, sy, out=t)
    np.multiply(sxy, p, out=cov)  # P sum(xy) - sum(x) sum(y) = P (P - 1) cov(x, y)
    cov -= a
    np.multiply(sq, p, out=var)  # P (P - 1) (var(x) + var(y))
    var -= b
    # (2a + c1)(2 cov + c2) / ((b + c1)(var + c2)) in float64: 4 x the SSIM of each window.
    np.add(a, c1 / 2, out=num)
    num *= np.add(cov, c2 / 2, out=tf)
    np.add(b, c1, out=den)
    den *= np.add(var, c2, out=tf)
    num /= den
    return float(num.sum())


def _ssim_hwc(
    x: np.ndarray,
    y: np.ndarray,
    scale: float,
    win_size: int,
    k1: float,
    k2: float,
    buf: _Uint8Buffers | None = None,
) -> float:
    """SSIM of two (H, W, C) images: two uint8 on the exact integer path, else in float64."""
    p = win_size**2
    c1 = (k1 * scale * p) ** 2
    c2 = (k2 * scale) ** 2 * p * (p - 1)  # sample covariance: the P / (P - 1) factor
    if x.dtype == np.uint8 and y.dtype == np.uint8 and _fits_int32(win_size):
        if buf is None or buf.shape != x.shape:
            buf = _Uint8Buffers(x.shape, win_size)
        return _ssim_uint8(x, y, c1, c2, win_size, buf)
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    sx = _window_sums(x, win_size, cv2.CV_64F)
    sy = _window_sums(y, win_size, cv2.CV_64F)
    sq = _window_sums(x * x + y * y, win_size, cv2.CV_64F)
    sxy = _window_sums(x * y, win_size, cv2.CV_64F)
    num = (2 * sx * sy + c1) * (2 * (p * sxy - sx * sy) + c2)
    den = (sx * sx + sy * sy + c1) * ((p * sq - sx * sx - sy * sy) + c2)
    return float((num / den).mean())


def _hwc(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) tensor -> (N, H, W, C) array; a view (no copy) of channels-last CPU memory."""
    return images.detach().cpu().numpy().transpose(0, 2, 3, 1)


def _check_ssim_shapes(shape: tuple[int, ...], other: tuple[int, ...], win_size: int) -> None:
    if shape != other or len(shape) != 4:
        raise ValueError(f"Expected two (N, C, H, W) batches of one shape, got {shape}, {other}")
    if min(shape[-2:]) < win_size:
        raise ValueError(
            f"Images of {shape[-2:]} are smaller than the {win_size}x{win_size} SSIM window"
        )


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
    exactly those whose window lies inside the image, so window sums of those windows alone
    (OpenCV box filters, one image at a time, channels last) give the same numbers without
    any border handling. The SSIM formula is rewritten on window *sums* (the 1/P and 1/(P-1)
    factors cancel into the constants). For uint8 input (windows up to 11x11) the window sums
    of x, y, x^2 + y^2 and xy, and the differences of their products in the formula, are exact
    int32 integers; only the final ratio is taken in float64. Other input runs in float64.
    """
    _check_ssim_shapes(tuple(pred.shape), tuple(target.shape), win_size)
    uint8 = pred.dtype == torch.uint8 and target.dtype == torch.uint8
    scale = 255.0 * data_range if pred.dtype == torch.uint8 else data_range
    if not uint8:
        pred, target = pred.double(), target.double()
    x, y = _hwc(pred), _hwc(target)
    fast = uint8 and len(x) and _fits_int32(win_size)
    buf = _Uint8Buffers(x.shape[1:], win_size) if fast else None
    return np.array(
        [_ssim_hwc(x[i], y[i], scale, win_size, k1, k2, buf) for i in range(len(x))],
        dtype=np.float64,
    )


def _uint8_scores(
    output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, raw_ssim: bool, scale: float
) -> tuple[np.ndarray, ...]:
    """Per image: sum of squared and of absolute errors of the composite (in grey levels),
    hole pixel count, SSIM of the composite and (when asked, else empty) of the raw output."""
    out_all, tgt_all = _hwc(output), _hwc(target)
    n, h, w, _ = out_all.shape
    holes = np.logical_not(mask.detach().cpu().bool().expand(n, 1, h, w).numpy()[:, 0])
    holes = holes.view(np.uint8)  # 1 in the hole, as OpenCV masks
    sq, ab, n_hole, ssim = (np.empty(n, dtype=np.float64) for _ in range(4))
    ssim_raw = np.empty(n if raw_ssim else 0, dtype=np.float64)
    if n == 0:
        return sq, ab, n_hole, ssim, ssim_raw
    buf = _Uint8Buffers(out_all.shape[1:], SSIM_WIN_SIZE)
    ssim_args = (scale, SSIM_WIN_SIZE, SSIM_K1, SSIM_K2, buf)
    comp = buf.images[2]
    for i in range(n):
        out, tgt = buf.contiguous(out_all[i], 0), buf.contiguous(tgt_all[i], 1)
        hole = holes[i]
        np.copyto(comp, tgt)
        cv2.copyTo(out, hole, comp)  # in place: the output where the mask is 0
        # Sums of integers: exact in float64 (OpenCV accumulates uint8 differences in integers).
        sq[i] = cv2.norm(comp, tgt, cv2.NORM_L2SQR)
        ab[i] = cv2.norm(comp, tgt, cv2.NORM_L1)
        n_hole[i] = cv2.countNonZero(hole)
        ssim[i] = _ssim_hwc(comp, tgt, *ssim_args)
        if raw_ssim:
            ssim_raw[i] = _ssim_hwc(out, tgt, *ssim_args)
    return sq / 255.0**2, ab / 255.0, n_hole, ssim, ssim_raw


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
    ``raw_ssim``, the SSIM of the raw output. uint8 batches are scored image by image in
    numpy/OpenCV (exact integer error sums; channels-last memory, as from
    ``torch.from_numpy(nhwc).permute(0, 3, 1, 2)``, is read without a copy).
    """
    if output.dtype != target.dtype:
        raise ValueError(f"output ({output.dtype}) and target ({target.dtype}) must share a dtype")
    _check_ssim_shapes(tuple(output.shape), tuple(target.shape), SSIM_WIN_SIZE)
    channels = output.shape[1]
    n_all = float(output[0].numel()) if len(output) else 1.0
    # The composite equals the target on valid pixels, so its error lives in the hole only:
    # one pass gives the whole-image and the hole-only sums.
    if output.dtype == torch.uint8:
        sq, ab, n_hole, ssim, ssim_raw = _uint8_scores(
            output, target, mask, raw_ssim, 255.0 * data_range
        )
        n_hole = n_hole * channels
    else:
        valid = mask.bool()
        comp = torch.where(valid, target, output)
        diff = comp.double() - target.double()
        sq = (diff**2).flatten(1).sum(1).cpu().numpy()
        ab = diff.abs().flatten(1).sum(1).cpu().numpy()
        n_hole = (~valid).flatten(1).sum(1).double().cpu().numpy() * channels
        ssim = batch_ssim(comp, target, data_range=data_range)
        ssim_raw = batch_ssim(output, target, data_range=data_range) if raw_ssim else None
    with np.errstate(invalid="ignore", divide="ignore"):
        hole_mse = sq / n_hole  # NaN without holes (0 / 0)
        hole_l1 = ab / n_hole
    result = {
        "psnr": np.atleast_1d(psnr_from_mse(sq / n_all, data_range)),
        "ssim": ssim,
        "hole_psnr": np.atleast_1d(psnr_from_mse(hole_mse, data_range)),
        "hole_l1": hole_l1,
    }
    if raw_ssim:
        result["ssim_raw"] = ssim_raw
    return result
