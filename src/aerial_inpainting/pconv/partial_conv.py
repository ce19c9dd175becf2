"""Partial convolution (Liu et al. 2018, eq. 1-2) without a dense convolution of the mask.

With ``M = 1`` on valid pixels, for every output position whose window ``X`` (all ``C_in``
channels, ``k x k`` pixels) holds at least one valid input::

    x' = W^T (X ⊙ M) * sum(1) / sum(M) + b        and        m' = 1,

and ``x' = 0`` (bias included), ``m' = 0`` otherwise. ``sum(1) = C_in * k * k`` and ``sum(M)``
counts valid entries over the whole multi-channel window, as the authors' multi-channel code does.

Public implementations get ``sum(M)`` from a ``C_out x C_in x k x k`` convolution of a
``C_in``-channel mask, which costs as much as the feature convolution itself. Here a mask that is
constant over one *source*'s channels (the image, or the two tensors the decoder concatenates) is
carried as a single channel, and ``sum(M) = Σ_s c_s * boxsum_k(mask_s)``: one convolution of the
``S``-channel mask with a ``1 x S x k x k`` kernel whose entries are the channel counts ``c_s``.
That is exactly the dense result for binary masks, at ``1 / (C_out * C_in / S)`` of its cost.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    first, second = value
    return (int(first), int(second))


class PartialConv2d(nn.Module):
    """2-D partial convolution returning ``(features, updated_mask)``.

    ``padding=None`` means "same" padding ``k // 2`` (so stride 2 halves an even size). Padded
    border pixels count as holes, as in the paper's reference code.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        if padding is None:
            padding = (self.kernel_size[0] // 2, self.kernel_size[1] // 2)
        self.padding = _pair(padding)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Same initialisation as ``nn.Conv2d`` (so a plain conv is a fair comparison)."""
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        if self.bias is not None:
            fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
            bound = 1.0 / fan_in**0.5
            nn.init.uniform_(self.bias, -bound, bound)

    @property
    def window_size(self) -> int:
        """sum(1): the number of entries in one ``C_in x k x k`` window."""
        return self.in_channels * self.kernel_size[0] * self.kernel_size[1]

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}"
        )

    def _resolve_sources(
        self, mask: torch.Tensor, source_channels: Sequence[int] | None
    ) -> tuple[int, ...] | None:
        """Channel count per mask channel, or ``None`` for a dense ``C_in``-channel mask."""
        if mask.dim() != 4:
            raise ValueError(
                f"PartialConv2d: mask must be 4-D (N, S, H, W), got {tuple(mask.shape)}"
            )
        if source_channels is None:
            if mask.shape[1] == 1:
                return (self.in_channels,)
            if mask.shape[1] == self.in_channels:
                return None
            raise ValueError(
                f"PartialConv2d: mask has {mask.shape[1]} channels; expected 1, {self.in_channels} "
                "(dense), or pass source_channels"
            )
        counts = tuple(int(c) for c in source_channels)
        if sum(counts) != self.in_channels or len(counts) != mask.shape[1] or min(counts) < 1:
            raise ValueError(
                f"PartialConv2d: source_channels={counts} must be positive, sum to in_channels="
                f"{self.in_channels} and match the mask's {mask.shape[1]} channels"
            )
        return counts

    def mask_update(
        self, mask: torch.Tensor, source_channels: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(ratio, new_mask)``, both ``(N, 1, H', W')``, computed without gradient.

        ``ratio = sum(1) / sum(M)`` where ``sum(M) > 0`` and exactly 0 elsewhere. Computed in
        float32 (float64 for float64 masks) with autocast off: window counts up to
        ``C_in * k * k`` (4608 for 512 x 3 x 3) are not exact in float16.
        """
        counts = self._resolve_sources(mask, source_channels)
        dtype = torch.float64 if mask.dtype == torch.float64 else torch.float32
        with torch.no_grad(), torch.autocast(device_type=mask.device.type, enabled=False):
            mask_f = mask.to(dtype)
            if counts is None:
                kernel = torch.ones(1, self.in_channels, *self.kernel_size, dtype=dtype)
            else:
                kernel = torch.tensor(counts, dtype=dtype).view(1, -1, 1, 1)
                kernel = kernel.expand(1, len(counts), *self.kernel_size).contiguous()
            kernel = kernel.to(mask.device)
            window_sum = F.conv2d(mask_f, kernel, None, self.stride, self.padding)
            new_mask = (window_sum > 0).to(dtype)
            ratio = (float(self.window_size) / window_sum.clamp(min=1.0)).mul_(new_mask)
        return ratio, new_mask

    def _masked_input(
        self, x: torch.Tensor, mask: torch.Tensor, counts: tuple[int, ...] | None
    ) -> torch.Tensor:
        """X ⊙ M, broadcasting single-channel source masks instead of materialising them."""
        mask = mask.to(x.dtype)
        if counts is None or len(counts) == 1:
            return x * mask
        pieces = []
        start = 0
        for index, count in enumerate(counts):
            pieces.append(x[:, start : start + count] * mask[:, index : index + 1])
            start += count
        return torch.cat(pieces, dim=1)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        source_channels: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Partial convolution of ``x`` (N, C_in, H, W) under ``mask`` (N, S, H, W), 1 = valid.

        ``source_channels`` gives the number of ``x`` channels each mask channel stands for (in
        order); default: one mask channel for all of ``x``. A mask with ``C_in`` channels and no
        ``source_channels`` is treated as dense (one mask value per input channel).
        Returns ``(out (N, C_out, H', W'), new_mask (N, 1, H', W'))``; ``new_mask`` has the
        mask's dtype (float32 or float64).
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"PartialConv2d: expected x of shape (N, {self.in_channels}, H, W), "
                f"got {tuple(x.shape)}"
            )
        if mask.shape[0] != x.shape[0] or mask.shape[-2:] != x.shape[-2:]:
            raise ValueError(
                f"PartialConv2d: mask {tuple(mask.shape)} does not match x {tuple(x.shape)} "
                "in batch size or spatial size"
            )
        counts = self._resolve_sources(mask, source_channels)
        ratio, new_mask = self.mask_update(mask, counts)
        raw = F.conv2d(
            self._masked_input(x, mask, counts), self.weight, None, self.stride, self.padding
        )
        # Rescale in place (conv's backward does not need its output), then add the bias only
        # where the window saw a valid pixel: bias * new_mask, never bias * ratio.
        out = raw.mul_(ratio.to(raw.dtype))
        if self.bias is not None:
            bias = self.bias.to(out.dtype).view(1, -1, 1, 1)
            out = out.addcmul_(bias, new_mask.to(out.dtype))
        return out, new_mask.to(mask.dtype) if mask.is_floating_point() else new_mask
