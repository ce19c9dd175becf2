"""The training recipe beyond the paper: SSIM term, cosine schedule, EMA, wall-time budget,
snapshots, masks drawn on the fly and cropped with the image, dihedral augmentation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from aerial_inpainting.pconv.checkpoint import list_checkpoints, load_model
from aerial_inpainting.pconv.data import AugmentConfig, InpaintingTrainDataset, dihedral_transform
from aerial_inpainting.pconv.loss import SSIM_WINDOW, InpaintingLoss, LossWeights
from aerial_inpainting.pconv.train import (
    TrainConfig,
    learning_rate,
    make_ema,
    run_progress,
    train,
)
from aerial_inpainting.pipelines.training.nodes import build_training_data

# ------------------------------------------------------------------ SSIM term


def _ssim_reference(x: np.ndarray, y: np.ndarray, win: int, sigma: float = 1.5) -> float:
    """SSIM (Wang et al. 2004) evaluated directly: Gaussian window, valid positions only,
    C1 = (0.01)^2, C2 = (0.03)^2 for data range 1, mean over channels and positions."""
    g = np.exp(-((np.arange(win) - win // 2) ** 2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    scores = []
    for c in range(x.shape[0]):
        h, wd = x.shape[1] - win + 1, x.shape[2] - win + 1
        for i in range(h):
            for j in range(wd):
                px, py = x[c, i : i + win, j : j + win], y[c, i : i + win, j : j + win]
                mx, my = (w * px).sum(), (w * py).sum()
                vx, vy = (w * px * px).sum() - mx**2, (w * py * py).sum() - my**2
                cov = (w * px * py).sum() - mx * my
                scores.append(
                    ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
                )
    return float(np.mean(scores))


def test_ssim_term_is_one_minus_ssim_of_the_composite():
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(1, 3, 14, 13, generator=gen, dtype=torch.float64)
    output = torch.rand(1, 3, 14, 13, generator=gen, dtype=torch.float64)
    mask = (torch.rand(1, 1, 14, 13, generator=gen) > 0.4).double()
    losses = InpaintingLoss(None, LossWeights(ssim=2.0))(output, target, mask)
    comp = (mask * target + (1 - mask) * output)[0].numpy()
    expected = 1.0 - _ssim_reference(comp, target[0].numpy(), SSIM_WINDOW)
    assert float(losses["ssim"]) == pytest.approx(expected, abs=1e-6)
    w = LossWeights(ssim=2.0)
    by_hand = w.valid * losses["valid"] + w.hole * losses["hole"] + w.tv * losses["tv"]
    assert float(losses["total"]) == pytest.approx(float(by_hand) + 2.0 * float(losses["ssim"]))


def test_ssim_term_is_zero_for_a_perfect_fill_and_off_by_default():
    target = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    mask = torch.ones(2, 1, 16, 16, dtype=torch.float64)
    mask[..., 4:10, 4:10] = 0
    assert float(InpaintingLoss(None, LossWeights(ssim=1.0))(target, target, mask)["ssim"]) == (
        pytest.approx(0.0, abs=1e-12)
    )
    assert float(InpaintingLoss(None)(target * 0, target, mask)["ssim"]) == 0.0  # paper's loss


# ------------------------------------------------------------------ schedule, progress, EMA


def _cfg(**overrides) -> TrainConfig:
    base = {"model": {"depth": 2, "base_channels": 4, "max_channels": 8}, "train_size": 16,
            "steps_stage1": 80, "steps_stage2": 20, "lr_stage1": 2e-4, "lr_stage2": 5e-5}  # fmt: skip
    return TrainConfig.from_params({**base, **overrides})


def test_cosine_schedule_values_by_hand():
    cfg = _cfg(lr_schedule="cosine", warmup_steps=10)
    assert learning_rate(cfg, 0, 0.0, 1) == pytest.approx(2e-4 * 1 / 10)  # warm-up
    assert learning_rate(cfg, 9, 0.09, 1) == pytest.approx(
        2e-4 * 0.5 * (1 + math.cos(0.09 * math.pi))
    )
    assert learning_rate(cfg, 50, 0.5, 1) == pytest.approx(1e-4)  # half-way: half the peak
    assert learning_rate(cfg, 99, 1.0, 2) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(cfg, 60, 0.3, 2) == pytest.approx(5e-5)  # capped in stage 2
    paper = _cfg()
    assert learning_rate(paper, 3, 0.5, 1) == 2e-4 and learning_rate(paper, 90, 0.9, 2) == 5e-5


def test_progress_is_steps_or_wall_time_whichever_is_further():
    assert run_progress(25, 100, 0.0, None) == 0.25
    assert run_progress(25, 100, 30.0, 1.0) == 0.5  # 30 s of a 1-minute budget
    assert run_progress(90, 100, 30.0, 1.0) == 0.9
    assert run_progress(10, 100, 600.0, 1.0) == 1.0


def test_ema_follows_the_exponential_average_formula():
    model = torch.nn.Linear(3, 2)
    ema = make_ema(model, 0.9)
    expected = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for step in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(float(step + 1))
        ema.update_parameters(model)
        for k, v in model.state_dict().items():
            # torch's AveragedModel copies the weights on its first update (n = 0); update n
            # then uses d = min(0.9, (1 + n) / (10 + n)): 2/11 for n = 1, 3/12 for n = 2.
            d = min(0.9, (1 + step) / (10 + step))
            expected[k] = v.clone() if step == 0 else d * expected[k] + (1 - d) * v
    for k, v in ema.module.state_dict().items():
        torch.testing.assert_close(v, expected[k])


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("lr_schedule", "linear", "lr_schedule"),
        ("ema_decay", 1.5, "ema_decay"),
        ("max_minutes", 0, "max_minutes"),
        ("mask_source", "file", "mask_source"),
        ("warmup_steps", -1, "warmup_steps"),
        ("vgg_pool_layers", 4, "vgg_pool_layers"),
        ("vgg_pool_layers", 0, "vgg_pool_layers"),
        ("late_train_size", 18, "late_train_size"),  # not a multiple of 2**depth = 4
        ("late_train_size", 0, "late_train_size"),
        ("late_train_size", True, "late_train_size"),
        ("late_train_size_from", 1.0, "late_train_size_from"),
        ("late_train_size_from", -0.1, "late_train_size_from"),
    ],
)
def test_recipe_keys_are_validated(key, value, match):
    with pytest.raises(ValueError, match=match):
        _cfg(**{key: value})


def test_vgg_pool_layers_is_in_the_fingerprint_only_when_not_the_papers():
    """Checkpoints of runs with the paper's three layers keep their fingerprint (resumable)."""
    assert "vgg_pool_layers" not in _cfg().fingerprint_fields()
    assert _cfg(vgg_pool_layers=1).fingerprint_fields()["vgg_pool_layers"] == 1


