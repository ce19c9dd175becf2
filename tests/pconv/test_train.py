"""The training loop: exact resume (incl. the stage boundary), stage 2 semantics, config checks."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from support.training import box_masks, smooth_images, steps_take

from aerial_inpainting.pconv import train as T
from aerial_inpainting.pconv.checkpoint import list_checkpoints
from aerial_inpainting.pconv.data import InpaintingTrainDataset, validation_batch
from aerial_inpainting.pconv.devices import resolve_device, resolve_num_workers, resolve_precision
from aerial_inpainting.pconv.validation import mean_fill
from aerial_inpainting.tracking import GridWriter, grid_header_height


def _data(seed: int = 0) -> T.TrainingData:
    """New objects every call, as a fresh process would build them."""
    images = smooth_images(10, 32, seed=seed)
    masks = box_masks(4, 32, seed=1)
    dataset = InpaintingTrainDataset(images, range(8), list(masks.values()), size=16, seed=5)
    vi, vm = validation_batch(images, [8, 9], masks, ["mask_000", "mask_001"], multiple=4)
    return T.TrainingData(dataset, vi, vm, {"n": 8})


def _scramble_global_rng() -> None:
    """A fresh process would not share our RNG state: make sure nothing relies on it."""
    random.seed(12345)
    np.random.seed(12345)
    torch.manual_seed(12345)


def _run(params: dict, stop: int | None = None) -> T.TrainResult:
    _scramble_global_rng()
    return T.train(T.TrainConfig.from_params(params), _data(), stop_at_step=stop)


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), f"{key} differs"


def test_resumed_run_matches_uninterrupted_run_across_the_stage_boundary(make_params, tmp_path):
    # steps_stage1=4: interrupted after steps 2 and 5, i.e. once in each stage, VGG on (random).
    common = {"vgg_weights": "random", "steps_stage1": 4, "steps_stage2": 3, "checkpoint_every": 1}
    straight = _run(make_params(checkpoint_dir=str(tmp_path / "a"), **common))
    resumed_dir = str(tmp_path / "b")
    first = _run(make_params(checkpoint_dir=resumed_dir, **common), stop=2)
    assert first.info["final_step"] == 2
    second = _run(make_params(checkpoint_dir=resumed_dir, **common), stop=5)
    assert second.info["resumed_from_step"] == 2
    final = _run(make_params(checkpoint_dir=resumed_dir, **common))
    assert final.info["resumed_from_step"] == 5 and final.info["final_step"] == 7
    _assert_same_weights(straight.model, final.model)
    changed = [
        k
        for k, v in first.model.state_dict().items()
        if not torch.equal(v, final.model.state_dict()[k])
    ]
    assert changed  # steps 3-7 did move the weights
    cols = [c for c in straight.history.columns if c != "images_per_s"]
    pd.testing.assert_frame_equal(straight.history[cols], final.history[cols])


PRECISIONS = ("fp32", "bf16", "fp16")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_steps_checkpoint_and_resume_on_device(
    precision, device, make_params, tmp_path, monkeypatch
):
    """A few steps on ``device`` under each precision (fp16 with its GradScaler), killed after
    step 2, resumed across the stage boundary: the same weights as an uninterrupted run on that
    device (bit for bit on the CPU; on CUDA with deterministic cuDNN, to float tolerance)."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    common = {"device": device, "precision": precision, "vgg_weights": "random"}
    straight = _run(make_params(checkpoint_dir=str(tmp_path / "a"), **common))
    params = make_params(checkpoint_dir=str(tmp_path / "b"), **common)
    first = _run(params, stop=2)
    assert first.info["device"].startswith(device) and first.info["precision"] == precision
    assert first.info["channels_last"] == (device == "cuda")  # auto: on for CUDA only
    (ckpt_dir,) = (tmp_path / "b").iterdir()
    *_, (_, path) = list_checkpoints(ckpt_dir)
    state = torch.load(path, map_location="cpu", weights_only=False)
    assert int(state["step"]) == 2
    assert (state["scaler"] is not None) == (precision == "fp16"), "GradScaler state"
    final = _run(params)
    assert final.info["resumed_from_step"] == 2 and final.info["final_step"] == 7
    assert next(final.model.parameters()).device.type == device
    losses = final.history.filter(like="loss_").to_numpy(dtype=float)
    assert np.isfinite(losses[~np.isnan(losses)]).all()
    a, b = straight.model.state_dict(), final.model.state_dict()
    for key in a:
        if device == "cpu":
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    assert any(
        not torch.equal(v, first.model.state_dict()[k].to(v.device)) for k, v in b.items()
    ), "steps 3-7 did not move the weights"


