"""Aerial Inpainting: partial-convolution U-Net inpainting of aerial photographs."""

__version__ = "0.1.0"
