"""``evaluate``: PSNR/SSIM of the trained model and classical baselines on the test split."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
