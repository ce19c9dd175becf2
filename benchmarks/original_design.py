"""The design this project replaced, re-implemented for the benchmarks only (not used by the pipeline).

It follows the widely copied public partial-convolution code (NVIDIA-style, ``multi_channel``):

* the mask carries one channel per feature channel, and every layer updates it with a *dense*
  ``C_out x C_in x k x k`` convolution of ones, so the mask ratio ``sum(1)/sum(M)`` is computed
  per output channel and the returned mask has ``C_out`` channels;
* float32, NCHW throughout;
* the same U-Net topology as :class:`aerial_inpainting.pconv.unet.PConvUNet` (depth 7 by default,
  64, 128, 256, 512, ... channels, kernels 7, 5, 5, 3, 3, ..., nearest upsampling, skip
  concatenation of features *and* masks, BatchNorm on all but the first and the last layer);
* a loss that calls VGG-16 (pool1..pool3) three separate times, on I_out, I_comp and I_gt.

The known correctness bugs of that public code are *not* reproduced (they do not change the cost):
the point is to time the same mathematics done the old way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DensePartialConv2d(nn.Conv2d):
    """Partial convolution whose mask update is a dense ones-convolution of a C_in-channel mask."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            bias=bias,
        )
        self.register_buffer(
            "mask_weight",
            torch.ones(out_channels, in_channels, kernel_size, kernel_size),
            persistent=False,
        )
        self.window = float(in_channels * kernel_size * kernel_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            count = F.conv2d(mask, self.mask_weight, None, self.stride, self.padding)
            update = count.clamp(0.0, 1.0)
            ratio = self.window / (count + 1e-8) * update
        raw = F.conv2d(x * mask, self.weight, None, self.stride, self.padding)
        out = raw * ratio
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out * update, update


class _Block(nn.Module):
    def __init__(
        self, cin: int, cout: int, k: int, stride: int, bn: bool, act: str | None, bias: bool
    ) -> None:
        super().__init__()
        self.conv = DensePartialConv2d(cin, cout, k, stride=stride, bias=bias)
        self.bn = nn.BatchNorm2d(cout) if bn else None
        self.act = act

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, mask = self.conv(x, mask)
        if self.bn is not None:
            x = self.bn(x)
        if self.act == "relu":
            x = F.relu(x)
        elif self.act == "leaky":
            x = F.leaky_relu(x, 0.2)
        return x, mask


class OriginalPConvUNet(nn.Module):
    """Depth-``depth`` partial-conv U-Net with C_in-channel masks (input mask repeated over RGB)."""

    def __init__(self, depth: int = 7, base_channels: int = 64, max_channels: int = 512) -> None:
        super().__init__()
        self.depth = depth
        chans = [min(base_channels * 2**i, max_channels) for i in range(depth)]
        kernels = [7, 5, 5] + [3] * max(0, depth - 3)
        self.encoder = nn.ModuleList()
        cin = 3
        for i in range(depth):
            # Bias only where no BatchNorm follows (the first layer), as the public code does.
            self.encoder.append(
                _Block(cin, chans[i], kernels[i], 2, bn=i > 0, act="relu", bias=i == 0)
            )
            cin = chans[i]
        self.decoder = nn.ModuleList()
        skips = [3, *chans[:-1]]  # what each decoder level is concatenated with
        for i in reversed(range(depth)):
            last = i == 0
            self.decoder.append(
                _Block(
                    chans[i] + skips[i],
                    3 if last else skips[i],
                    3,
                    1,
                    bn=not last,
                    act=None if last else "leaky",
                    bias=last,
                )
            )

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.expand(-1, image.shape[1], -1, -1).contiguous()
        feats, masks = [image], [mask]
        h, m = image, mask
        for block in self.encoder:
            h, m = block(h, m)
            feats.append(h)
            masks.append(m)
        feats.pop()
        masks.pop()
        for block in self.decoder:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            m = F.interpolate(m, scale_factor=2, mode="nearest")
            h = torch.cat([h, feats.pop()], dim=1)
            m = torch.cat([m, masks.pop()], dim=1)
            h, m = block(h, m)
        return h


class OriginalVGG16Features(nn.Module):
    """VGG-16 conv1_1..pool3 (random init: nothing is downloaded), returns pool1, pool2, pool3."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import vgg16

        features = vgg16(weights=None).features
        self.slices = nn.ModuleList([features[0:5], features[5:10], features[10:17]])
        for p in self.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.mean) / self.std
        out = []
        for s in self.slices:
            x = s(x)
            out.append(x)
        return out


def _gram(f: torch.Tensor) -> torch.Tensor:
    n, c, h, w = f.shape
    f = f.reshape(n, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


class OriginalInpaintingLoss(nn.Module):
    """Liu et al. loss with VGG called separately on I_out, I_comp and I_gt (three passes)."""

    def __init__(self, extractor: OriginalVGG16Features) -> None:
        super().__init__()
        self.extractor = extractor

    def forward(
        self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        comp = mask * target + (1 - mask) * output
        valid = F.l1_loss(mask * output, mask * target)
        hole = F.l1_loss((1 - mask) * output, (1 - mask) * target)
        f_out = self.extractor(output)
        f_comp = self.extractor(comp)
        f_gt = self.extractor(target)
        perceptual = sum(
            F.l1_loss(a, g) + F.l1_loss(b, g) for a, b, g in zip(f_out, f_comp, f_gt, strict=True)
        )
        style_out = sum(F.l1_loss(_gram(a), _gram(g)) for a, g in zip(f_out, f_gt, strict=True))
        style_comp = sum(F.l1_loss(_gram(b), _gram(g)) for b, g in zip(f_comp, f_gt, strict=True))
        hole_region = F.max_pool2d(1 - mask, 3, stride=1, padding=1)
        dh = (comp[:, :, 1:, :] - comp[:, :, :-1, :]).abs() * hole_region[:, :, 1:, :]
        dw = (comp[:, :, :, 1:] - comp[:, :, :, :-1]).abs() * hole_region[:, :, :, 1:]
        tv = dh.mean() + dw.mean()
        total = valid + 6 * hole + 0.05 * perceptual + 120 * (style_out + style_comp) + 0.1 * tv
        return {
            "total": total,
            "valid": valid,
            "hole": hole,
            "perceptual": perceptual,
            "style_out": style_out,
            "style_comp": style_comp,
            "tv": tv,
        }