def test_resume_from_a_sparse_checkpoint_redoes_the_lost_steps(make_params, tmp_path):
    params = make_params(checkpoint_every=3, steps_stage1=3, steps_stage2=3)
    straight = _run({**params, "checkpoint_dir": str(tmp_path / "a")})
    _run(params, stop=5)  # "killed" after step 5: the last checkpoint is step 3
    ckpt_dir = tmp_path / "checkpoints"
    assert [s for s, _ in list_checkpoints(next(ckpt_dir.iterdir()))] == [3]
    final = _run(params)
    assert final.info["resumed_from_step"] == 3
    _assert_same_weights(straight.model, final.model)


def test_finished_run_is_not_retrained_and_resume_false_restarts(make_params):
    done = _run(make_params())
    again = _run(make_params())
    assert again.info["resumed_from_step"] == 7
    _assert_same_weights(done.model, again.model)
    fresh = _run(make_params(resume=False))
    assert fresh.info["resumed_from_step"] is None
    _assert_same_weights(done.model, fresh.model)  # seeded: from scratch gives the same run


def test_changed_config_starts_fresh_with_a_warning(make_params, caplog):
    _run(make_params())
    with caplog.at_level(logging.WARNING, logger="aerial_inpainting.pconv.train"):
        other = _run(make_params(lr_stage1=1e-3))
    assert other.info["resumed_from_step"] is None
    assert "No checkpoint for this training config" in caplog.text
    # longer fine-tuning is the same experiment continued, not a new one
    longer = _run(make_params(steps_stage2=5))
    assert longer.info["resumed_from_step"] == 7 and longer.info["final_step"] == 9


def test_stage_two_freezes_encoder_batchnorm_and_lowers_lr(make_params):
    params = make_params(steps_stage1=3, steps_stage2=3, lr_stage1=1e-2, lr_stage2=1e-4)
    stage1 = _run(params, stop=3)
    final = _run(params)
    s1, s2 = stage1.model.state_dict(), final.model.state_dict()
    enc_bn = [
        k
        for k in s1
        if k.startswith("enc_norms.") and ("running_" in k or "weight" in k or "bias" in k)
    ]
    dec_bn = [k for k in s1 if k.startswith("dec_norms.") and "running_mean" in k]
    assert enc_bn and dec_bn
    for key in enc_bn:  # encoder BN: neither statistics nor affine parameters move in stage 2
        assert torch.equal(s1[key], s2[key]), key
    assert any(not torch.equal(s1[k], s2[k]) for k in dec_bn)  # decoder BN keeps learning
    hist = final.history.dropna(subset=["lr"])
    assert set(hist.loc[hist.step <= 3, "lr"]) == {1e-2}
    assert set(hist.loc[hist.step > 3, "lr"]) == {1e-4}
    assert set(hist.loc[hist.step > 3, "stage"]) == {2}


def test_history_validation_and_grids(make_params, tmp_path):
    params = make_params(log_every=2, val_every=3)
    _scramble_global_rng()
    result = T.train(
        T.TrainConfig.from_params(params), _data(), callbacks=[GridWriter(tmp_path / "grids")]
    )
    hist = result.history
    assert hist.step.tolist() == [
        2,
        3,
        4,
        6,
        7,
    ]  # log steps 2, 4, 6, 7 (end); validation at 3, 6, 7
    assert {"loss_total", "loss_hole", "loss_valid", "loss_tv", "images_per_s"} <= set(hist.columns)
    val = hist.dropna(subset=["val_psnr"])
    assert val.step.tolist() == [3, 6, 7]
    assert (val.val_ssim <= 1).all() and (val.val_psnr > 0).all()
    grids = sorted((tmp_path / "grids").glob("*.png"))
    assert [g.name for g in grids][-1] == "val_grid_step000000007.png" and len(grids) == 3
    from PIL import Image

    grid = np.asarray(Image.open(grids[-1]))
    # the column titles, then 2 rows of 5 tiles of 32 px, separated by 2 px
    assert grid.shape == (grid_header_height(32) + 2 * 32 + 2, 5 * 32 + 4 * 2, 3)


def test_mean_fill_fills_holes_with_valid_mean():
    image = torch.tensor([[[[0.2, 0.4], [0.6, 1.0]]]]).repeat(1, 3, 1, 1)
    mask = torch.tensor([[[[1.0, 1.0], [1.0, 0.0]]]])
    filled = mean_fill(image, mask)
    assert torch.allclose(filled[0, :, 1, 1], torch.full((3,), 0.4))
    assert torch.equal(filled[0, :, 0, 0], image[0, :, 0, 0])


def test_config_errors_name_the_parameter(make_params):
    with pytest.raises(ValueError, match=r"unknown key\(s\) under `training:` \['stepz'\]"):
        T.TrainConfig.from_params({**make_params(), "stepz": 3})
    with pytest.raises(ValueError, match="train_size=18 must be a multiple of 2\\*\\*depth=4"):
        T.TrainConfig.from_params(make_params(train_size=18))
    with pytest.raises(ValueError, match=r"training\.loss_weights"):
        T.TrainConfig.from_params(make_params(loss_weights={"holes": 1}))
    with pytest.raises(ValueError, match=r"training\.precision"):
        T.TrainConfig.from_params(make_params(precision="fp8"))


