"""The partial-convolution U-Net of Liu et al. 2018 (section 3.3), with configurable depth/width.

Encoder layer ``i`` (0-based): stride-2 partial convolution, kernel 7, 5, 5, 3, 3, ..., channels
``min(base_channels * 2**i, max_channels)``, BatchNorm (all layers but the first), ReLU.
Decoder, from the bottom up: nearest upsampling x2 of features and mask, concatenation with the
skip connection's features and mask (the two masks travel as two single-channel sources), 3x3
partial convolution, BatchNorm, LeakyReLU(0.2). The last decoder layer concatenates with the input
image and its mask and has a bias, no BatchNorm and no activation. With the defaults (depth 7,
64..512 channels) this is the paper's 256x256 network.

``prefill="pushpull"`` (beyond the paper) starts the network from a classical fill: the holes
are first filled by :func:`~aerial_inpainting.pconv.pushpull.pull_push_fill`, the U-Net sees
that pre-filled image plus the mask as a fourth channel (every pixel then holds data, so its
partial convolutions see an all-valid mask and act as convolutions whose zero padding is
renormalised), and it predicts a correction added to the pre-fill. The last layer starts at
zero, so an untrained network returns the pull-push fill exactly and training spends every
step on what that fill gets wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm  # also matches SyncBatchNorm

from aerial_inpainting.pconv.partial_conv import PartialConv2d
from aerial_inpainting.pconv.pushpull import pull_push_fill

PREFILLS = ("none", "pushpull")
# What a model file may declare (:func:`check_config_limits`). Depth D pads every input to a
# multiple of 2**D pixels (D = 10: 1024 px); the paper's network is depth 7, 64..512 channels.
MAX_DEPTH = 10
MAX_CHANNELS = 4096
MAX_IMAGE_CHANNELS = 16


@dataclass
class UNetConfig:
    """Shape of a :class:`PConvUNet`; stored with the weights so a model file rebuilds itself.

    ``prefill``: ``"none"`` (the paper) or ``"pushpull"`` (start from a pull-push fill and
    predict a correction; see the module docstring).
    """

    in_channels: int = 3
    out_channels: int = 3
    depth: int = 7
    base_channels: int = 64
    max_channels: int = 512
    prefill: str = "none"

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "prefill":
                if value not in PREFILLS:
                    raise ValueError(
                        f"UNetConfig.prefill must be one of {list(PREFILLS)}, got {value!r}"
                    )
            elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"UNetConfig.{item.name} must be a positive integer, got {value!r}"
                )
        if self.prefill != "none" and self.in_channels != self.out_channels:
            raise ValueError(
                "UNetConfig: a prefilled network corrects its input image, so in_channels "
                f"({self.in_channels}) must equal out_channels ({self.out_channels})"
            )

    def to_dict(self) -> dict[str, int | str]:
        """The fields as a plain dict; ``prefill`` only when set (so model files and
        checkpoint fingerprints of the paper's network stay what they were)."""
        data = asdict(self)
        if self.prefill == "none":
            del data["prefill"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UNetConfig:
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"UNetConfig: unknown keys {unknown}; allowed: {sorted(known)}")
        return cls(
            **{key: value if key == "prefill" else int(value) for key, value in data.items()}
        )

    @property
    def network_in_channels(self) -> int:
        """Channels the first convolution reads: the image, plus the mask when prefilled."""
        return self.in_channels + (1 if self.prefill != "none" else 0)

    def encoder_channels(self) -> list[int]:
        return [min(self.base_channels * 2**i, self.max_channels) for i in range(self.depth)]

    @staticmethod
    def encoder_kernel(index: int) -> int:
        return 7 if index == 0 else 5 if index in (1, 2) else 3


def check_config_limits(config: UNetConfig) -> None:
    """Raise ValueError unless ``config`` is within what a model file may declare.

    ``depth`` <= :data:`MAX_DEPTH` (inputs are padded to multiples of ``2**depth``),
    ``base_channels``/``max_channels`` <= :data:`MAX_CHANNELS`, ``in_channels``/
    ``out_channels`` <= :data:`MAX_IMAGE_CHANNELS`. Checked by the model loader before
    anything is built; :class:`UNetConfig` itself only requires positive values.
    """
    if config.depth > MAX_DEPTH:
        raise ValueError(
            f"depth {config.depth} is outside the supported range 1..{MAX_DEPTH} (inputs would "
            f"be padded to multiples of 2**{config.depth} px)"
        )
    for name, limit in (
        ("base_channels", MAX_CHANNELS),
        ("max_channels", MAX_CHANNELS),
        ("in_channels", MAX_IMAGE_CHANNELS),
        ("out_channels", MAX_IMAGE_CHANNELS),
    ):
        value = getattr(config, name)
        if value > limit:
            raise ValueError(f"{name} {value} is outside the supported range 1..{limit}")


def declared_state_shapes(config: UNetConfig) -> dict[str, tuple[int, ...]]:
    """The ``state_dict`` of ``PConvUNet(config)``: key -> tensor shape, without allocating.

    The network is built on torch's ``meta`` device (shapes only, no storage), so this costs
    the same for any size; call :func:`check_config_limits` first to bound its depth.
    """
    with torch.device("meta"):
        model = PConvUNet(config)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


class PConvUNet(nn.Module):
    """Partial-convolution U-Net: ``forward(image, mask) -> output`` (no clamping)."""

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else UNetConfig()
        cfg = self.config
        channels = cfg.encoder_channels()

        self.enc_convs = nn.ModuleList()
        self.enc_norms = nn.ModuleList()
        in_ch = cfg.network_in_channels
        for i, out_ch in enumerate(channels):
            first = i == 0
            self.enc_convs.append(
                PartialConv2d(in_ch, out_ch, cfg.encoder_kernel(i), stride=2, bias=first)
            )
            self.enc_norms.append(nn.Identity() if first else nn.BatchNorm2d(out_ch))
            in_ch = out_ch

        # Decoder layer j (0 = bottom) upsamples level depth-j and joins the skip at depth-j-1.
        skip_channels = [cfg.network_in_channels, *channels[:-1]]
        self.dec_convs = nn.ModuleList()
        self.dec_norms = nn.ModuleList()
        self.dec_sources: list[tuple[int, int]] = []
        up_ch = channels[-1]
        for level in range(cfg.depth - 1, -1, -1):
            skip_ch = skip_channels[level]
            last = level == 0
            out_ch = cfg.out_channels if last else skip_ch
            self.dec_convs.append(PartialConv2d(up_ch + skip_ch, out_ch, 3, stride=1, bias=last))
            self.dec_norms.append(nn.Identity() if last else nn.BatchNorm2d(out_ch))
            self.dec_sources.append((up_ch, skip_ch))
            up_ch = out_ch

        if cfg.prefill != "none":  # an untrained network returns the pre-fill exactly
            nn.init.zeros_(self.dec_convs[-1].weight)
            nn.init.zeros_(self.dec_convs[-1].bias)
        self._encoder_bn_frozen = False

    # ------------------------------------------------------------------ checks
    def check_input_size(self, height: int, width: int) -> None:
        """Raise ValueError unless both sides are positive multiples of ``2**depth``."""
        factor = 2**self.config.depth
        if height <= 0 or width <= 0 or height % factor or width % factor:
            raise ValueError(
                f"PConvUNet(depth={self.config.depth}) needs height and width that are multiples "
                f"of 2**depth = {factor}; got {height}x{width}. Crop/resize the input or lower depth."
            )

    def _check_inputs(self, image: torch.Tensor, mask: torch.Tensor) -> None:
        if image.dim() != 4 or image.shape[1] != self.config.in_channels:
            raise ValueError(
                f"PConvUNet: image must be (N, {self.config.in_channels}, H, W), "
                f"got {tuple(image.shape)}"
            )
        expected = (image.shape[0], 1, *image.shape[2:])
        if tuple(mask.shape) != expected:
            raise ValueError(
                f"PConvUNet: mask must be {expected} (1 = valid), got {tuple(mask.shape)}"
            )
        self.check_input_size(int(image.shape[2]), int(image.shape[3]))

    # ------------------------------------------------------------------ fine-tune mode
    def freeze_encoder_batchnorm(self) -> None:
        """Paper's fine-tune stage: encoder BatchNorm in eval mode, affine parameters frozen.

        Stays in force across later ``.train()`` calls.
        """
        self._encoder_bn_frozen = True
        for norm in self.enc_norms:
            if isinstance(norm, _BatchNorm):
                for param in norm.parameters():
                    param.requires_grad_(False)
        self.train(self.training)

    @property
    def encoder_batchnorm_frozen(self) -> bool:
        return self._encoder_bn_frozen

    def train(self, mode: bool = True) -> PConvUNet:
        super().train(mode)
        if self._encoder_bn_frozen:
            for norm in self.enc_norms:
                if isinstance(norm, _BatchNorm):
                    norm.eval()
        return self

    # ------------------------------------------------------------------ forward
    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """image (N, C, H, W) in [0, 1], mask (N, 1, H, W) with 1 = valid -> (N, out, H, W)."""
        return self.forward_with_mask(image, mask)[0]

    def forward_with_mask(
        self, image: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`forward`, plus the last layer's updated mask (N, 1, H, W).

        The mask is 1 where the output is a prediction and 0 where no valid pixel lies within
        the network's reach: there the output is exactly 0 (the partial convolution's default),
        not a prediction. Inference uses it to fill such pixels in further passes. A prefilled
        network predicts every pixel of an image that has at least one valid pixel.
        """
        self._check_inputs(image, mask)
        mask = mask.to(image.dtype) if not mask.is_floating_point() else mask
        if self.config.prefill != "none":
            return self._forward_prefilled(image, mask)
        return self._unet(image, mask)

    def _forward_prefilled(
        self, image: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """pre-fill + U-Net(cat(pre-fill, mask)) under an all-valid mask."""
        return self.forward_on_prefill(pull_push_fill(image, mask).to(image.dtype), mask)

    def forward_on_prefill(
        self, filled: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A prefilled network's output from its pre-fill: ``filled`` (N, C, H, W), the
        pull-push fill of the image (:func:`pull_push_fill`), ``mask`` (N, 1, H, W), 1 = valid.

        Returns ``(filled + U-Net correction, reached)``; reached is 1 on every pixel of a
        sample with a valid pixel. The pre-fill is image-wide, the correction local (it sees
        the receptive radius only): hole-aware inference computes the pre-fill once on the
        whole image and this on crops (:mod:`aerial_inpainting.hole_regions`).
        Raises ValueError for a network without a pre-fill.
        """
        if self.config.prefill == "none":
            raise ValueError("forward_on_prefill: this network has no pre-fill (prefill='none')")
        everywhere = torch.ones_like(mask)
        correction, _ = self._unet(torch.cat([filled, mask.to(filled.dtype)], dim=1), everywhere)
        reached = (mask.flatten(1).amax(dim=1) > 0).to(mask.dtype).view(-1, 1, 1, 1)
        return filled + correction, reached.expand_as(mask)

    def _unet(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The partial-convolution U-Net itself on ``image`` under ``mask``."""
        features = [image]
        masks = [mask]
        x, m = features[0], masks[0]
        for i, (conv, norm) in enumerate(zip(self.enc_convs, self.enc_norms, strict=True)):
            x, m = conv(x, m)
            x = F.relu(norm(x))
            if i < self.config.depth - 1:
                features.append(x)
                masks.append(m)

        n_dec = len(self.dec_convs)
        for j, (conv, norm) in enumerate(zip(self.dec_convs, self.dec_norms, strict=True)):
            # = conv(cat(up(x), skip), cat(up(m), skip_m)), without materialising up(x)
            x, m = conv.forward_upsampled(x, m, features.pop(), masks.pop())
            if j < n_dec - 1:
                x = F.leaky_relu(norm(x), 0.2)
        return x, m
