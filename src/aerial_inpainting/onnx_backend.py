"""Inference through onnxruntime (``--backend onnx``; optional extra ``onnx``).

:class:`OnnxUNet` runs an ONNX file written by :func:`aerial_inpainting.onnx_export.
export_onnx` with the interface of a PConvUNet (``config``, ``forward``,
``forward_with_mask``, ``forward_on_prefill``), so every entry point (:func:`~aerial_inpainting.
inference.fill_holes`, the raster windows, the hole-aware crops) takes it in place of the
PyTorch network. It runs on the CPU (onnxruntime's CPUExecutionProvider) with PyTorch's
thread count. For a network with a pull-push pre-fill the pre-fill is computed by
:func:`~aerial_inpainting.pconv.pushpull.pull_push_fill` (parameter-free) and the graph
does the rest (see :mod:`aerial_inpainting.onnx_export` for why).

:func:`with_backend` turns a loaded PyTorch model into the backend asked for; for ``onnx``
the export is cached under ``$XDG_CACHE_HOME/aerial_inpainting/onnx/`` (default
``~/.cache/...``), keyed by a hash of the weights, the config and the torch version, so it is
made once per model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from aerial_inpainting.onnx_export import (
    META_CONFIG,
    META_INPUTS,
    OnnxExportError,
    export_onnx,
    require_onnx,
)

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx")


class OnnxUNet(torch.nn.Module):
    """An exported PConvUNet run by onnxruntime (CPU). ``path``: the ``.onnx`` file.

    Inputs and outputs are torch tensors as for the PyTorch network: image (N, 3, H, W)
    float in [0, 1], mask (N, 1, H, W), 1 = valid; H and W multiples of ``2**depth``.
    Raises :class:`OnnxExportError` for a file without this project's metadata and
    :class:`~aerial_inpainting.onnx_export.OnnxDependencyError` without onnxruntime.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        _, ort = require_onnx(f"ONNX model {path}")
        from aerial_inpainting.pconv.unet import UNetConfig

        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise OnnxExportError(f"ONNX model {path}: cannot be loaded ({exc})") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        if META_CONFIG not in meta:
            raise OnnxExportError(
                f"ONNX model {path}: no {META_CONFIG} metadata; export it with "
                "`aerial-inpainting export --onnx`"
            )
        self.config = UNetConfig.from_dict(json.loads(meta[META_CONFIG]))
        self.inputs = meta.get(META_INPUTS, "image")

    def _run(self, first: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feeds = {
            self.inputs: first.detach().float().cpu().contiguous().numpy(),
            "mask": mask.detach().float().cpu().contiguous().numpy(),
        }
        output, reached = self.session.run(["output", "reached"], feeds)
        return torch.from_numpy(output), torch.from_numpy(reached)

    def forward_with_mask(
        self, image: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(output, reached) as :meth:`PConvUNet.forward_with_mask` (on the CPU)."""
        if self.inputs == "prefilled":
            from aerial_inpainting.pconv.pushpull import pull_push_fill

            return self._run(pull_push_fill(image.cpu().float(), mask.cpu().float()), mask)
        return self._run(image, mask)

    def forward_on_prefill(
        self, filled: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(output, reached) from the pre-fill, as :meth:`PConvUNet.forward_on_prefill`."""
        if self.inputs != "prefilled":
            raise ValueError(f"{self.path}: this network has no pre-fill")
        return self._run(filled, mask)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.forward_with_mask(image, mask)[0]


def cache_dir() -> Path:
    """Where exported models are kept: ``$XDG_CACHE_HOME/aerial_inpainting/onnx``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "aerial_inpainting" / "onnx"


def model_key(model: torch.nn.Module) -> str:
    """Hex digest of the model's config, weights (and buffers) and the torch version."""
    digest = hashlib.sha256()
    digest.update(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    digest.update(torch.__version__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(tensor.detach().cpu().float().numpy()).tobytes())
    return digest.hexdigest()[:32]


def with_backend(
    model: torch.nn.Module, backend: str = "torch", *, cache: str | Path | None = None
) -> torch.nn.Module:
    """``model`` for ``backend``: itself for ``torch``; for ``onnx`` an :class:`OnnxUNet` of
    its export (made once and cached, see :func:`cache_dir`; ``cache`` overrides the folder).
    Raises ValueError for an unknown backend, OnnxExportError/OnnxDependencyError."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch" or isinstance(model, OnnxUNet):
        return model
    require_onnx("--backend onnx")
    folder = Path(cache) if cache is not None else cache_dir()
    path = folder / f"pconv_unet-{model_key(model)}.onnx"
    if not path.is_file():
        logger.warning("exporting the model to ONNX once (cached as %s); this takes a minute", path)
        export_onnx(model, path)
    return OnnxUNet(path)
