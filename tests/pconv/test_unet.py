"""PConvUNet: architecture as configured, BatchNorm really applied, fine-tune freezing, sizes.

Tests taking ``device`` run on the CPU and, when present, on CUDA.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from aerial_inpainting.pconv.partial_conv import PartialConv2d
from aerial_inpainting.pconv.unet import PConvUNet, UNetConfig


def holey_mask(n, h, w):
    mask = torch.ones(n, 1, h, w)
    mask[:, :, h // 4 : 3 * h // 4, w // 8 : 7 * w // 8] = 0.0
    mask[:, :, : h // 8] = 0.0
    return mask


def tiny(depth=3, base=4, max_channels=8, **kwargs):
    return PConvUNet(
        UNetConfig(depth=depth, base_channels=base, max_channels=max_channels, **kwargs)
    )


def test_output_shape_and_dtype():
    model = tiny(depth=3, base=4)
    image = torch.rand(2, 3, 32, 24)
    out = model(image, holey_mask(2, 32, 24))
    assert out.shape == (2, 3, 32, 24)
    assert out.dtype == torch.float32
    model2 = tiny(depth=2, base=8, max_channels=64, out_channels=1)
    assert model2(torch.rand(1, 3, 16, 16), torch.ones(1, 1, 16, 16)).shape == (1, 1, 16, 16)


def test_input_size_not_multiple_of_two_to_depth_is_rejected():
    model = tiny(depth=3)
    model.check_input_size(16, 24)
    with pytest.raises(ValueError, match=r"multiples of 2\*\*depth = 8; got 20x24"):
        model.check_input_size(20, 24)
    with pytest.raises(ValueError, match="multiples"):
        model(torch.rand(1, 3, 16, 12), torch.ones(1, 1, 16, 12))
    with pytest.raises(ValueError, match="mask must be"):
        model(torch.rand(1, 3, 16, 16), torch.ones(1, 3, 16, 16))


def test_default_architecture_is_the_papers():
    model = PConvUNet()
    enc = [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0]) for c in model.enc_convs]
    assert enc == [
        (3, 64, 7, 2),
        (64, 128, 5, 2),
        (128, 256, 5, 2),
        (256, 512, 3, 2),
        (512, 512, 3, 2),
        (512, 512, 3, 2),
        (512, 512, 3, 2),
    ]
    dec = [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0]) for c in model.dec_convs]
    assert dec == [
        (1024, 512, 3, 1),
        (1024, 512, 3, 1),
        (1024, 512, 3, 1),
        (768, 256, 3, 1),
        (384, 128, 3, 1),
        (192, 64, 3, 1),
        (67, 3, 3, 1),
    ]
    assert sum(isinstance(m, PartialConv2d) for m in model.modules()) == 14
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 6 + 6
    assert [c.bias is not None for c in model.enc_convs] == [True] + [False] * 6
    assert [c.bias is not None for c in model.dec_convs] == [False] * 6 + [True]


def test_depth_and_width_configuration_respected():
    model = tiny(depth=3, base=4, max_channels=8)
    assert [c.out_channels for c in model.enc_convs] == [4, 8, 8]
    assert [c.kernel_size[0] for c in model.enc_convs] == [7, 5, 5]
    assert [(c.in_channels, c.out_channels) for c in model.dec_convs] == [(16, 8), (12, 4), (7, 3)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [bn.num_features for bn in bns] == [8, 8, 8, 4]


def test_config_round_trip_and_unknown_keys():
    cfg = UNetConfig(depth=4, base_channels=16, max_channels=64)
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    assert PConvUNet(cfg).config == cfg
    with pytest.raises(ValueError, match="unknown keys"):
        UNetConfig.from_dict({"depth": 3, "width": 2})
    with pytest.raises(ValueError, match="positive integer"):
        UNetConfig(depth=0)


def test_batchnorm_is_applied_in_forward():
    model = tiny(depth=3)
    image, mask = torch.rand(2, 3, 16, 16), holey_mask(2, 16, 16)
    model.train()
    before = [bn.running_mean.clone() for bn in model.modules() if isinstance(bn, nn.BatchNorm2d)]
    model(image, mask)
    after = [bn.running_mean for bn in model.modules() if isinstance(bn, nn.BatchNorm2d)]
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))

    model.eval()
    reference = model(image, mask)
    for bn in [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]:
        with torch.no_grad():
            saved = bn.weight.clone()
            bn.weight.mul_(3.0)
        assert not torch.allclose(model(image, mask), reference), "a BatchNorm layer is unused"
        with torch.no_grad():
            bn.weight.copy_(saved)


def test_output_independent_of_hole_pixels(device):
    model = tiny(depth=3).double().eval().to(device)
    image = torch.rand(2, 3, 16, 16, dtype=torch.float64, device=device)
    mask = holey_mask(2, 16, 16).double().to(device)
    noisy = image + (1 - mask) * 100 * torch.randn_like(image)
    torch.testing.assert_close(model(image, mask), model(noisy, mask), atol=1e-9, rtol=1e-9)


def test_freeze_encoder_batchnorm():
    model = tiny(depth=3)
    model.freeze_encoder_batchnorm()
    model.train()
    enc_bns = [m for m in model.enc_norms if isinstance(m, nn.BatchNorm2d)]
    dec_bns = [m for m in model.dec_norms if isinstance(m, nn.BatchNorm2d)]
    assert enc_bns and dec_bns
    assert all(not bn.training for bn in enc_bns)
    assert all(bn.training for bn in dec_bns)
    assert all(not p.requires_grad for bn in enc_bns for p in bn.parameters())
    assert all(p.requires_grad for bn in dec_bns for p in bn.parameters())
    assert all(c.weight.requires_grad for c in model.enc_convs)

    enc_stats = [bn.running_mean.clone() for bn in enc_bns]
    dec_stats = [bn.running_mean.clone() for bn in dec_bns]
    model(torch.rand(2, 3, 16, 16), holey_mask(2, 16, 16)).square().mean().backward()
    assert all(torch.equal(a, bn.running_mean) for a, bn in zip(enc_stats, enc_bns, strict=True))
    assert all(
        not torch.equal(a, bn.running_mean) for a, bn in zip(dec_stats, dec_bns, strict=True)
    )
    assert all(p.grad is None for bn in enc_bns for p in bn.parameters())
    model.eval()
    model.train(True)
    assert all(not bn.training for bn in enc_bns)


def test_channels_last_matches_nchw():
    model = tiny(depth=3).double().eval()
    image, mask = torch.rand(2, 3, 16, 16, dtype=torch.float64), holey_mask(2, 16, 16).double()
    expected = model(image, mask)
    model_cl = model.to(memory_format=torch.channels_last)
    out = model_cl(
        image.to(memory_format=torch.channels_last), mask.to(memory_format=torch.channels_last)
    )
    torch.testing.assert_close(out, expected, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_finite_with_large_holes(dtype, channels_last, device):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = tiny(depth=3, base=8, max_channels=16).to(device=device, memory_format=fmt)
    image = torch.rand(2, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    mask = torch.zeros(2, 1, 32, 32, device=device)
    mask[:, :, :3, :3] = 1.0
    mask = mask.contiguous(memory_format=fmt)
    with torch.autocast(device_type=device, dtype=dtype):
        out = model(image, mask)
        loss = (out.float() - image).abs().mean()
    loss.backward()
    assert torch.isfinite(out).all()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


def dense_partial_conv(layer, x, dense_mask):
    """Eq. (1)-(2) with a dense C_in-channel mask and a C_out x C_in x k x k ones convolution."""
    k = layer.kernel_size[0]
    ones = torch.ones(layer.out_channels, layer.in_channels, k, k, dtype=x.dtype)
    sum_m = torch.nn.functional.conv2d(dense_mask, ones, None, layer.stride, layer.padding)
    valid = (sum_m > 0).to(x.dtype)
    raw = torch.nn.functional.conv2d(
        x * dense_mask, layer.weight, None, layer.stride, layer.padding
    )
    out = raw * layer.in_channels * k * k / sum_m.clamp(min=1)
    if layer.bias is not None:
        out = out + layer.bias.view(1, -1, 1, 1)
    return out * valid, valid


def reference_unet_forward(model, image, mask):
    """The U-Net written out with dense per-channel masks carried through every skip."""
    x, m = image, mask.expand_as(image)
    skips = [(x, m)]
    for i, (conv, norm) in enumerate(zip(model.enc_convs, model.enc_norms, strict=True)):
        out, valid = dense_partial_conv(conv, x, m)
        x = torch.relu(out if i == 0 else norm(out))
        m = valid[:, :1].expand_as(x)
        skips.append((x, m))
    skips.pop()
    last = len(model.dec_convs) - 1
    for j, (conv, norm) in enumerate(zip(model.dec_convs, model.dec_norms, strict=True)):
        skip_x, skip_m = skips.pop()
        up_x = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
        up_m = m.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
        out, valid = dense_partial_conv(
            conv, torch.cat([up_x, skip_x], 1), torch.cat([up_m, skip_m], 1)
        )
        if j == last:
            return out
        x = torch.nn.functional.leaky_relu(norm(out), 0.2)
        m = valid[:, :1].expand_as(x)
    raise AssertionError("unreachable")


def test_matches_dense_mask_reference_network(device):
    """The network on ``device`` against the dense-mask reference on the CPU (float64)."""
    model = tiny(depth=3, base=4, max_channels=8).double()
    model.train()
    model(torch.rand(4, 3, 16, 16, dtype=torch.float64), holey_mask(4, 16, 16).double())
    model.eval()  # use the (now non-trivial) running statistics
    image = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    mask = (torch.rand(2, 1, 16, 16) > 0.4).double() * holey_mask(2, 16, 16).double()
    with torch.no_grad():
        got = copy.deepcopy(model).to(device)(image.to(device), mask.to(device)).cpu()
        torch.testing.assert_close(
            got, reference_unet_forward(model, image, mask), atol=1e-9, rtol=1e-9
        )