def _cpuinfo_flags() -> set[str] | None:
    """The CPU feature flags Linux reports (an independent reading: the kernel's, not
    PyTorch's detection); None where there is no /proc/cpuinfo or it lists no flags."""
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None


def test_auto_precision_on_the_cpu_follows_its_bf16_instructions(monkeypatch):
    from aerial_inpainting.pconv import devices

    flags = _cpuinfo_flags()
    if flags is not None:  # x86 Linux: PyTorch's detection agrees with the kernel's flags
        assert devices.cpu_has_fast_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: True)
    assert resolve_precision("auto", torch.device("cpu")) == "bf16"
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: False)
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"  # forcing wins


def test_validation_computes_in_float32_whatever_the_training_precision(make_params, monkeypatch):
    """A bf16 run validates in float32: its figures compare with an fp32 run's and with the
    evaluate pipeline's (which never autocasts)."""
    seen = []

    def recording_validate(model, images, masks, autocast_dtype, device):
        seen.append(autocast_dtype)
        return real_validate(model, images, masks, autocast_dtype, device)

    real_validate = T.validate
    monkeypatch.setattr(T, "validate", recording_validate)
    _run(make_params(precision="bf16", val_every=2))
    assert seen and all(dtype is None for dtype in seen), seen


def test_device_and_precision_choice():
    assert resolve_num_workers("auto", torch.device("cpu")) == 0
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


# ------------------------------------------------------------------ a run the budget cuts short
def test_a_run_the_budget_cuts_short_says_so_and_records_the_steps_trained(
    make_params, monkeypatch, caplog
):
    # 6 s per step in a 0.5-minute (30 s) budget: the budget is spent after step 30 / 6 = 5,
    # long before the 10 + 5 configured steps. Stage 2 is placed at 10/15 of the run's
    # progress, max(k / 15, 6 k / 30) = k / 5 >= 2/3 first after step k = 4.
    steps_take(monkeypatch, 6.0)
    params = make_params(steps_stage1=10, steps_stage2=5, max_minutes=0.5, val_every=0)
    with caplog.at_level(logging.INFO, logger="aerial_inpainting.pconv.train"):
        result = _run(params)
    assert result.info["final_step"] == 5
    assert result.info["steps_configured"] == 15
    assert result.info["cut_short"] is True
    assert result.history["stage"].tolist() == [1, 1, 1, 1, 2]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "cut short by its wall-time budget: 5 of the 15 configured steps (33.3%)" in warnings[0]
    assert "training.max_minutes=0.5" in warnings[0] and "undertrained" in warnings[0]
    assert "raise training.max_minutes or lower training.steps_stage1" in warnings[0]
    # the progress lines: 6 s of 30 s = 20% of the run after step 1 (1/15 = 7% by steps)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert lines[0].startswith(
        "step 1/15, 20% of the run by time (0.1 of 0.5 min; the wall-time budget, not the "
        "steps, ends this run) (stage 1)"
    )
    assert lines[-1].startswith("step 5/15, 100% of the run by time (0.5 of 0.5 min;")


def test_a_run_that_trains_all_its_steps_is_not_cut_short(make_params, monkeypatch, caplog):
    # 1 s per step in a 1-minute budget: the 4 + 3 steps end the run (7 s), not the budget.
    steps_take(monkeypatch, 1.0)
    with caplog.at_level(logging.INFO, logger="aerial_inpainting.pconv.train"):
        result = _run(make_params(max_minutes=1, val_every=0))
    assert result.info["final_step"] == result.info["steps_configured"] == 7
    assert result.info["cut_short"] is False
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert lines[-1].startswith("step 7/7, 100% of the run by steps (0.1 of 1 min used)")


def test_progress_text_names_what_ends_the_run():
    assert T.progress_text(30, 600, 90.0, None) == "step 30/600, 5% of the run"
    assert T.progress_text(10, 6000, 30.0, 6) == (
        "step 10/6000, 8% of the run by time (0.5 of 6 min; the wall-time budget, not the "
        "steps, ends this run)"
    )
    assert T.progress_text(3000, 6000, 120.0, 6) == (
        "step 3000/6000, 50% of the run by steps (2.0 of 6 min used)"
    )
    assert T.cut_short_by_budget(219, 6000, 360.0, 6)
    assert not T.cut_short_by_budget(219, 6000, 359.0, 6)  # stopped otherwise (interrupted)
    assert not T.cut_short_by_budget(6000, 6000, 400.0, 6)
    assert not T.cut_short_by_budget(219, 6000, 400.0, None)
