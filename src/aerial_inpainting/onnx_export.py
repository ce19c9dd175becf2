"""ONNX export of a PConvUNet (optional extra ``onnx``): ``aerial-inpainting export --onnx``.

:func:`export_onnx` writes the network as an ONNX graph (opset 18, through
``torch.onnx.export(..., dynamo=True)``) with a dynamic batch size and dynamic height and
width, both multiples of the network's ``2**depth``:

* a network without pre-fill: inputs ``image`` float32 (N, 3, H, W) in [0, 1] and ``mask``
  float32 (N, 1, H, W), 1 = valid, 0 = hole; outputs ``output`` (N, 3, H, W) (not clamped)
  and ``reached`` (N, 1, H, W), 1 where the output is a prediction (see
  :meth:`~aerial_inpainting.pconv.unet.PConvUNet.forward_with_mask`);
* a network with ``prefill="pushpull"``: the pull-push pre-fill repeats its pull step until
  a side is one pixel, a loop whose count depends on the input size, which a graph with
  dynamic height and width cannot hold as traced. So the graph starts after it: inputs
  ``prefilled`` (N, 3, H, W) (:func:`~aerial_inpainting.pconv.pushpull.pull_push_fill` of
  the image, parameter-free, also in :mod:`aerial_inpainting.onnx_backend`) and ``mask``;
  outputs as above (:meth:`~aerial_inpainting.pconv.unet.PConvUNet.forward_on_prefill`).

The file's metadata (``metadata_props``) holds the network's config as JSON
(``aerial_inpainting.config``), its ``2**depth`` (``aerial_inpainting.multiple``) and the
graph's input convention (``aerial_inpainting.inputs``: ``image`` or ``prefilled``), so
:class:`~aerial_inpainting.onnx_backend.OnnxUNet` rebuilds everything from the file alone.
After writing, the export is checked: onnxruntime's output on a random input must match
PyTorch's within :data:`TOLERANCE`, else :class:`OnnxExportError`. The file is written under
a temporary name and moved into place when complete.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

ONNX_EXTRA = 'ONNX export and inference need the optional extra "onnx": pip install -e ".[onnx]"'
OPSET = 18
TOLERANCE = 1e-4  # largest |onnxruntime - PyTorch| accepted on the check after export
META_CONFIG = "aerial_inpainting.config"
META_MULTIPLE = "aerial_inpainting.multiple"
META_INPUTS = "aerial_inpainting.inputs"


class OnnxExportError(RuntimeError):
    """The model cannot be exported, or the export does not reproduce it (message says why)."""


class OnnxDependencyError(RuntimeError):
    """onnx/onnxruntime are not installed; the message names the extra that installs them."""


def require_onnx(what: str = "") -> tuple[Any, Any]:
    """(onnx, onnxruntime), or :class:`OnnxDependencyError` naming the ``onnx`` extra."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        prefix = f"{what}: " if what else ""
        raise OnnxDependencyError(f"{prefix}{ONNX_EXTRA}") from exc
    return onnx, onnxruntime


