"""Validation during training: the model on a fixed batch of images with their fixed masks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from aerial_inpainting.evaluation.metrics import batch_psnr, batch_ssim, composite


@dataclass
class ValidationSamples:
    """One validation pass, on the CPU: float32 (N, 3, H, W) images, outputs and composites
    in [0, 1], masks (N, 1, H, W), 1 = valid. What reporting draws its image grid from."""

    images: torch.Tensor
    masks: torch.Tensor
    output: torch.Tensor
    composite: torch.Tensor


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    autocast_dtype: torch.dtype | None,
    device: torch.device,
) -> tuple[dict[str, float], ValidationSamples]:
    """PSNR/SSIM of the composite, hole-only PSNR, and the mean-colour-fill baseline's hole PSNR.

    Runs ``model`` in eval mode and leaves every module's mode as it found it (a frozen
    encoder BatchNorm stays frozen). Images one at a time: full-size images, small memory.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    outputs = []
    try:
        for i in range(images.shape[0]):
            img, msk = images[i : i + 1], masks[i : i + 1]
            with torch.autocast(
                device.type,
                dtype=autocast_dtype or torch.float32,
                enabled=autocast_dtype is not None,
            ):
                outputs.append(model(img * msk, msk).float().clamp(0, 1))
    finally:
        for module, training in modes:
            module.training = training
    output = torch.cat(outputs).cpu()
    images, masks = images.cpu(), masks.cpu()
    comp = composite(output, images, masks)
    hole = 1 - masks
    metrics = {
        "val_psnr": float(np.nanmean(batch_psnr(comp, images))),
        "val_ssim": float(np.nanmean(batch_ssim(comp, images))),
        "val_psnr_hole": float(np.nanmean(batch_psnr(output, images, hole))),
        "val_psnr_hole_mean_fill": float(
            np.nanmean(batch_psnr(mean_fill(images, masks), images, hole))
        ),
    }
    return metrics, ValidationSamples(images, masks, output, comp)


def mean_fill(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The baseline: every hole pixel gets the per-channel mean colour of the image's valid pixels."""
    valid = masks.expand_as(images)
    mean = (images * valid).flatten(2).sum(2) / valid.flatten(2).sum(2).clamp_min(1)
    return masks * images + (1 - masks) * mean[:, :, None, None]
