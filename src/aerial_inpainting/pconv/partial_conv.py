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

The U-Net's decoder convolves ``cat(up(x), skip)``, ``up`` = nearest x2 upsampling.
:meth:`PartialConv2d.forward_upsampled` computes exactly that without building the upsampled,
concatenated tensor: on the CPU those copies took as long as the convolutions, and the
upsampled half's 3x3 convolution is four 2x2 convolutions of the small map (16/36 of the work).
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


# Nearest x2 upsampling: output phase 0 of an axis reads input offsets (-1, 0) with kernel
# taps (k0, k1 + k2), phase 1 reads offsets (0, +1) with taps (k0 + k1, k2).
_AXIS_FOLD = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
# (3x3 tap (a, b)) -> (row phase p, column phase q, row tap t, column tap u), as a 9 x 16 matrix.
_PHASE_FOLD = torch.einsum("pta,qub->abpqtu", _AXIS_FOLD, _AXIS_FOLD).reshape(9, 16)


def _phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C, 3, 3) kernels -> (4 C_out, C, 2, 2): one 2x2 kernel per output phase.

    Output channel ``(p * 2 + q) * C_out + o`` is phase (row p, column q) of channel ``o``. One
    small matrix product and one copy (forward and backward), cheap next to the convolution.
    """
    c_out, c_in = weight.shape[:2]
    fold = _PHASE_FOLD.to(device=weight.device, dtype=weight.dtype)
    folded = (weight.reshape(c_out * c_in, 9) @ fold).reshape(c_out, c_in, 4, 4)  # (o, i, pq, tu)
    return folded.permute(2, 0, 1, 3).reshape(4 * c_out, c_in, 2, 2)


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
        Returns ``(out (N, C_out, H', W'), new_mask (N, 1, H', W'))``; ``new_mask`` has
        the mask's dtype (float32 or float64).
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

    def forward_upsampled(
        self,
        low: torch.Tensor,
        low_mask: torch.Tensor,
        skip: torch.Tensor,
        skip_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The U-Net decoder step: this 3x3, stride-1 partial convolution applied to
        ``cat(up(low), skip)`` under ``cat(up(low_mask), skip_mask)``, ``up`` = nearest x2.

        Same result as upsampling, concatenating and calling :meth:`forward` with
        ``source_channels=(Ca, Cb)``, at a fraction of the cost: a 3x3 convolution of a
        nearest-upsampled map is, for each of the four output phases (row, column parity), a
        2x2 convolution of the small map with summed kernel taps ("sub-pixel" convolution). So
        the upsampled half is never materialised and its convolution costs 16/36 of the plain
        one; the skip half is convolved as usual and the phases are added into its output.
        ``low`` (N, Ca, h, w), ``low_mask`` (N, 1, h, w), ``skip`` (N, Cb, 2h, 2w), ``skip_mask``
        (N, 1, 2h, 2w), masks 1 = valid. Returns ``(out (N, C_out, 2h, 2w), new_mask (N, 1,
        2h, 2w))``.
        """
        if self.kernel_size != (3, 3) or self.stride != (1, 1) or self.padding != (1, 1):
            raise ValueError(
                "PartialConv2d.forward_upsampled needs kernel 3, stride 1, padding 1; this layer "
                f"has {self.extra_repr()}"
            )
        n, ca, h, w = low.shape
        cb = skip.shape[1]
        if ca + cb != self.in_channels or skip.shape[0] != n or skip.shape[-2:] != (2 * h, 2 * w):
            raise ValueError(
                f"PartialConv2d.forward_upsampled: low {tuple(low.shape)} and skip "
                f"{tuple(skip.shape)} must have {self.in_channels} channels together and skip "
                "twice low's size"
            )
        up_mask = F.interpolate(low_mask, scale_factor=2, mode="nearest")
        mask = torch.cat([up_mask, skip_mask.to(up_mask.dtype)], dim=1)
        ratio, new_mask = self.mask_update(mask, (ca, cb))

        weight = self.weight
        out = F.conv2d(skip * skip_mask.to(skip.dtype), weight[:, ca:], None, 1, 1)
        # Phase p of a row uses rows (i-1, i) of the small map when p = 0 and (i, i+1) when
        # p = 1: the 3 kernel rows fold into 2 as [w0, w1 + w2] and [w0 + w1, w2]; columns too.
        masked_low = low * low_mask.to(low.dtype)
        # padding 1 with a 2x2 kernel: (h+1, w+1) outputs; phase p's row i sits at row i + p.
        phases = F.conv2d(masked_low, _phase_kernels(weight[:, :ca]).to(out.dtype), None, 1, 1)
        phases = phases.unflatten(1, (2, 2, self.out_channels))  # (n, p, q, C_out, h+1, w+1)
        grid = out.unflatten(3, (w, 2)).unflatten(2, (h, 2))  # view (n, C_out, h, 2, w, 2)
        for p in (0, 1):
            for q in (0, 1):
                grid[:, :, :, p, :, q] += phases[:, p, q, :, p : p + h, q : q + w]
        out = out.mul_(ratio.to(out.dtype))
        if self.bias is not None:
            bias = self.bias.to(out.dtype).view(1, -1, 1, 1)
            out = out.addcmul_(bias, new_mask.to(out.dtype))
        return out, new_mask.to(low_mask.dtype) if low_mask.is_floating_point() else new_mask
