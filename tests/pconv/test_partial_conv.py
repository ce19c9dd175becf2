"""PartialConv2d against a direct per-window evaluation of eq. (1)-(2) of Liu et al. 2018.

Tests taking ``device`` run on the CPU and, when present, on CUDA (float64 on the device,
compared with the float64 reference computed on the CPU).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aerial_inpainting.pconv.partial_conv import PartialConv2d

TOL = 1e-6


@pytest.fixture
def single_thread():
    """Gradcheck runs hundreds of tiny ops: one thread avoids OpenMP stalls on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def reference_partial_conv(x, mask, weight, bias, stride, padding):
    """Eq. (1)-(2) window by window in numpy; ``mask`` is dense (N, C_in, H, W), zero padding."""
    x, mask, weight = (np.asarray(t.detach(), dtype=np.float64) for t in (x, mask, weight))
    n, c_in, h, w = x.shape
    c_out, _, k, _ = weight.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    mp = np.pad(mask, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    h_out = (h + 2 * padding - k) // stride + 1
    w_out = (w + 2 * padding - k) // stride + 1
    out = np.zeros((n, c_out, h_out, w_out))
    new_mask = np.zeros((n, 1, h_out, w_out))
    sum_one = c_in * k * k
    for b in range(n):
        for i in range(h_out):
            for j in range(w_out):
                xs = xp[b, :, i * stride : i * stride + k, j * stride : j * stride + k]
                ms = mp[b, :, i * stride : i * stride + k, j * stride : j * stride + k]
                sum_m = ms.sum()
                if sum_m > 0:
                    new_mask[b, 0, i, j] = 1.0
                    for o in range(c_out):
                        value = (weight[o] * xs * ms).sum() * sum_one / sum_m
                        out[b, o, i, j] = value + (0.0 if bias is None else float(bias[o].detach()))
    return torch.from_numpy(out), torch.from_numpy(new_mask)


def holey_mask(n, h, w, channels=1):
    """Random binary mask with large rectangular holes plus scattered hole pixels."""
    mask = (torch.rand(n, channels, h, w) > 0.3).double()
    for b in range(n):
        for size in (2 * h // 3, None):  # one big hole (holds a 7x7 window at h=12), one random
            hh, ww = (size, size) if size else torch.randint(h // 3, h // 2 + 2, (2,)).tolist()
            top = int(torch.randint(0, h - hh + 1, ()))
            left = int(torch.randint(0, w - ww + 1, ()))
            mask[b, :, top : top + hh, left : left + ww] = 0.0
    return mask


def make_layer(c_in, c_out, k, stride, bias=True):
    layer = PartialConv2d(c_in, c_out, k, stride=stride, bias=bias).double()
    with torch.no_grad():
        layer.weight.normal_()
        if layer.bias is not None:
            layer.bias.normal_()
    return layer


@pytest.mark.parametrize(("k", "stride"), [(3, 1), (3, 2), (5, 2), (7, 2)])
def test_matches_per_window_reference(k, stride, device):
    layer = make_layer(3, 4, k, stride)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    mask = holey_mask(2, 12, 12)
    out, new_mask = (t.cpu() for t in layer.to(device)(x.to(device), mask.to(device)))
    layer.cpu()
    ref_out, ref_mask = reference_partial_conv(
        x, mask.expand(-1, 3, -1, -1), layer.weight, layer.bias, stride, k // 2
    )
    assert out.shape == ref_out.shape
    assert (ref_mask == 0).any(), "test mask should produce windows with no valid pixel"
    torch.testing.assert_close(out, ref_out, atol=TOL, rtol=TOL)
    torch.testing.assert_close(new_mask, ref_mask, atol=0, rtol=0)


def test_dense_per_channel_mask_matches_reference():
    layer = make_layer(3, 2, 3, 1)
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    mask = holey_mask(2, 9, 9, channels=3)  # differs between channels
    out, new_mask = layer(x, mask)
    ref_out, ref_mask = reference_partial_conv(x, mask, layer.weight, layer.bias, 1, 1)
    torch.testing.assert_close(out, ref_out, atol=TOL, rtol=TOL)
    torch.testing.assert_close(new_mask, ref_mask, atol=0, rtol=0)


def dense_public_partial_conv(layer, x, dense_mask):
    """The public approach: C_out x C_in x k x k convolution of a C_in-channel mask."""
    k = layer.kernel_size[0]
    ones = torch.ones(layer.out_channels, layer.in_channels, k, k, dtype=x.dtype)
    sum_m = F.conv2d(dense_mask, ones, None, layer.stride, layer.padding)
    valid = (sum_m > 0).to(x.dtype)
    raw = F.conv2d(x * dense_mask, layer.weight, None, layer.stride, layer.padding)
    ratio = layer.in_channels * k * k / sum_m.clamp(min=1)
    out = (raw * ratio + layer.bias.view(1, -1, 1, 1)) * valid
    return out, valid[:, :1]


@pytest.mark.parametrize("stride", [1, 2])
def test_two_sources_single_channel_masks_equal_dense_mask(stride):
    c1, c2 = 5, 2
    layer = make_layer(c1 + c2, 3, 3, stride)
    x = torch.randn(2, c1 + c2, 10, 10, dtype=torch.float64)
    m1, m2 = holey_mask(2, 10, 10), holey_mask(2, 10, 10)
    out, new_mask = layer(x, torch.cat([m1, m2], dim=1), source_channels=(c1, c2))
    dense = torch.cat([m1.expand(-1, c1, -1, -1), m2.expand(-1, c2, -1, -1)], dim=1)
    dense_out, dense_mask = dense_public_partial_conv(layer, x, dense)
    torch.testing.assert_close(out, dense_out, atol=TOL, rtol=TOL)
    torch.testing.assert_close(new_mask, dense_mask, atol=0, rtol=0)
    # also the dense input path of the layer itself and the per-window reference
    out_dense_path, _ = layer(x, dense)
    torch.testing.assert_close(out_dense_path, dense_out, atol=TOL, rtol=TOL)
    ref_out, _ = reference_partial_conv(x, dense, layer.weight, layer.bias, stride, 1)
    torch.testing.assert_close(out, ref_out, atol=TOL, rtol=TOL)


def test_single_channel_mask_equals_dense_expanded_mask():
    layer = make_layer(6, 4, 5, 2)
    x = torch.randn(3, 6, 16, 16, dtype=torch.float64)
    mask = holey_mask(3, 16, 16)
    out, new_mask = layer(x, mask)
    dense_out, dense_mask = dense_public_partial_conv(layer, x, mask.expand(-1, 6, -1, -1))
    torch.testing.assert_close(out, dense_out, atol=TOL, rtol=TOL)
    torch.testing.assert_close(new_mask, dense_mask, atol=0, rtol=0)


def test_equals_conv2d_where_window_fully_valid():
    layer = make_layer(3, 5, 3, 1)
    conv = torch.nn.Conv2d(3, 5, 3, padding=1).double()
    with torch.no_grad():
        conv.weight.copy_(layer.weight)
        conv.bias.copy_(layer.bias)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    mask = torch.ones(2, 1, 12, 12, dtype=torch.float64)
    mask[:, :, 4:7, 5:9] = 0.0
    out, _ = layer(x, mask)
    expected = conv(x)
    full = np.zeros((12, 12), dtype=bool)  # windows inside the image and clear of the hole
    for i in range(1, 11):
        for j in range(1, 11):
            full[i, j] = bool(mask[0, 0, i - 1 : i + 2, j - 1 : j + 2].min() == 1)
    assert full.sum() > 40
    sel = torch.from_numpy(full)
    torch.testing.assert_close(out[..., sel], expected[..., sel], atol=TOL, rtol=TOL)


def test_output_independent_of_hole_values():
    layer = make_layer(4, 3, 3, 2)
    x = torch.randn(2, 4, 12, 12, dtype=torch.float64)
    mask = holey_mask(2, 12, 12)
    noisy = x + (1 - mask) * 1e3 * torch.randn_like(x)
    out_a, mask_a = layer(x, mask)
    out_b, mask_b = layer(noisy, mask)
    torch.testing.assert_close(out_a, out_b, atol=TOL, rtol=TOL)
    assert torch.equal(mask_a, mask_b)


def test_holes_give_exact_zero_including_bias():
    layer = make_layer(2, 3, 3, 1)
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    mask = torch.ones(1, 1, 8, 8, dtype=torch.float64)
    mask[:, :, 2:7, 2:7] = 0.0  # 5x5 hole: the 3x3 windows at its centre see nothing
    out, new_mask = layer(x, mask)
    assert torch.all(out[0, :, 3:6, 3:6] == 0)
    assert torch.all(new_mask[0, 0, 3:6, 3:6] == 0)
    assert new_mask.sum() == 64 - 9


def test_bias_added_once_not_scaled_by_ratio_hand_example():
    """All-ones 3x3 weight, bias 0.5, two valid pixels a (top-left) and b (bottom-right)."""
    layer = PartialConv2d(1, 1, 3, stride=1, bias=True).double()
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.bias.fill_(0.5)
    a, b = 2.0, -3.0
    x = torch.full((1, 1, 3, 3), 7.0, dtype=torch.float64)  # hole values are irrelevant
    x[0, 0, 0, 0], x[0, 0, 2, 2] = a, b
    mask = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    mask[0, 0, 0, 0] = mask[0, 0, 2, 2] = 1.0
    out, new_mask = layer(x, mask)
    # sum(1) = 9: one valid pixel -> 9 * value + 0.5; both -> 9 * (a + b) / 2 + 0.5; none -> 0.
    pa, pb, both = 9 * a + 0.5, 9 * b + 0.5, 9 * (a + b) / 2 + 0.5
    expected = torch.tensor(
        [[pa, pa, 0.0], [pa, both, pb], [0.0, pb, pb]], dtype=torch.float64
    ).view(1, 1, 3, 3)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(
        new_mask,
        torch.tensor([[1.0, 1, 0], [1, 1, 1], [0, 1, 1]], dtype=torch.float64).view(1, 1, 3, 3),
    )


def test_gradcheck(single_thread):
    layer = make_layer(3, 2, 3, 2)
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    mask = holey_mask(1, 6, 6)

    def fn(inp, weight, bias):
        params = {"weight": weight, "bias": bias}
        return torch.func.functional_call(layer, params, (inp, mask))[0]

    weight = layer.weight.detach().clone().requires_grad_(True)
    bias = layer.bias.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (x, weight, bias), eps=1e-6, atol=1e-6)


def test_gradcheck_two_sources(single_thread):
    layer = make_layer(3, 2, 3, 1)
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    masks = torch.cat([holey_mask(1, 5, 5), holey_mask(1, 5, 5)], dim=1)
    assert torch.autograd.gradcheck(lambda t: layer(t, masks, (2, 1))[0], (x,), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_finite_outputs_and_gradients(dtype, device):
    layer = PartialConv2d(64, 32, 7, stride=2)  # sum(1) = 3136, above float16's exact integers
    x = torch.rand(2, 64, 32, 32)
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, :4, :4] = 1.0  # almost everything is hole
    mask[1, :, 20, 20] = 1.0  # a single valid pixel: ratio = 3136 / 64
    # float64 reference on the CPU, before the layer moves
    ref, _ = layer.double()(x.double(), mask.double())
    layer.float().to(device)
    x, mask = x.to(device).requires_grad_(True), mask.to(device)
    with torch.autocast(device_type=device, dtype=dtype):
        out, new_mask = layer(x, mask)
        loss = out.float().square().mean()
    loss.backward()
    assert out.dtype == dtype
    assert torch.isfinite(out).all() and torch.isfinite(new_mask).all()
    assert (new_mask == 0).float().mean() > 0.9
    assert torch.all(out.float() * (1 - new_mask) == 0)
    for grad in (x.grad, layer.weight.grad, layer.bias.grad):
        assert grad is not None and torch.isfinite(grad).all()
    # and close to the float64 result where valid
    torch.testing.assert_close(out.float().cpu().double(), ref, atol=0.05, rtol=0.05)


def test_bad_source_channels_rejected():
    layer = PartialConv2d(4, 2, 3)
    with pytest.raises(ValueError, match="source_channels"):
        layer(torch.rand(1, 4, 8, 8), torch.ones(1, 2, 8, 8), (3, 2))
    with pytest.raises(ValueError, match="mask has 3 channels"):
        layer(torch.rand(1, 4, 8, 8), torch.ones(1, 3, 8, 8))


def test_ratio_and_new_mask_are_constants():
    layer = make_layer(2, 2, 3, 1)
    mask = holey_mask(1, 6, 6).requires_grad_(True)
    out, new_mask = layer(torch.randn(1, 2, 6, 6, dtype=torch.float64), mask)
    assert not new_mask.requires_grad
    out.sum().backward()
    # the only path from the mask to the output is X ⊙ M; the ratio is a constant
    assert mask.grad is not None
    ratio, _ = layer.mask_update(mask.detach())
    assert not ratio.requires_grad


def _upsample_concat_numpy(low, low_mask, skip, skip_mask):
    """numpy: nearest x2 upsampling by np.repeat, then concatenation; masks made dense."""
    low, low_mask, skip, skip_mask = (
        np.asarray(t.detach(), dtype=np.float64) for t in (low, low_mask, skip, skip_mask)
    )
    up = low.repeat(2, axis=2).repeat(2, axis=3)
    up_mask = low_mask.repeat(2, axis=2).repeat(2, axis=3)
    x = np.concatenate([up, skip], axis=1)
    dense = np.concatenate(
        [np.repeat(up_mask, low.shape[1], axis=1), np.repeat(skip_mask, skip.shape[1], axis=1)],
        axis=1,
    )
    return torch.from_numpy(x), torch.from_numpy(dense)


def _decoder_inputs(seed, dtype=torch.float64, ca=4, cb=3, h=5, w=6):
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(2, ca, h, w, generator=g, dtype=dtype)
    skip = torch.randn(2, cb, 2 * h, 2 * w, generator=g, dtype=dtype)
    low_mask = (torch.rand(2, 1, h, w, generator=g) > 0.5).to(dtype)
    low_mask[0, :, :3, :3] = 0  # a hole wider than the window: exact zeros must appear
    skip_mask = (torch.rand(2, 1, 2 * h, 2 * w, generator=g) > 0.5).to(dtype)
    skip_mask[0, :, :6, :6] = 0
    return low, low_mask, skip, skip_mask


def test_forward_upsampled_matches_per_window_reference(device):
    layer = make_layer(7, 5, 3, 1)
    low, low_mask, skip, skip_mask = _decoder_inputs(3)
    inputs = (t.to(device) for t in (low, low_mask, skip, skip_mask))
    out, new_mask = (t.cpu() for t in layer.to(device).forward_upsampled(*inputs))
    layer.cpu()
    x, dense = _upsample_concat_numpy(low, low_mask, skip, skip_mask)
    ref_out, ref_mask = reference_partial_conv(x, dense, layer.weight, layer.bias, 1, 1)
    assert (ref_mask == 0).any(), "test masks should produce windows with no valid pixel"
    torch.testing.assert_close(out, ref_out, atol=TOL, rtol=TOL)
    torch.testing.assert_close(new_mask, ref_mask, atol=0, rtol=0)


def test_forward_upsampled_channels_last_matches_nchw():
    layer = PartialConv2d(7, 5, 3)
    low, low_mask, skip, skip_mask = _decoder_inputs(4, dtype=torch.float32)
    want, _ = layer.forward_upsampled(low, low_mask, skip, skip_mask)
    cl = torch.channels_last
    got, _ = layer.to(memory_format=cl).forward_upsampled(
        low.contiguous(memory_format=cl), low_mask, skip.contiguous(memory_format=cl), skip_mask
    )
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_forward_upsampled_gradients_match_the_plain_layer(single_thread, device):
    """Gradients of the sub-pixel path on ``device`` against the plain layer on the CPU (float64)."""
    layer = make_layer(7, 5, 3, 1)
    low, low_mask, skip, skip_mask = _decoder_inputs(5)
    weights = torch.randn(2, 5, 10, 12, dtype=torch.float64)
    dev_layer = copy.deepcopy(layer).to(device)
    dev_low, dev_skip = (t.to(device).requires_grad_(True) for t in (low, skip))
    out, _ = dev_layer.forward_upsampled(
        dev_low, low_mask.to(device), dev_skip, skip_mask.to(device)
    )
    got = torch.autograd.grad(
        (out * weights.to(device)).sum(), (dev_low, dev_skip, dev_layer.weight, dev_layer.bias)
    )
    got = [g.cpu() for g in got]
    low.requires_grad_(True)
    skip.requires_grad_(True)
    up, up_mask = (F.interpolate(t, scale_factor=2, mode="nearest") for t in (low, low_mask))
    plain, _ = layer(torch.cat([up, skip], 1), torch.cat([up_mask, skip_mask], 1), (4, 3))
    want = torch.autograd.grad((plain * weights).sum(), (low, skip, layer.weight, layer.bias))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_forward_upsampled_rejects_other_shapes():
    with pytest.raises(ValueError, match="kernel 3, stride 1"):
        PartialConv2d(7, 5, 3, stride=2).forward_upsampled(*_decoder_inputs(6))
    with pytest.raises(ValueError, match="7 channels"):
        PartialConv2d(7, 5, 3).double().forward_upsampled(*_decoder_inputs(6, ca=2))
