"""The pretrained aerial model shipped inside the package: works the minute it is installed.

The files live in ``aerial_inpainting/pretrained_models/`` (package data, in every wheel):

* ``<name>.safetensors``: a project model file (:func:`aerial_inpainting.pconv.checkpoint.save_model`
  format: weights, the network's config as JSON in the header), weights stored as float16;
* ``<name>.json``: the network's config, the file's sha256, its size and dtype, where it came
  from (the source model file's name, sha256 and recorded training information), the
  float16-vs-float32 check made when it was built, the digest of its weights
  (``weights_digest``) and its scores on test splits (``test_scores``: each the split's
  definition and the mean PSNR/SSIM/LPIPS; ``auto`` model selection compares a project's
  model with these, :mod:`aerial_inpainting.model_selection`). ``MODEL_CARD.md`` (repository root)
  describes the model: data, recipe, intended use and limits, figures.

Loading (:func:`load_pretrained`) never unpickles anything: the weights are read by
safetensors, after the file's sha256 has been checked against the one recorded in the JSON
file; a missing, truncated or replaced file is a :class:`PretrainedModelError` saying so.
The float16 weights are cast to float32 on load (the network runs in float32).

Every entry point takes the keyword ``pretrained`` (:data:`PRETRAINED`): ``aerial-inpaint
--model pretrained`` (and its fallback when the project has no trained model),
``inpaint.model``, ``evaluate.model``, ``training.init_weights`` and
:func:`aerial_inpainting.mlflow_model.log_pyfunc_model`.

Replacing the shipped model by another trained model file (or a training checkpoint, whose
EMA weights are taken)::

    python -m aerial_inpainting.pretrained_model build path/to/pconv_unet.safetensors
    python -m aerial_inpainting.pretrained_model verify

``build`` writes both files (deterministically: the same source gives the same bytes),
records the new sha256, and prints the largest float16-vs-float32 output difference on
generated scenes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

PRETRAINED = "pretrained"  # the keyword every entry point accepts
DEFAULT_NAME = "skyview-small"  # the shipped model
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained_models"
PRETRAINED_FORMAT = "aerial-inpainting/pretrained/1"
MODEL_CARD = "MODEL_CARD.md"
BUILD_COMMAND = "python -m aerial_inpainting.pretrained_model build SOURCE_MODEL_FILE"
_DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}


class PretrainedModelError(ValueError):
    """The shipped model is missing, corrupt or inconsistent (the message says which file)."""


def is_pretrained(value: Any) -> bool:
    """True when ``value`` is the keyword ``pretrained`` (any case, surrounding spaces ignored)."""
    return isinstance(value, str) and value.strip().lower() == PRETRAINED


def pretrained_paths(
    name: str = DEFAULT_NAME, directory: str | Path | None = None
) -> tuple[Path, Path]:
    """(weights file, JSON config file) of the shipped model ``name`` (not checked)."""
    directory = Path(directory) if directory is not None else PRETRAINED_DIR
    return directory / f"{name}.safetensors", directory / f"{name}.json"


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_pretrained_config(name: str = DEFAULT_NAME, directory: str | Path | None = None) -> dict:
    """The JSON file of the shipped model, or :class:`PretrainedModelError` naming the file."""
    weights, config_file = pretrained_paths(name, directory)
    if not config_file.is_file():
        raise PretrainedModelError(
            f"pretrained model {name!r}: {config_file} not found; the package was installed "
            "without its data files (reinstall aerial_inpainting), or no model of that name "
            f"ships with it (available: {', '.join(available_pretrained(directory)) or 'none'})"
        )
    try:
        info = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PretrainedModelError(f"{config_file}: not a readable JSON file ({exc})") from exc
    missing = {"format", "config", "sha256", "file"} - set(info if isinstance(info, dict) else {})
    if not isinstance(info, dict) or info.get("format") != PRETRAINED_FORMAT or missing:
        raise PretrainedModelError(
            f"{config_file}: not a pretrained-model description (expected format "
            f"{PRETRAINED_FORMAT!r} with keys config, sha256, file; missing {sorted(missing)})"
        )
    if info["file"] != weights.name:
        raise PretrainedModelError(
            f"{config_file}: describes {info['file']!r}, expected {weights.name!r}"
        )
    return info


def available_pretrained(directory: str | Path | None = None) -> list[str]:
    """Names of the models whose JSON file is in the package data directory."""
    directory = Path(directory) if directory is not None else PRETRAINED_DIR
    return sorted(p.stem for p in directory.glob("*.json")) if directory.is_dir() else []


def pretrained_model_file(name: str = DEFAULT_NAME, directory: str | Path | None = None) -> Path:
    """The shipped model file, after checking its sha256 against the recorded one.

    The file is a regular project model file (readable by
    :func:`aerial_inpainting.pconv.checkpoint.load_model`, float16 weights). Raises
    :class:`PretrainedModelError` when it is missing or its checksum differs.
    """
    weights, config_file = pretrained_paths(name, directory)
    info = read_pretrained_config(name, directory)
    if not weights.is_file():
        raise PretrainedModelError(
            f"pretrained model {name!r}: {weights} not found; the package was installed "
            "without its data files (reinstall aerial_inpainting)"
        )
    found = sha256_file(weights)
    if found != info["sha256"]:
        raise PretrainedModelError(
            f"pretrained model {name!r}: {weights} has sha256 {found}, but {config_file.name} "
            f"records {info['sha256']}: the file is corrupt or was replaced without rebuilding "
            f"(reinstall aerial_inpainting, or rebuild both files with `{BUILD_COMMAND}`)"
        )
    return weights


def load_pretrained(
    name: str = DEFAULT_NAME,
    map_location: str | torch.device = "cpu",
    directory: str | Path | None = None,
) -> torch.nn.Module:
    """The shipped :class:`~aerial_inpainting.pconv.unet.PConvUNet`, float32, in eval mode.

    The file's sha256 is checked first (:func:`pretrained_model_file`); the weights are read
    with safetensors (no unpickling) and the network is rebuilt from the JSON config, which
    must equal the config in the file's header. ``model.extra["pretrained"]`` names the model
    and its checksum. Raises :class:`PretrainedModelError` naming the file.
    """
    from aerial_inpainting.pconv.checkpoint import load_model

    weights = pretrained_model_file(name, directory)
    info = read_pretrained_config(name, directory)
    try:
        model = load_model(weights, map_location="cpu")
    except (OSError, ValueError) as exc:
        raise PretrainedModelError(f"pretrained model {name!r}: {exc}") from exc
    if model.config.to_dict() != info["config"]:
        raise PretrainedModelError(
            f"pretrained model {name!r}: the config in {weights.name}'s header "
            f"{model.config.to_dict()} differs from the one in {name}.json {info['config']}"
        )
    model.extra = {  # type: ignore[attr-defined]
        **getattr(model, "extra", {}),
        "pretrained": {"name": name, "sha256": info["sha256"]},
    }
    return model.to(map_location).eval()


def describe_pretrained(name: str = DEFAULT_NAME, directory: str | Path | None = None) -> str:
    """One line for logs and stderr: which model, its size, where it is described."""
    info = read_pretrained_config(name, directory)
    params = info.get("parameters")
    size = f"{params / 1e6:.1f} M parameters, " if params else ""
    return (
        f"pretrained model {name} shipped with the package ({size}{info.get('dtype', '?')} "
        f"weights, sha256 {info['sha256'][:12]}; {MODEL_CARD})"
    )


# ------------------------------------------------------------------ building the files
def _generated_pairs(n_images: int, size: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_images`` synthetic scenes (classes in turn) with seeded masks over the buckets."""
    from aerial_inpainting.imaging.buckets import BUCKET_LABELS
    from aerial_inpainting.imaging.masks import mask_in_bucket
    from aerial_inpainting.imaging.synthetic import SYNTHETIC_CLASSES, generate_scene, scene_rng

    pairs = []
    for k in range(n_images):
        class_name = SYNTHETIC_CLASSES[k % len(SYNTHETIC_CLASSES)]
        image = generate_scene(class_name, scene_rng(seed, class_name, k), size)
        bucket = BUCKET_LABELS[k % len(BUCKET_LABELS)]
        mask = mask_in_bucket(size, bucket, np.random.default_rng([seed, k]))
        pairs.append((image, mask.astype(bool)))
    return pairs


