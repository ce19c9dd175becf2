"""VGG-16 feature extractor: slices, normalisation, frozen, and every weights/fallback path offline."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from aerial_inpainting.pconv import vgg as vgg_module
from aerial_inpainting.pconv.vgg import VGG16FeatureExtractor, build_vgg16_features


def features_state(extractor: VGG16FeatureExtractor) -> dict[str, torch.Tensor]:
    """The extractor's conv weights under torchvision's ``features.<index>`` names."""
    state = {}
    offset = 0
    for block, (start, _) in zip(extractor.blocks, [(0, 5), (5, 10), (10, 17)], strict=True):
        for key, value in block.state_dict().items():
            index, name = key.split(".", 1)
            state[f"features.{start + int(index)}.{name}"] = value.clone()
        offset = start
    assert offset == 10
    return state


def test_random_weights_shapes_frozen_eval_and_reproducible():
    extractor, info = build_vgg16_features(weights="random")
    assert info == {"vgg_weights": "random-init"}
    feats = extractor(torch.rand(2, 3, 32, 32))
    assert [tuple(f.shape) for f in feats] == [(2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4)]
    assert all(not p.requires_grad for p in extractor.parameters())
    extractor.train()
    assert not extractor.training and all(not m.training for m in extractor.modules())
    again, _ = build_vgg16_features(weights="random")
    for a, b in zip(extractor.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)


def test_matches_torchvision_vgg16_slices_with_imagenet_normalisation():
    from torchvision.models.vgg import cfgs, make_layers  # what vgg16() builds its features with

    extractor, _ = build_vgg16_features(weights="random")
    reference = make_layers(cfgs["D"]).double().eval()
    missing, _ = reference.load_state_dict(
        {k.removeprefix("features."): v.double() for k, v in features_state(extractor).items()},
        strict=False,
    )
    assert all(int(k.split(".")[0]) >= 17 for k in missing)
    images = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
    x = (images - mean) / std
    expected = []
    for start, stop in [(0, 5), (5, 10), (10, 17)]:
        x = reference[start:stop](x)
        expected.append(x)
    feats = extractor.double()(images)
    for got, want in zip(feats, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("pool_layers", [1, 2])
def test_fewer_pool_layers_are_the_first_torchvision_slices_only(pool_layers):
    """pool_layers=n: pool1..pool<n> of torchvision's network and no deeper block."""
    from torchvision.models.vgg import cfgs, make_layers

    full, _ = build_vgg16_features(weights="random")
    extractor, _ = build_vgg16_features(weights="random", pool_layers=pool_layers)
    reference = make_layers(cfgs["D"]).double().eval()
    reference.load_state_dict(
        {k.removeprefix("features."): v.double() for k, v in features_state(full).items()},
        strict=False,
    )
    images = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
    x = (images - mean) / std
    stops = [5, 10, 17][:pool_layers]
    expected = [reference[:stop](x) for stop in stops]
    feats = extractor.double()(images)
    assert len(feats) == pool_layers
    for got, want in zip(feats, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)
    # Only the convolutions up to pool<n> are kept (and run): 2 per block for pool1/pool2.
    convs = [m for m in extractor.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2 * pool_layers


@pytest.mark.parametrize("pool_layers", [0, 4, True, "pool1", 1.5])
def test_pool_layers_outside_one_to_three_are_refused(pool_layers):
    with pytest.raises(ValueError, match="pool_layers must be 1, 2 or 3"):
        build_vgg16_features(weights="random", pool_layers=pool_layers)


def test_none_disables():
    extractor, info = build_vgg16_features(weights="none")
    assert extractor is None and info == {"vgg_weights": "disabled"}


def test_weights_file_is_loaded(tmp_path):
    source, _ = build_vgg16_features(weights="random")
    state = {k: v + 0.5 for k, v in features_state(source).items()}  # distinct from random init
    path = tmp_path / "vgg16_features.pth"
    torch.save(state, path)
    extractor, info = build_vgg16_features(weights=path, offline_fallback="error")
    assert info == {"vgg_weights": f"file:{path}"}
    assert torch.equal(extractor.blocks[2][0].weight, state["features.10.weight"])


def test_imagenet_from_torch_hub_cache_without_network(tmp_path, monkeypatch):
    """A file already in the hub cache is used; nothing is downloaded."""
    source, _ = build_vgg16_features(weights="random")
    state = {k: v * 2 for k, v in features_state(source).items()}
    (tmp_path / "checkpoints").mkdir()
    torch.save(state, tmp_path / "checkpoints" / "vgg16-397923af.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    extractor, info = build_vgg16_features(weights="imagenet", offline_fallback="error")
    assert info["vgg_weights"] == "imagenet"
    assert (
        info["vgg_source"]
        == f"torchvision hub cache {tmp_path / 'checkpoints' / 'vgg16-397923af.pth'}"
    )
    assert torch.equal(extractor.blocks[0][0].weight, state["features.0.weight"])


def _unavailable(monkeypatch):
    def fail():
        raise OSError("no internet")

    monkeypatch.setattr(vgg_module, "_imagenet_features", fail)


def test_offline_fallback_random_warns(monkeypatch, caplog):
    _unavailable(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="aerial_inpainting.pconv.vgg"):
        extractor, info = build_vgg16_features(weights="imagenet", offline_fallback="random")
    assert isinstance(extractor, VGG16FeatureExtractor)
    assert info["vgg_weights"] == "random-init (offline fallback)"
    assert "no internet" in info["vgg_error"]
    assert any("NOT ImageNet-perceptual" in r.getMessage() for r in caplog.records)
    reference, _ = build_vgg16_features(weights="random")
    for a, b in zip(extractor.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b)


def test_offline_fallback_disable_warns(monkeypatch, caplog):
    _unavailable(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="aerial_inpainting.pconv.vgg"):
        extractor, info = build_vgg16_features(weights="imagenet", offline_fallback="disable")
    assert extractor is None
    assert info["vgg_weights"] == "disabled (offline fallback)"
    assert any("DISABLED" in r.getMessage() for r in caplog.records)


def test_offline_fallback_error_explains(monkeypatch, tmp_path):
    _unavailable(monkeypatch)
    with pytest.raises(RuntimeError, match="internet access"):
        build_vgg16_features(weights="imagenet", offline_fallback="error")
    with pytest.raises(RuntimeError, match="does not exist"):
        build_vgg16_features(weights=tmp_path / "missing.pth", offline_fallback="error")
    with pytest.raises(ValueError, match="offline_fallback"):
        build_vgg16_features(weights="random", offline_fallback="maybe")


def test_rejects_weights_file_without_pool3_layers(tmp_path):
    path = tmp_path / "partial.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, path)
    with pytest.raises(RuntimeError, match="lack the pool1-pool3 layers"):
        build_vgg16_features(weights=path, offline_fallback="error")
    assert isinstance(nn.Module(), nn.Module)