class _Graph(torch.nn.Module):
    """What is exported: ``forward_with_mask`` or, with a pre-fill, ``forward_on_prefill``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.prefilled = model.config.prefill != "none"

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.prefilled:
            return self.model.forward_on_prefill(image, mask)
        return self.model.forward_with_mask(image, mask)


def _config_dict(model: torch.nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise OnnxExportError(
            f"{type(model).__name__} is not a PConvUNet (no config): only the project's "
            "partial-convolution U-Net can be exported"
        )
    data = dict(config.to_dict())
    data.setdefault("prefill", getattr(config, "prefill", "none"))
    return data


def export_onnx(model: torch.nn.Module, path: str | Path, *, check: bool = True) -> Path:
    """Write ``model`` (a PConvUNet, any config) to ``path`` as ONNX (see the module
    docstring); returns the path. ``check``: compare onnxruntime with PyTorch on a random
    input (:data:`TOLERANCE`). Raises :class:`OnnxDependencyError` without the extra,
    :class:`OnnxExportError` when the export fails or does not match. Takes a minute or
    more on a CPU (torch.export traces the network with symbolic sizes).
    """
    onnx, _ = require_onnx(f"export to {path}")
    path = Path(path)
    config = _config_dict(model)
    multiple = 2 ** int(config["depth"])
    model = model.eval().to("cpu", memory_format=torch.contiguous_format)
    graph = _Graph(model).eval()
    names = ["prefilled" if graph.prefilled else "image", "mask"]
    generator = torch.Generator().manual_seed(0)
    example = (
        torch.rand(2, int(config["in_channels"]), 2 * multiple, 3 * multiple, generator=generator),
        (torch.rand(2, 1, 2 * multiple, 3 * multiple, generator=generator) > 0.3).float(),
    )
    batch = torch.export.Dim("batch", min=1, max=4096)
    rows = torch.export.Dim("rows", min=1, max=65536 // multiple)
    cols = torch.export.Dim("cols", min=1, max=65536 // multiple)
    sizes = {0: batch, 2: multiple * rows, 3: multiple * cols}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                graph,
                example,
                input_names=names,
                output_names=["output", "reached"],
                dynamic_shapes={"image": sizes, "mask": sizes},
                opset_version=OPSET,
                dynamo=True,
                verbose=False,
            )
        proto = program.model_proto
        for key, value in (
            (META_CONFIG, json.dumps(config, sort_keys=True)),
            (META_MULTIPLE, str(multiple)),
            (META_INPUTS, names[0]),
        ):
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp))
        if check:
            _check(model, tmp, graph.prefilled, multiple)
        os.replace(tmp, path)
    except OnnxExportError:
        raise
    except Exception as exc:  # torch.export and onnx failures: one line with the reason
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxExportError(f"export to {path} failed: {reason}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _check(model: torch.nn.Module, path: Path, prefilled: bool, multiple: int) -> None:
    """onnxruntime vs PyTorch on a random (1, C, 3m, 2m) input: OnnxExportError if apart."""
    from aerial_inpainting.onnx_backend import OnnxUNet

    generator = torch.Generator().manual_seed(1)
    shape = (1, int(model.config.in_channels), 3 * multiple, 2 * multiple)
    image = torch.rand(shape, generator=generator)
    mask = (torch.rand((1, 1, *shape[2:]), generator=generator) > 0.3).float()
    onnx_model = OnnxUNet(path)
    with torch.inference_mode():
        expected, expected_reach = model.forward_with_mask(image, mask)
        got, got_reach = onnx_model.forward_with_mask(image, mask)
    error = float((expected - got).abs().max())
    if error > TOLERANCE or not torch.equal(expected_reach > 0, got_reach > 0):
        raise OnnxExportError(
            f"export to {path}: onnxruntime differs from PyTorch by {error:.3g} "
            f"(tolerance {TOLERANCE}); the file was not written"
        )


def cli(argv: Sequence[str] | None = None) -> int:
    """``aerial-inpainting export --onnx OUT.onnx [--model PATH-or-URI]``: 0, or 2 with a
    one-line message on bad input."""
    from aerial_inpainting.inpaint_cli import CliError, choose_model, load_trained_model

    parser = argparse.ArgumentParser(
        prog="aerial-inpainting export",
        description="Export a model as ONNX (dynamic batch, height and width; sides must be "
        "multiples of the network's 2**depth).",
    )
    parser.add_argument("--onnx", required=True, metavar="OUT.onnx", help="file to write")
    parser.add_argument(
        "--model",
        metavar="PATH-or-URI",
        help="model file, folder, MLflow URI, or `pretrained` (default: as aerial-inpaint: "
        "the project's latest trained model, else the shipped one)",
    )
    parser.add_argument("--project-dir", default=None, help="Kedro project to take it from")
    args = parser.parse_args(list(argv) if argv is not None else None)
    out = Path(args.onnx)
    if out.suffix.lower() != ".onnx":
        print(f"error: --onnx {out}: the file name must end in .onnx", file=sys.stderr)
        return 2
    try:
        require_onnx("aerial-inpainting export")
        choice = choose_model(args.model, args.project_dir)
        model = load_trained_model(choice.path, pretrained=choice.pretrained)
        print(f"{choice.label}; exporting (this takes a minute or more)...", file=sys.stderr)
        export_onnx(model, out)
    except (CliError, OnnxExportError, OnnxDependencyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = _config_dict(model)
    print(
        f"wrote {out} (depth {config['depth']}: height and width must be multiples of "
        f"{2 ** int(config['depth'])}; inputs: "
        f"{'prefilled' if config.get('prefill', 'none') != 'none' else 'image'}, mask)"
    )
    return 0


def main() -> None:
    sys.exit(cli())


if __name__ == "__main__":
    main()