def compare_outputs(
    reference: torch.nn.Module,
    candidate: torch.nn.Module,
    n_images: int = 6,
    size: int = 256,
    seed: int = 0,
) -> dict[str, Any]:
    """How much ``candidate`` (e.g. the float16-stored model) changes ``reference``'s results.

    On ``n_images`` generated scenes (``size`` px, one seeded mask per image, hole ratios
    over the six buckets): the largest absolute difference of the raw outputs (float, [0, 1]
    scale; everywhere, and on hole pixels only, the ones a result keeps) and of the
    composites through :func:`aerial_inpainting.inference.fill_holes` (uint8 levels), and
    the largest change of the composite's PSNR against the scene.
    """
    from aerial_inpainting.inference import fill_holes

    raw_diff, hole_diff, level_diff, psnr_diff = 0.0, 0.0, 0, 0.0
    for image, valid in _generated_pairs(n_images, size, seed):
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
        m = torch.from_numpy(valid)[None, None].float()
        with torch.no_grad():
            a, b = reference.eval()(x * m, m), candidate.eval()(x * m, m)
        difference = (a - b).abs()[0].amax(dim=0).numpy()
        raw_diff = max(raw_diff, float(difference.max()))
        hole_diff = max(hole_diff, float(difference[~valid].max(initial=0.0)))
        filled = [
            np.where(valid[:, :, None], image, fill_holes(model, image, valid, device="cpu"))
            for model in (reference, candidate)
        ]
        level_diff = max(level_diff, int(np.abs(filled[0].astype(int) - filled[1]).max()))
        psnrs = [_psnr(image, result) for result in filled]
        psnr_diff = max(psnr_diff, float(abs(psnrs[0] - psnrs[1])))
    return {
        "n_images": n_images,
        "size": size,
        "seed": seed,
        "max_abs_diff_raw_output": raw_diff,
        "max_abs_diff_raw_output_holes": hole_diff,
        "max_abs_diff_composite_uint8": level_diff,
        "max_abs_psnr_change_db": psnr_diff,
    }


