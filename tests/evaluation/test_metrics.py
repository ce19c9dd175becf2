"""Metric functions against hand-computed values and scikit-image (the reference)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from aerial_inpainting.evaluation import metrics


def _nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)


def _sk_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(a, b, channel_axis=-1, data_range=1.0)


def test_psnr_of_constant_offset_is_20_db() -> None:
    target = np.full((16, 16, 3), 0.5)
    # MSE = 0.1**2 = 0.01 -> 10 log10(1 / 0.01) = 20 dB
    assert metrics.psnr(target + 0.1, target) == pytest.approx(20.0, abs=1e-9)
    batch = metrics.batch_psnr(_nchw((target + 0.1)[None]), _nchw(target[None]))
    assert batch == pytest.approx([20.0], abs=1e-9)


def test_psnr_matches_skimage_and_identical_images_hit_the_cap() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.random((2, 24, 20, 3))
    assert metrics.psnr(a, b) == pytest.approx(peak_signal_noise_ratio(b, a, data_range=1.0))
    assert metrics.psnr(a, a) == metrics.PSNR_CAP_DB == 100.0
    assert metrics.batch_psnr(_nchw(a[None]), _nchw(a[None]))[0] == 100.0


def test_ssim_of_identical_images_is_one() -> None:
    rng = np.random.default_rng(2)
    a = rng.random((2, 32, 32, 3))
    np.testing.assert_allclose(metrics.batch_ssim(_nchw(a), _nchw(a)), 1.0, atol=1e-12)
    assert metrics.ssim(a[0], a[0]) == pytest.approx(1.0)


def _structured(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """Smooth gradients, flat patches and stripes: regions where variances are tiny."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = np.empty((n, h, w, 3))
    for i in range(n):
        base = np.stack([xx, yy, 0.5 * (xx + yy)], -1) * rng.uniform(0.2, 1.0)
        base[: h // 3] = rng.uniform(0, 1, 3)  # flat block
        base[:, ::4] += 0.2 * np.sin(xx[:, ::4] * rng.uniform(5, 40))[..., None]
        out[i] = np.clip(base, 0, 1)
    return out


@pytest.mark.parametrize("shape", [(7, 7), (16, 16), (32, 48), (61, 40)])
def test_batched_ssim_matches_skimage_float(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    h, w = shape
    for a in (rng.random((3, h, w, 3)), _structured(rng, 3, h, w)):
        b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)
        b[:, : h // 2, : w // 2] = a[:, : h // 2, : w // 2]  # partly identical
        expected = [_sk_ssim(a[i], b[i]) for i in range(len(a))]
        np.testing.assert_allclose(metrics.batch_ssim(_nchw(b), _nchw(a)), expected, atol=1e-4)
        np.testing.assert_allclose(metrics.batch_ssim(_nchw(b), _nchw(a)), expected, atol=1e-10)


@pytest.mark.parametrize("shape", [(16, 16), (64, 40)])
def test_batched_ssim_matches_skimage_uint8(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(7)
    h, w = shape
    a = np.concatenate(
        [rng.integers(0, 256, (2, h, w, 3)), np.rint(_structured(rng, 2, h, w) * 255)]
    ).astype(np.uint8)
    b = a.copy()
    b[:, h // 4 : h // 2] = rng.integers(0, 256, b[:, h // 4 : h // 2].shape)
    b[-1] = a[-1]  # identical pair
    expected = [_sk_ssim(b[i] / 255.0, a[i] / 255.0) for i in range(len(a))]
    np.testing.assert_allclose(metrics.batch_ssim(_nchw(b), _nchw(a)), expected, atol=1e-4)


def _aerial_like(rng: np.random.Generator, n: int, size: int = 256) -> np.ndarray:
    """uint8 (n, size, size, 3): smooth random colour fields (upsampled noise) plus pixel noise."""
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        coarse = rng.normal(size=(size // 16, size // 16, 3))
        smooth = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
        noisy = 128 + 40 * smooth + rng.normal(0, rng.uniform(2, 12), smooth.shape)
        out[i] = np.clip(np.rint(noisy), 0, 255)
    return out


def test_fast_ssim_matches_skimage_on_realistic_256px_uint8() -> None:
    """Exact integer window sums (OpenCV, in row bands) vs scikit-image on full-size images."""
    rng = np.random.default_rng(11)
    target = _aerial_like(rng, 4)
    output = _aerial_like(rng, 4)
    output[1] = np.clip(target[1].astype(int) + rng.integers(-3, 4, target[1].shape), 0, 255)
    output[2] = target[2]  # identical
    mask = np.ones((4, 256, 256), dtype=bool)
    mask[:, 40:130, 60:200] = False  # a big hole...
    output[:, 40:130, 60:200] = rng.integers(0, 256, 3).astype(np.uint8)  # ...filled flat
    mask[3, 200:, :] = False  # a hole touching the border
    res = metrics.inpainting_metrics(
        _nchw(output), _nchw(target), torch.from_numpy(mask)[:, None], raw_ssim=True
    )
    for i in range(4):
        comp = np.where(mask[i][..., None], target[i], output[i])
        gt = target[i] / 255.0
        assert res["ssim"][i] == pytest.approx(_sk_ssim(comp / 255.0, gt), abs=1e-4)
        assert res["ssim_raw"][i] == pytest.approx(_sk_ssim(output[i] / 255.0, gt), abs=1e-4)
    comps = np.where(mask[..., None], target, output)
    expected = [_sk_ssim(comps[i] / 255.0, target[i] / 255.0) for i in range(4)]
    np.testing.assert_allclose(metrics.batch_ssim(_nchw(comps), _nchw(target)), expected, atol=1e-4)
    # The same batches in channels-first memory (copied image by image) give the same numbers.
    nchw = [torch.from_numpy(a).permute(0, 3, 1, 2).contiguous() for a in (output, target)]
    res2 = metrics.inpainting_metrics(*nchw, torch.from_numpy(mask)[:, None], raw_ssim=True)
    for key, values in res.items():
        np.testing.assert_array_equal(res2[key], values)


def test_uint8_ssim_with_a_window_too_large_for_int32_falls_back_to_float64() -> None:
    rng = np.random.default_rng(12)
    a, b = _aerial_like(rng, 2, size=48)
    expected = structural_similarity(
        b / 255.0, a / 255.0, channel_axis=-1, data_range=1.0, win_size=13
    )
    got = metrics.batch_ssim(_nchw(b[None]), _nchw(a[None]), win_size=13)
    assert got[0] == pytest.approx(expected, abs=1e-10)


def test_window_sums_are_the_sums_of_the_windows_inside_the_image() -> None:
    rng = np.random.default_rng(13)
    x = rng.integers(0, 256, (20, 17, 3)).astype(np.int32)
    windows = np.lib.stride_tricks.sliding_window_view(x, (7, 7), axis=(0, 1))
    expected = windows.sum((-1, -2)).reshape(14, 11 * 3)
    np.testing.assert_array_equal(metrics._window_sums(x, 7, cv2.CV_32S), expected)


def test_ssim_rejects_images_smaller_than_the_window() -> None:
    with pytest.raises(ValueError, match="smaller than the 7x7"):
        metrics.batch_ssim(torch.zeros(1, 3, 6, 10), torch.zeros(1, 3, 6, 10))


def test_hole_metrics_by_hand_and_ignore_valid_pixels() -> None:
    target = np.full((1, 8, 8, 3), 0.5)
    output = target.copy()
    mask = np.ones((1, 8, 8))
    mask[0, 2:4, 2:6] = 0  # 8 hole pixels
    output[0, 2:4, 2:6] += 0.2  # hole error 0.2 -> MSE .04, L1 .2
    expected_psnr = 10 * math.log10(1 / 0.04)
    out_t, tgt_t, m_t = _nchw(output), _nchw(target), torch.from_numpy(mask)[:, None]
    res = metrics.inpainting_metrics(out_t, tgt_t, m_t, raw_ssim=True)
    assert res["hole_psnr"][0] == pytest.approx(expected_psnr)
    assert res["hole_l1"][0] == pytest.approx(0.2)
    # Composite PSNR: the error spread over all 64 pixels.
    assert res["psnr"][0] == pytest.approx(10 * math.log10(1 / (0.04 * 8 / 64)))
    assert metrics.hole_psnr(output[0], target[0], mask[0]) == pytest.approx(expected_psnr)
    assert metrics.hole_l1(output[0], target[0], mask[0]) == pytest.approx(0.2)

    # Wreck the valid pixels of the output: hole metrics and composite metrics must not move.
    wrecked = output.copy()
    wrecked[0][mask[0] == 1] = 0.0
    res2 = metrics.inpainting_metrics(_nchw(wrecked), tgt_t, m_t, raw_ssim=True)
    for key in ("psnr", "ssim", "hole_psnr", "hole_l1"):
        assert res2[key][0] == pytest.approx(res[key][0])
    assert res2["ssim_raw"][0] < res["ssim_raw"][0]  # the raw output does see them
    assert metrics.hole_l1(wrecked[0], target[0], mask[0]) == pytest.approx(0.2)


def test_inpainting_metrics_agree_with_skimage_on_uint8() -> None:
    rng = np.random.default_rng(3)
    target = rng.integers(0, 256, (3, 20, 24, 3)).astype(np.uint8)
    output = rng.integers(0, 256, target.shape).astype(np.uint8)
    mask = rng.random((3, 20, 24)) > 0.3
    res = metrics.inpainting_metrics(
        _nchw(output), _nchw(target), torch.from_numpy(mask)[:, None], raw_ssim=True
    )
    for i in range(3):
        comp = np.where(mask[i][..., None], target[i], output[i]) / 255.0
        gt = target[i] / 255.0
        assert res["psnr"][i] == pytest.approx(peak_signal_noise_ratio(gt, comp, data_range=1.0))
        assert res["ssim"][i] == pytest.approx(_sk_ssim(comp, gt), abs=1e-4)
        assert res["ssim_raw"][i] == pytest.approx(_sk_ssim(output[i] / 255.0, gt), abs=1e-4)
        hole = ~mask[i]
        mse = np.mean((comp[hole] - gt[hole]) ** 2)
        assert res["hole_psnr"][i] == pytest.approx(10 * np.log10(1 / mse))
        assert res["hole_l1"][i] == pytest.approx(np.mean(np.abs(comp[hole] - gt[hole])))


def test_hole_metrics_without_holes_are_nan() -> None:
    a = torch.rand(1, 3, 8, 8)
    res = metrics.inpainting_metrics(a, a, torch.ones(1, 1, 8, 8))
    assert np.isnan(res["hole_psnr"][0]) and np.isnan(res["hole_l1"][0])
    assert math.isnan(metrics.hole_psnr(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)), np.ones((8, 8))))
