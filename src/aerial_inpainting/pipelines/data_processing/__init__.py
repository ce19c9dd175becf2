"""data_processing: raw aerial folders -> image stack, index, stratified split, masks."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
