"""Fixtures of the training tests (tests/support/training.py)."""

from support.training import _one_torch_thread, make_params, tiny_inputs

__all__ = ["_one_torch_thread", "make_params", "tiny_inputs"]