def _psnr(reference: np.ndarray, image: np.ndarray) -> float:
    mse = float(np.mean((reference.astype(np.float64) - image.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def _canonical_header(data: bytes) -> bytes:
    """A safetensors file with its JSON header's keys sorted (safetensors writes the metadata
    in hash-map order, which changes between runs), so that a build is reproducible byte for
    byte. The tensor bytes and their offsets are unchanged; the header is padded with spaces
    to a multiple of 8 bytes, as the format requires."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + length :]


def build_pretrained(
    source: str | Path,
    name: str = DEFAULT_NAME,
    directory: str | Path | None = None,
    dtype: str = "float16",
    check_images: int = 6,
) -> dict[str, Any]:
    """Write ``<name>.safetensors`` and ``<name>.json`` from a trained model file.

    ``source``: a model file written by the training pipeline (safetensors), or a training
    checkpoint (its EMA weights), read by :func:`~aerial_inpainting.pconv.checkpoint.load_model`
    (no code runs). Floating-point tensors are stored as ``dtype`` (BatchNorm's step counters
    stay int64); a weight that is not finite in ``dtype`` is refused. Returns the JSON
    description written (sha256 included). ``check_images`` > 0 compares the stored model
    with the source on that many generated 256 px scenes (:func:`compare_outputs`).
    """
    from safetensors.torch import save as safetensors_save

    from aerial_inpainting.pconv.checkpoint import (
        MODEL_FORMAT,
        atomic_write_bytes,
        load_model,
        to_plain,
    )

    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    source = Path(source)
    reference = load_model(source, map_location="cpu")
    state = {}
    for key, value in reference.state_dict().items():
        stored = value.detach().cpu().contiguous()
        if stored.is_floating_point():
            stored = stored.to(_DTYPES[dtype])
            if not torch.isfinite(stored).all():
                raise ValueError(f"{source}: {key} does not fit in {dtype} (overflow)")
        state[key] = stored.clone()
    extra = to_plain(dict(getattr(reference, "extra", {}) or {}))
    metadata = {
        "format": MODEL_FORMAT,
        "config": json.dumps(reference.config.to_dict(), sort_keys=True),
        "extra": json.dumps(
            {**extra, "pretrained": name, "stored_dtype": dtype}, default=str, sort_keys=True
        ),
    }
    weights, config_file = pretrained_paths(name, directory)
    atomic_write_bytes(weights, _canonical_header(safetensors_save(state, metadata=metadata)))

    stored_model = load_model(weights)
    info: dict[str, Any] = {
        "format": PRETRAINED_FORMAT,
        "name": name,
        "file": weights.name,
        "sha256": sha256_file(weights),
        "bytes": weights.stat().st_size,
        "dtype": dtype,
        "config": reference.config.to_dict(),
        "parameters": int(sum(p.numel() for p in reference.parameters())),
        "source": {"file": source.name, "sha256": sha256_file(source), "extra": extra},
        "model_card": MODEL_CARD,
        "rebuild": BUILD_COMMAND,
    }
    if check_images > 0:
        info["fp16_check" if dtype == "float16" else f"{dtype}_check"] = compare_outputs(
            reference, stored_model, n_images=check_images
        )
    from aerial_inpainting.model_selection import weights_digest

    info["weights_digest"] = weights_digest(stored_model)  # names it in `auto`'s score records
    try:  # test scores recorded for these very weights stay; a new model has none yet
        previous = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = {}
    same = isinstance(previous, dict) and previous.get("sha256") == info["sha256"]
    if same and previous.get("test_scores"):
        info["test_scores"] = previous["test_scores"]
    text = json.dumps(info, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write_bytes(config_file, text.encode("utf-8"))
    for path in (weights, config_file):  # package data: readable by every user once installed
        path.chmod(0o644)
    return info


# ------------------------------------------------------------------ command line
def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m aerial_inpainting.pretrained_model {build,verify,info}``; returns the status."""
    parser = argparse.ArgumentParser(
        prog="python -m aerial_inpainting.pretrained_model",
        description="The pretrained model shipped with the package: build, verify, describe.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser(
        "build", help="write <name>.safetensors + <name>.json from a trained model file"
    )
    build.add_argument("source", help="model file (.safetensors) or training checkpoint (.pt)")
    build.add_argument("--name", default=DEFAULT_NAME, help=f"default {DEFAULT_NAME}")
    build.add_argument("--out-dir", default=None, help=f"default {PRETRAINED_DIR}")
    build.add_argument("--dtype", default="float16", choices=sorted(_DTYPES))
    build.add_argument(
        "--check-images", type=int, default=6, help="generated scenes for the dtype check"
    )
    for command in ("verify", "info"):
        sub = commands.add_parser(command, help=f"{command} the shipped model")
        sub.add_argument("--name", default=DEFAULT_NAME)
        sub.add_argument("--out-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            info = build_pretrained(
                args.source, args.name, args.out_dir, args.dtype, args.check_images
            )
            print(json.dumps(info, indent=2, sort_keys=True, default=str))
            weights, _ = pretrained_paths(args.name, args.out_dir)
            print(f"wrote {weights} ({info['bytes'] / 1e6:.2f} MB) and its .json", file=sys.stderr)
        elif args.command == "verify":
            load_pretrained(args.name, directory=args.out_dir)
            print(f"ok: {describe_pretrained(args.name, args.out_dir)}")
        else:
            print(json.dumps(read_pretrained_config(args.name, args.out_dir), indent=2))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli())
