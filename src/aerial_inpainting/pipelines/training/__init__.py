"""Training pipeline: fits the partial-conv U-Net on the train split and the mask pool."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