def test_crop_curriculum_is_in_the_fingerprint_only_when_set():
    """Checkpoints of runs without a curriculum keep their fingerprint (resumable)."""
    assert "late_train_size" not in _cfg().fingerprint_fields()
    fields = _cfg(late_train_size=32, late_train_size_from=0.5).fingerprint_fields()
    assert (fields["late_train_size"], fields["late_train_size_from"]) == (32, 0.5)


# ------------------------------------------------------------------ data


def test_dihedral_transforms_are_the_eight_flips_and_turns():
    a = np.arange(12).reshape(3, 4)
    expected = [
        a, np.rot90(a, 1), np.rot90(a, 2), np.rot90(a, 3),
        np.fliplr(a), np.fliplr(np.rot90(a, 1)), np.fliplr(np.rot90(a, 2)), np.fliplr(np.rot90(a, 3)),
    ]  # fmt: skip
    got = [dihedral_transform(a, k) for k in range(8)]
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)
    assert len({g.tobytes() + bytes(g.shape) for g in got}) == 8


def _coordinate_image(size: int) -> np.ndarray:
    """uint8 image whose pixel (y, x) stores y in red and x in green."""
    yy, xx = np.mgrid[0:size, 0:size]
    return np.stack([yy, xx, np.zeros_like(yy)], -1).astype(np.uint8)[None]


