"""The loss of Liu et al. 2018 (section 3.4), every term returned for logging.

With ``M`` (N, 1, H, W) = 1 on valid pixels, ``I_comp = M ⊙ I_gt + (1 - M) ⊙ I_out`` and
``ψ_p`` the VGG-16 pool1..pool3 features (p = 1..3):

* ``valid = mean |M ⊙ (I_out - I_gt)|`` and ``hole = mean |(1 - M) ⊙ (I_out - I_gt)|``, means
  over all N·C·H·W elements (the paper's 1/N_{I_gt} size-averaging, also over the batch);
* ``perceptual = Σ_p mean|ψ_p(I_out) - ψ_p(I_gt)| + Σ_p mean|ψ_p(I_comp) - ψ_p(I_gt)|``;
* ``style_out = Σ_p mean|K_p (ψ_p(I_out)ᵀψ_p(I_out) - ψ_p(I_gt)ᵀψ_p(I_gt))|`` with
  ``K_p = 1 / (C_p H_p W_p)``, the mean over the batch and the ``C_p x C_p`` Gram entries;
  ``style_comp`` likewise with ``I_comp``;
* ``ssim = 1 - SSIM(I_comp, I_gt)`` (an extension beyond the paper, weight 0 = the paper's loss):
  the structural term of Zhao et al., "Loss Functions for Image Restoration with Neural
  Networks", IEEE TCI 2017, computed by the ``pytorch_msssim`` library (Gaussian window
  ``SSIM_WINDOW`` px, sigma 1.5, data range 1, mean over the batch);
* ``tv``: on ``I_comp`` over ``P``, the 1-pixel dilation (3x3 square) of the hole region:
  ``Σ_{(i,j),(i,j+1) ∈ P} |I[i,j+1] - I[i,j]| + Σ_{(i,j),(i+1,j) ∈ P} |I[i+1,j] - I[i,j]|``,
  summed over batch and channels and divided by N·C·H·W like the L1 terms.

``total = w_valid·valid + w_hole·hole + w_perceptual·perceptual + w_style·(style_out +
style_comp) + w_tv·tv + w_ssim·ssim`` (paper: 1, 6, 0.05, 120, 0.1, and no SSIM term).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim as _library_ssim
from torch import nn

from aerial_inpainting.pconv.vgg import VGG16FeatureExtractor

LOSS_KEYS = ("total", "valid", "hole", "perceptual", "style_out", "style_comp", "tv", "ssim")

# Side of the SSIM loss's Gaussian window (pytorch_msssim's default is 11; 7 matches the
# 7x7 window of the evaluation's scikit-image SSIM and fits 16 px crops).
SSIM_WINDOW = 7


@dataclass
class LossWeights:
    """Weights of the loss terms; defaults are the paper's."""

    valid: float = 1.0
    hole: float = 6.0
    perceptual: float = 0.05
    style: float = 120.0
    tv: float = 0.1
    ssim: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LossWeights:
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"LossWeights: unknown keys {unknown}; allowed: {sorted(known)}")
        return cls(**{key: float(value) for key, value in data.items()})


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """``ψᵀψ / (C H W)`` per sample, (N, C, C), in float32 (float64 kept) even under autocast."""
    n, c, h, w = features.shape
    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=features.device.type, enabled=False):
        flat = features.to(dtype).reshape(n, c, h * w)
        return torch.bmm(flat, flat.transpose(1, 2)) / float(c * h * w)


def hole_dilation(mask: torch.Tensor) -> torch.Tensor:
    """P: hole pixels of ``mask`` (1 = valid) grown by one pixel (3x3 square), as 0/1 floats."""
    hole = 1.0 - mask[:, :1]
    return F.max_pool2d(hole, kernel_size=3, stride=1, padding=1)


def total_variation(image: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Neighbouring-pixel L1 differences with both pixels in ``region``, / N·C·H·W."""
    horizontal = region[..., :, 1:] * region[..., :, :-1]
    vertical = region[..., 1:, :] * region[..., :-1, :]
    dx = (image[..., :, 1:] - image[..., :, :-1]).abs() * horizontal
    dy = (image[..., 1:, :] - image[..., :-1, :]).abs() * vertical
    return (dx.sum() + dy.sum()) / image.numel()


class InpaintingLoss(nn.Module):
    """``forward(output, target, mask) -> {total, valid, hole, perceptual, style_out, style_comp, tv, ssim}``.

    ``feature_extractor=None`` drops the perceptual and style terms (they are reported as 0).
    """

    def __init__(
        self,
        feature_extractor: VGG16FeatureExtractor | nn.Module | None = None,
        weights: LossWeights | None = None,
    ) -> None:
        super().__init__()
        self.feature_extractor = feature_extractor
        self.weights = weights if weights is not None else LossWeights()

    def forward(
        self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        if output.shape != target.shape or output.dim() != 4:
            raise ValueError(
                f"InpaintingLoss: output {tuple(output.shape)} and target {tuple(target.shape)} "
                "must have the same (N, C, H, W) shape"
            )
        if (
            mask.dim() != 4
            or mask.shape[0] != output.shape[0]
            or mask.shape[-2:] != output.shape[-2:]
        ):
            raise ValueError(f"InpaintingLoss: mask {tuple(mask.shape)} must be (N, 1, H, W)")
        dtype = torch.float64 if output.dtype == torch.float64 else torch.float32
        out = output.to(dtype)
        gt = target.to(dtype)
        m = mask.to(dtype)
        diff = out - gt
        valid = (m * diff).abs().mean()
        hole = ((1.0 - m) * diff).abs().mean()
        comp = m * gt + (1.0 - m) * out
        tv = total_variation(comp, hole_dilation(m))
        zero = out.new_zeros(())
        ssim_term = zero
        if self.weights.ssim:
            with torch.autocast(device_type=out.device.type, enabled=False):
                ssim_term = 1.0 - _library_ssim(
                    comp, gt, data_range=1.0, size_average=True, win_size=SSIM_WINDOW
                )

        perceptual, style_out, style_comp = zero, zero, zero
        if self.feature_extractor is not None:
            with torch.no_grad():
                feats_gt = self.feature_extractor(target)
            feats_both = self.feature_extractor(torch.cat([output, comp.to(output.dtype)], dim=0))
            n = output.shape[0]
            for f_both, f_gt in zip(feats_both, feats_gt, strict=True):
                f_gt32 = f_gt.to(dtype)
                f_out, f_comp = f_both[:n].to(dtype), f_both[n:].to(dtype)
                perceptual = perceptual + (f_out - f_gt32).abs().mean()
                perceptual = perceptual + (f_comp - f_gt32).abs().mean()
                gram_gt = gram_matrix(f_gt32)
                style_out = style_out + (gram_matrix(f_out) - gram_gt).abs().mean()
                style_comp = style_comp + (gram_matrix(f_comp) - gram_gt).abs().mean()

        w = self.weights
        total = (
            w.valid * valid
            + w.hole * hole
            + w.perceptual * perceptual
            + w.style * (style_out + style_comp)
            + w.tv * tv
            + w.ssim * ssim_term
        )
        return {
            "total": total,
            "valid": valid,
            "hole": hole,
            "perceptual": perceptual,
            "style_out": style_out,
            "style_comp": style_comp,
            "tv": tv,
            "ssim": ssim_term,
        }
