"""Fixtures for the inpaint tests: a tiny random U-Net, its model file, image/mask files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aerial_inpainting.pconv.checkpoint import save_model
from aerial_inpainting.pconv.unet import PConvUNet, UNetConfig

TINY = UNetConfig(depth=3, base_channels=4, max_channels=8)


@pytest.fixture
def tiny_model() -> PConvUNet:
    """A random 3-level U-Net: accepts multiples of 8, runs in milliseconds."""
    torch.manual_seed(0)
    return PConvUNet(TINY).eval()


@pytest.fixture
def model_file(tmp_path: Path, tiny_model: PConvUNet) -> Path:
    return save_model(tmp_path / "models" / "pconv_unet.safetensors", tiny_model, {"note": "test"})