def _mask_of_coordinates(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Hole where (y + 2x) % 5 == 0: a mask that says which pixels it was drawn for."""
    rng.random()  # draws like a real generator
    yy, xx = np.mgrid[0:height, 0:width]
    return ((yy + 2 * xx) % 5 != 0).astype(np.uint8)


@pytest.mark.parametrize("dihedral", [False, True])
def test_generated_masks_are_cropped_and_turned_with_the_image(dihedral):
    images = _coordinate_image(40)
    dataset = InpaintingTrainDataset(
        images, [0], [], size=16, seed=3, augment=AugmentConfig(dihedral=dihedral),
        mask_generator=_mask_of_coordinates,
    )  # fmt: skip
    seen = set()
    for k in range(12):
        image, mask = dataset[(k, 0)]
        yy = (image[0] * 255).round().long()
        xx = (image[1] * 255).round().long()
        expected = ((yy + 2 * xx) % 5 != 0).float()
        torch.testing.assert_close(mask[0], expected)  # the mask pixel belongs to that image pixel
        seen.add((int(yy[0, 0]), int(xx[0, 0]), int(yy[0, 1] - yy[0, 0]), int(xx[0, 1] - xx[0, 0])))
    assert len(seen) > 3  # several windows (and orientations)


def test_random_mask_hole_ratios_and_determinism():
    from aerial_inpainting.imaging.masks import MaskShapeConfig, random_mask

    config = MaskShapeConfig(kinds=("rectangle", "blob", "arc", "walk"), blob_count=(0, 1))
    ratios = []
    for i in range(24):
        a = random_mask(np.random.default_rng([5, i]), 48, 48, config)
        b = random_mask(np.random.default_rng([5, i]), 48, 48, config)
        np.testing.assert_array_equal(a, b)
        assert a.dtype == np.uint8 and set(np.unique(a)) <= {0, 1}
        ratios.append(1 - a.mean())
    assert min(ratios) > 0.01 and max(ratios) <= 0.6 and max(ratios) > 0.4


# ------------------------------------------------------------------ the loop


def _data(tiny_inputs, cfg, **kwargs):
    return build_training_data(**tiny_inputs, cfg=cfg, **kwargs)


def test_wall_time_budget_ends_the_run_cleanly_with_checkpoint_and_snapshots(
    tiny_inputs, make_params, tmp_path
):
    params = make_params(
        steps_stage1=10_000, steps_stage2=1_000, max_minutes=0.02, lr_schedule="cosine",
        warmup_steps=2, ema_decay=0.9, snapshot_minutes=[0.005], checkpoint_every=10_000,
        snapshot_dir=str(tmp_path / "snaps"), val_every=0,
    )  # fmt: skip
    cfg = TrainConfig.from_params(params)
    result = train(cfg, _data(tiny_inputs, cfg))
    final = result.info["final_step"]
    assert 0 < final < 11_000 and result.info["elapsed_minutes"] >= 0.02
    ckpts = list_checkpoints(Path(cfg.checkpoint_dir) / result.info["fingerprint"])
    assert [s for s, _ in ckpts] == [final]  # a checkpoint at the step the budget ran out
    snaps = sorted((tmp_path / "snaps" / result.info["fingerprint"]).glob("minute_*"))
    assert len(snaps) == 2  # the 0.005-minute point and the end
    last = load_model(snaps[-1])
    for key, value in result.model.state_dict().items():
        assert torch.equal(value, last.state_dict()[key])
    assert float(result.history["lr"].iloc[-1]) < 2e-3 * 0.5  # the cosine reached its tail
    assert (result.history["stage"] == 2).any()  # stage 2 placed by time


def test_ema_run_resumes_to_the_same_weights(tiny_inputs, make_params, tmp_path):
    common = {"lr_schedule": "cosine", "warmup_steps": 2, "ema_decay": 0.8, "mask_source": "generated",
              "augment": {"dihedral": True}, "loss_weights": {"ssim": 0.5}}  # fmt: skip
    shapes = {"kinds": ["blob", "stroke", "rectangle"]}

    def run(directory: str, stop: int | None = None):
        cfg = TrainConfig.from_params(make_params(checkpoint_dir=directory, **common))
        return train(cfg, _data(tiny_inputs, cfg, mask_shapes=shapes), stop_at_step=stop)

    straight = run(str(tmp_path / "a"))
    run(str(tmp_path / "b"), stop=3)
    resumed = run(str(tmp_path / "b"))
    assert resumed.info["resumed_from_step"] == 3
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert straight.history["loss_ssim"].gt(0).all()


# ------------------------------------------------------------------ crop-size curriculum


def _crop_sizes_seen(monkeypatch) -> list[int]:
    """Patch the training step to record the crop size of every batch it gets."""
    import aerial_inpainting.pconv.train as train_module

    seen: list[int] = []
    step = train_module._train_step

    def recording_step(net, criterion, state, rt, images, masks, *rest):
        assert images.shape[-2:] == masks.shape[-2:]
        seen.append(int(images.shape[-1]))
        return step(net, criterion, state, rt, images, masks, *rest)

    monkeypatch.setattr(train_module, "_train_step", recording_step)
    return seen


def test_crop_curriculum_switches_at_its_share_of_the_run(tiny_inputs, make_params, monkeypatch):
    """7 steps, switch at 0.5: progress before step s (0-based) is s/7, >= 0.5 from s = 4."""
    seen = _crop_sizes_seen(monkeypatch)
    cfg = TrainConfig.from_params(make_params(late_train_size=32, late_train_size_from=0.5))
    result = train(cfg, _data(tiny_inputs, cfg))
    assert seen == [16, 16, 16, 16, 32, 32, 32]
    assert result.info["final_step"] == 7


def test_crop_curriculum_resumes_to_the_same_weights(tiny_inputs, make_params, tmp_path):
    """Interrupted before and after the switch, the run ends with the uninterrupted weights."""

    def run(directory: str, stop: int | None = None):
        cfg = TrainConfig.from_params(
            make_params(checkpoint_dir=directory, late_train_size=32, late_train_size_from=0.5)
        )
        return train(cfg, _data(tiny_inputs, cfg), stop_at_step=stop)

    straight = run(str(tmp_path / "a"))
    run(str(tmp_path / "b"), stop=2)  # before the switch
    run(str(tmp_path / "b"), stop=5)  # after it
    resumed = run(str(tmp_path / "b"))
    assert resumed.info["resumed_from_step"] == 5
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_crop_curriculum_larger_than_the_images_fails_before_training(
    tiny_inputs, make_params, monkeypatch
):
    seen = _crop_sizes_seen(monkeypatch)
    cfg = TrainConfig.from_params(make_params(late_train_size=64))  # the images are 32 px
    with pytest.raises(ValueError, match=r"training.late_train_size=64 is larger than the images"):
        train(cfg, _data(tiny_inputs, cfg))
    assert seen == []


# ------------------------------------------------------------------ fine-tuning (init_weights)


def test_init_weights_starts_from_the_file(tiny_inputs, make_params, tmp_path):
    from safetensors.torch import load_file

    from aerial_inpainting.pconv.checkpoint import save_model
    from aerial_inpainting.pconv.unet import PConvUNet, UNetConfig

    torch.manual_seed(123)  # weights unlike the run's own seeded initialisation
    source = PConvUNet(UNetConfig.from_dict({"depth": 2, "base_channels": 4, "max_channels": 16}))
    path = save_model(tmp_path / "start.safetensors", source)
    # lr 0: the optimiser leaves the parameters where they started
    cfg = TrainConfig.from_params(
        make_params(init_weights=str(path), lr_stage1=0.0, lr_stage2=0.0, val_every=0)
    )
    result = train(cfg, _data(tiny_inputs, cfg))
    stored = load_file(str(path))  # the file's tensors, read by safetensors itself
    params = dict(result.model.named_parameters())
    assert params and all(torch.equal(p, stored[name]) for name, p in params.items())


def test_init_weights_with_another_network_shape_names_the_file(tiny_inputs, make_params, tmp_path):
    from aerial_inpainting.pconv.checkpoint import save_model
    from aerial_inpainting.pconv.unet import PConvUNet, UNetConfig

    other = PConvUNet(UNetConfig.from_dict({"depth": 2, "base_channels": 8, "max_channels": 16}))
    path = save_model(tmp_path / "wide.safetensors", other)
    cfg = TrainConfig.from_params(make_params(init_weights=str(path)))
    with pytest.raises(ValueError, match=r"wide\.safetensors"):
        train(cfg, _data(tiny_inputs, cfg))


def test_init_weights_takes_the_latest_version_of_a_catalog_entry(tmp_path):
    from aerial_inpainting.pipelines.training.nodes import resolve_model_file

    entry = tmp_path / "pconv_unet.safetensors"
    for version in ("2026-01-01T00.00.00.000Z", "2026-02-01T00.00.00.000Z"):
        (entry / version).mkdir(parents=True)
        (entry / version / entry.name).write_bytes(b"x")
    assert resolve_model_file(entry) == entry / "2026-02-01T00.00.00.000Z" / entry.name
    with pytest.raises(FileNotFoundError, match=r"missing\.safetensors"):
        resolve_model_file(tmp_path / "missing.safetensors")
