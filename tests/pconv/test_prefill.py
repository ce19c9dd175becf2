"""The pull-push prefilled U-Net (``UNetConfig.prefill="pushpull"``): the zero-start property
(an untrained network returns the pull-push fill exactly), that training moves it, its model
files, and gradient clipping (``training.grad_clip_norm``) against the norm computed directly.

Tests taking ``device`` run on the CPU and, when present, on CUDA.
"""

from __future__ import annotations

import pytest
import torch
from support.training import box_masks, smooth_images

from aerial_inpainting.pconv import train as T
from aerial_inpainting.pconv.checkpoint import load_model, save_model
from aerial_inpainting.pconv.data import InpaintingTrainDataset, validation_batch
from aerial_inpainting.pconv.pushpull import pull_push_fill
from aerial_inpainting.pconv.unet import PConvUNet, UNetConfig


def prefilled(depth: int = 3, **kwargs) -> PConvUNet:
    config = UNetConfig(depth=depth, base_channels=4, max_channels=8, prefill="pushpull", **kwargs)
    return PConvUNet(config)


def holey(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.rand(n, 3, size, size)
    mask = torch.ones(n, 1, size, size)
    mask[:, :, size // 4 : 3 * size // 4, size // 8 :] = 0.0
    return image, mask


def test_an_untrained_network_returns_the_pull_push_fill_exactly(device):
    torch.manual_seed(0)
    model = prefilled().to(device).train()
    image, mask = holey(2, 32)
    image, mask = image.to(device), mask.to(device)
    out, reached = model.forward_with_mask(image * mask, mask)
    assert torch.equal(out, pull_push_fill(image * mask, mask))
    assert torch.equal(reached, torch.ones_like(mask))


def test_the_network_reads_the_prefill_and_the_mask_as_four_channels():
    model = prefilled()
    assert model.enc_convs[0].in_channels == 4
    assert model.dec_convs[-1].in_channels == model.dec_convs[-1].out_channels + 4 + 1
    assert model.dec_convs[-1].out_channels == 3
    assert not model.dec_convs[-1].weight.any() and not model.dec_convs[-1].bias.any()
    paper = PConvUNet(UNetConfig(depth=3, base_channels=4, max_channels=8))
    assert paper.enc_convs[0].in_channels == 3 and paper.dec_convs[-1].weight.any()


def test_one_step_moves_the_output_away_from_the_fill():
    torch.manual_seed(0)
    model = prefilled().train()
    image, mask = holey(4, 32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(2):  # step 1 moves the zero last layer, step 2 the layers before it
        loss = ((model(image * mask, mask) - image).abs() * (1 - mask)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert model.enc_convs[0].weight.grad.abs().sum() > 0
    model.eval()
    assert not torch.allclose(model(image * mask, mask), pull_push_fill(image * mask, mask))


def test_an_image_without_valid_pixels_is_not_reached():
    model = prefilled().eval()
    image = torch.rand(2, 3, 16, 16)
    mask = torch.ones(2, 1, 16, 16)
    mask[1] = 0.0
    _, reached = model.forward_with_mask(image * mask, mask)
    assert reached[0].eq(1).all() and reached[1].eq(0).all()


def test_config_keys_model_files_and_errors(tmp_path):
    paper = UNetConfig(depth=3, base_channels=4, max_channels=8)
    assert "prefill" not in paper.to_dict()  # the paper's files and fingerprints unchanged
    config = UNetConfig(depth=3, base_channels=4, max_channels=8, prefill="pushpull")
    assert config.to_dict()["prefill"] == "pushpull"
    assert UNetConfig.from_dict(config.to_dict()) == config
    model = PConvUNet(config)
    torch.nn.init.normal_(model.dec_convs[-1].weight)  # a trained-looking last layer
    path = save_model(tmp_path / "m.safetensors", model)
    loaded = load_model(path)
    assert loaded.config == config
    image, mask = holey(1, 16)
    model.eval()
    torch.testing.assert_close(loaded(image * mask, mask), model(image * mask, mask))
    with pytest.raises(ValueError, match="prefill must be one of"):
        UNetConfig(prefill="telea")
    with pytest.raises(ValueError, match="in_channels"):
        UNetConfig(out_channels=1, prefill="pushpull")


def _data() -> T.TrainingData:
    images = smooth_images(10, 32, seed=0)
    masks = box_masks(4, 32, seed=1)
    dataset = InpaintingTrainDataset(images, range(8), list(masks.values()), size=16, seed=5)
    vi, vm = validation_batch(images, [8, 9], masks, ["mask_000", "mask_001"], multiple=4)
    return T.TrainingData(dataset, vi, vm, {"n": 8})


def test_a_prefilled_run_trains_and_resumes_like_any_other(make_params, tmp_path):
    model = {"depth": 2, "base_channels": 4, "max_channels": 16, "prefill": "pushpull"}
    straight = T.train(T.TrainConfig.from_params(make_params(model=model)), _data())
    params = make_params(model=model, checkpoint_dir=str(tmp_path / "b"))
    T.train(T.TrainConfig.from_params(params), _data(), stop_at_step=3)
    resumed = T.train(T.TrainConfig.from_params(params), _data())
    assert resumed.info["resumed_from_step"] == 3
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert straight.model.config.prefill == "pushpull"


def _gradient_norm_after_one_step(cfg: T.TrainConfig, clip: float | None) -> torch.Tensor:
    """The global L2 norm of the gradients ``_train_step`` leaves behind, computed directly."""
    torch.manual_seed(0)
    model = PConvUNet(cfg.model)
    rt = T.Runtime(torch.device("cpu"), "fp32", False)
    state = T.TrainState(model, T.make_optimizer(model, 1e-3), torch.amp.GradScaler(enabled=False))
    image, mask = holey(2, 16)
    T._train_step(
        model, T.InpaintingLoss(None, cfg.loss_weights), state, rt, image, mask, 1e-3, clip
    )
    return torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]))


def test_gradients_are_clipped_to_the_configured_norm(make_params):
    cfg = T.TrainConfig.from_params(make_params(grad_clip_norm=1e-3))
    assert _gradient_norm_after_one_step(cfg, None) > 1e-2  # so the clip below binds
    assert _gradient_norm_after_one_step(cfg, cfg.grad_clip_norm) <= 1e-3 * (1 + 1e-4)


def test_grad_clip_norm_is_validated_and_fingerprinted_only_when_set(make_params):
    for bad in (0, -1.0, True, "1"):
        with pytest.raises(ValueError, match=r"training\.grad_clip_norm"):
            T.TrainConfig.from_params(make_params(grad_clip_norm=bad))
    off = T.TrainConfig.from_params(make_params(grad_clip_norm=None)).fingerprint_fields()
    on = T.TrainConfig.from_params(make_params(grad_clip_norm=1.0)).fingerprint_fields()
    assert "grad_clip_norm" not in off and on["grad_clip_norm"] == 1.0
