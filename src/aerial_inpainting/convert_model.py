"""Convert a model file of the old format (``torch.save`` pickle, ``*.pt``) to safetensors.

    python -m aerial_inpainting.convert_model OLD.pt [NEW.safetensors]

Reading the old file runs the pickle inside it (``torch.load(weights_only=False)``), which
can execute any code the file's author put there: run this **only on a file you trust** (for
instance one your own training run wrote). The output is a safetensors model file with its
config as JSON (:func:`aerial_inpainting.pconv.checkpoint.save_model`), which every entry
point reads without running code. Exit status 0 on success, 1 on a file that is not a model.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def convert(source: str | Path, target: str | Path | None = None) -> Path:
    """Rewrite ``source`` (old pickle model file) as safetensors at ``target``; returns it.

    ``target`` defaults to ``source`` with the ``.safetensors`` suffix. Raises ValueError
    when ``source`` is not an aerial-inpainting model file.
    """
    import torch

    from aerial_inpainting.pconv.checkpoint import (
        CHECKPOINT_FORMAT,
        LEGACY_MODEL_FORMAT,
        MODEL_SUFFIX,
        save_model,
    )
    from aerial_inpainting.pconv.unet import PConvUNet, UNetConfig

    source = Path(source)
    target = Path(target) if target else source.with_suffix(MODEL_SUFFIX)
    payload = torch.load(source, map_location="cpu", weights_only=False)  # trusted file only
    fmt = payload.get("format") if isinstance(payload, dict) else None
    if fmt == LEGACY_MODEL_FORMAT:
        config, state_dict = payload["config"], payload["state_dict"]
    elif fmt == CHECKPOINT_FORMAT:
        config, state_dict = payload["model_config"], payload["model"]
    else:
        raise ValueError(f"{source}: not an aerial-inpainting model file (format {fmt!r})")
    model = PConvUNet(UNetConfig.from_dict(config))
    model.load_state_dict(state_dict)
    return save_model(target, model, extra=payload.get("extra", {}))


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of the converter; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m aerial_inpainting.convert_model",
        description=__doc__.split("\n\n")[0],
        epilog="Runs the code inside SOURCE: only use it on files you trust.",
    )
    parser.add_argument("source", help="old model file (*.pt) that you trust")
    parser.add_argument("target", nargs="?", help="output (default: SOURCE with .safetensors)")
    args = parser.parse_args(argv)
    try:
        written = convert(args.source, args.target)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        print(f"convert_model: error: {exc}", file=sys.stderr)
        return 1
    print(f"convert_model: wrote {written}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
