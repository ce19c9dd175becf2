"""Evaluation of inpainting results: image-quality metrics, classical baselines, reports.

Plain numpy/PyTorch modules, usable without Kedro; the ``evaluate`` pipeline wires them up.
"""
