"""The GPU bundle maker (issue 25): everything a lent device machine needs and lacks, in one
git-ignored folder that travels with the checkout (``carry: [".gpu_bundle"]``).

    python benchmarks/gpu/bundle.py                       # after `kedro run --pipelines=data_processing`
    python benchmarks/gpu/bundle.py --val-images 150 --out .gpu_bundle

The device machine has no network, no Kedro/MLflow/pytorch-msssim/lpips, and only the checkout
travels, 64 MiB in all (tracked + untracked-not-ignored files + carried paths). The bundle holds:

* ``wheels/``: the two pure-Python packages the device run imports and the machine lacks
  (``pytorch-msssim`` for the SSIM loss term, ``lpips`` for the LPIPS heads), downloaded with
  the device README's ``pip download`` recipe for CPython 3.12 (the versions installed here);
* ``weights/``: ImageNet VGG-16 up to pool3 (the loss) and AlexNet's features (LPIPS), cut from
  the files ``aerial-inpainting weights fetch`` converted, stored as float16 safetensors;
* ``data/val.npz``: validation images (the project's validation split, spread over the hole
  ratios like the training node's validation batch) as their JPEG bytes, with their masks
  (bit-packed) from the project's ``val_masks``;
* ``data/train.npz``: as many training-split JPEGs as fit in what is left of 64 MiB (minus
  ``--margin-mib``), taken class by class in a seeded order so every class gets the same count;
  the bytes as they are in the dataset (decoded on the device, checked here against the
  ingested ``images.npy``);
* ``manifest.json``: what is inside, with sizes, counts and checksums.

Every array is written with ``np.savez`` without object arrays and read back with
``allow_pickle=False``: loading the bundle runs no code from it. Fails (exit 1, a message saying
by how much) when the checkout plus the bundle exceeds 64 MiB.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
LIMIT_BYTES = 64 * 2**20  # what travels to the device machine, all told
WHEELS = ("pytorch-msssim", "lpips")
PIP_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
VGG_POOL3_CONVS = (0, 2, 5, 7, 10, 12, 14)  # torchvision vgg16().features indices up to pool3
ALEXNET_CONVS = (0, 3, 6, 8, 10)


class BundleError(RuntimeError):
    """A bundle that cannot be made or would not fit; the message says why."""


def checkout_bytes(root: Path = ROOT, exclude: Path | None = None) -> int:
    """Bytes of the files that travel: tracked (present) and untracked-not-ignored ones."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    total = 0
    for name in filter(None, listed):
        path = root / name.decode()
        inside = exclude is not None and exclude in path.parents
        if path.is_file() and not path.is_symlink() and not inside:
            total += path.stat().st_size
    return total


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def latest_version(path: Path) -> Path:
    """A Kedro versioned dataset's newest file (``<name>/<version>/<name>``), or ``path``."""
    if path.is_dir():
        versions = sorted(p for p in path.iterdir() if p.is_dir())
        if not versions:
            raise BundleError(
                f"{path}: no saved version; run `kedro run --pipelines=data_processing`"
            )
        return versions[-1] / path.name
    if not path.exists():
        raise BundleError(f"{path} is missing; run `kedro run --pipelines=data_processing` first")
    return path


def download_wheels(folder: Path) -> list[str]:
    """The device README's recipe: CPython 3.12 manylinux/any wheels, no dependencies."""
    folder.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={version(name)}" for name in WHEELS]
    platforms = [arg for p in PIP_PLATFORMS for arg in ("--platform", p)]
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(folder)]
    result = subprocess.run([*command, *pins], capture_output=True, text=True)
    if result.returncode:
        raise BundleError(f"pip download {' '.join(pins)} failed:\n{result.stderr[-2000:]}")
    return sorted(p.name for p in folder.glob("*.whl"))


def write_weights(folder: Path) -> dict[str, str]:
    """VGG-16 to pool3 and AlexNet's features, float16, from the converted ImageNet files."""
    from safetensors.torch import save_file

    from aerial_inpainting import pretrained

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for net, convs, name in (
        ("vgg16", VGG_POOL3_CONVS, "vgg16_pool3_fp16.safetensors"),
        ("alexnet", ALEXNET_CONVS, "alexnet_features_fp16.safetensors"),
    ):
        try:
            state = pretrained.load_converted(net)
        except FileNotFoundError as exc:
            raise BundleError(f"{exc} (run `{pretrained.FETCH_COMMAND}` once)") from exc
        keep = {
            f"features.{i}.{kind}": state[f"features.{i}.{kind}"].half().contiguous()
            for i in convs
            for kind in ("weight", "bias")
        }
        save_file(keep, str(folder / name), metadata={"source": f"{pretrained.SDIST_FILE} {net}"})
        files[net] = f"weights/{name}"
    return files


def pack_jpegs(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """The files' bytes end to end (uint8) and their offsets (int64, n + 1)."""
    blobs = [p.read_bytes() for p in paths]
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    return np.frombuffer(b"".join(blobs), dtype=np.uint8), offsets


def decode(data: np.ndarray, offsets: np.ndarray, i: int) -> np.ndarray:
    """Image ``i`` of a packed array as uint8 RGB (H, W, 3), decoded by Pillow."""
    raw = data[offsets[i] : offsets[i + 1]].tobytes()
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))


def check_decoding(
    data: np.ndarray, offsets: np.ndarray, rows: list[int], images: np.ndarray
) -> None:
    """The packed bytes decode to the ingested pixels (what the project trains on here)."""
    for i, row in enumerate(rows):
        if not np.array_equal(decode(data, offsets, i), images[row]):
            raise BundleError(f"packed image {i} (row {row}) does not decode to images.npy")


