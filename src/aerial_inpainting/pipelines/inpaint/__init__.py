"""Inpaint pipeline: fills the user's own images with the trained model."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