def stratified_order(split: pd.DataFrame, seed: int) -> list[int]:
    """Positions of ``split`` class by class in turn, each class in a seeded random order."""
    rng = np.random.default_rng(seed)
    per_class = [
        list(rng.permutation(group.index.to_numpy()))
        for _, group in split.groupby("class_name", sort=True)
    ]
    order = []
    for k in range(max(len(c) for c in per_class)):
        order += [int(c[k]) for c in per_class if k < len(c)]
    return order


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_bundle(args: argparse.Namespace) -> dict:
    """Write the bundle into ``args.out``; returns the manifest. Raises BundleError."""
    from aerial_inpainting.pipelines.training.nodes import pick_validation_set

    out, project = Path(args.out), Path(args.project)
    if out.exists():
        shutil.rmtree(out)
    (out / "data").mkdir(parents=True)
    raw = project / "data/01_raw/Aerial_Landscapes"
    images = np.load(project / "data/03_primary/images.npy", mmap_mode="r")
    train = pd.read_csv(latest_version(project / "data/05_model_input/train_split.csv"))
    val = pd.read_csv(latest_version(project / "data/05_model_input/val_split.csv"))
    val_index = pd.read_csv(latest_version(project / "data/04_feature/val_mask_index.csv"))
    mask_dir = latest_version(project / "data/04_feature/val_masks")

    manifest: dict = {"format": "aerial-inpainting/gpu-bundle/1", "limit_bytes": LIMIT_BYTES}
    manifest["wheels"] = [] if args.no_wheels else download_wheels(out / "wheels")
    manifest["weights"] = write_weights(out / "weights")

    rows, mask_ids = pick_validation_set(val, val_index, args.val_images)
    by_row = val.set_index("row")
    val_paths = [raw / by_row.loc[r, "source_file"] for r in rows]
    data, offsets = pack_jpegs(val_paths)
    check_decoding(data, offsets, rows, images)
    masks = [np.asarray(Image.open(mask_dir / f"{m}.png")) > 0 for m in mask_ids]
    ratios = val_index.set_index("mask_id").loc[mask_ids, "hole_ratio"].to_numpy(np.float64)
    np.savez(
        out / "data/val.npz",
        jpeg=data,
        offsets=offsets,
        image_id=by_row.loc[rows, "image_id"].to_numpy(str),
        class_name=by_row.loc[rows, "class_name"].to_numpy(str),
        mask_id=np.asarray(mask_ids, dtype=str),
        hole_ratio=ratios,
        masks=np.packbits(np.stack(masks), axis=-1),
        mask_shape=np.asarray(masks[0].shape),
    )

    # What is left for training images: 64 MiB minus the checkout, the bundle so far, a margin.
    used = checkout_bytes(ROOT, exclude=out.resolve()) + folder_bytes(out)
    budget = LIMIT_BYTES - used - int(args.margin_mib * 2**20)
    order = stratified_order(train, args.seed)
    chosen, total = [], 0
    for position in order[: args.max_train_images or None]:
        size = (raw / train.loc[position, "source_file"]).stat().st_size
        if total + size > budget:
            break
        chosen.append(position)
        total += size
    if not chosen:
        raise BundleError(f"no room for training images: {used / 2**20:.1f} MiB used already")
    picked = train.loc[chosen]
    data, offsets = pack_jpegs([raw / f for f in picked["source_file"]])
    check_decoding(data, offsets, picked["row"].astype(int).tolist(), images)
    np.savez(
        out / "data/train.npz",
        jpeg=data,
        offsets=offsets,
        image_id=picked["image_id"].to_numpy(str),
        class_name=picked["class_name"].to_numpy(str),
    )

    manifest["train"] = {
        "images": len(chosen),
        "of_train_split": len(train),
        "per_class": {
            str(k): int(v) for k, v in picked["class_name"].value_counts().sort_index().items()
        },
        "seed": args.seed,
    }
    manifest["val"] = {"images": len(rows), "of_val_split": len(val)}
    manifest["files"] = {
        str(p.relative_to(out)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    travel = checkout_bytes(ROOT, exclude=out.resolve()) + folder_bytes(out)
    manifest["travel_bytes"] = travel
    if travel > LIMIT_BYTES:
        raise BundleError(
            f"checkout + bundle = {travel / 2**20:.2f} MiB, over the device's 64 MiB by "
            f"{(travel - LIMIT_BYTES) / 2**20:.2f} MiB: lower --max-train-images or raise --margin-mib"
        )
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", default=str(ROOT), help="the Kedro project (its data/)")
    parser.add_argument("--out", default=str(ROOT / ".gpu_bundle"), help="the bundle folder")
    parser.add_argument("--val-images", type=int, default=150, help="validation images carried")
    parser.add_argument("--max-train-images", type=int, default=0, help="0 = as many as fit")
    parser.add_argument("--margin-mib", type=float, default=1.5, help="room left under 64 MiB")
    parser.add_argument("--seed", type=int, default=2025, help="order of the training images")
    parser.add_argument("--no-wheels", action="store_true", help="skip pip download (tests)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        manifest = make_bundle(args)
    except BundleError as exc:
        print(f"bundle: {exc}", file=sys.stderr)
        return 1
    print(
        f"bundle: {args.out}: {manifest['train']['images']} training and "
        f"{manifest['val']['images']} validation images, wheels {manifest['wheels']}; "
        f"checkout + bundle = {manifest['travel_bytes'] / 2**20:.2f} MiB of 64"
    )
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):
        sys.path.insert(0, str(ROOT / "src"))
    sys.exit(main())
