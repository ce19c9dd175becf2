"""What the redesign separated: the plain-PyTorch package, the run's state, the parameters."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import conf_parameters

from aerial_inpainting.parameters import (
    DataProcessingParams,
    EvaluateParams,
    InpaintParams,
    LargeHolesParams,
)
from aerial_inpainting.pconv.checkpoint import capture_rng_state
from aerial_inpainting.pconv.config import TrainConfig
from aerial_inpainting.pconv.train import TrainState
from aerial_inpainting.pconv.unet import PConvUNet


def test_pconv_imports_no_tracking_or_plotting_library():
    code = (
        "import sys, aerial_inpainting.pconv.train, aerial_inpainting.pconv.train_distributed;"
        "print(sorted(m for m in ('mlflow', 'matplotlib', 'PIL', 'kedro') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _state(cfg: TrainConfig, checkpoint=None) -> TrainState:
    torch.manual_seed(0)
    model = PConvUNet(cfg.model)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return TrainState.from_checkpoint(checkpoint, cfg, model, scaler)


def test_train_state_round_trips_through_a_checkpoint(make_params):
    cfg = TrainConfig.from_params(make_params(ema_decay=0.9))
    state = _state(cfg)
    assert (state.step, state.stage, state.resumed_from) == (0, 1, None)
    # one optimisation step, stage 2, a history row: everything a checkpoint must carry
    images = torch.rand(2, 3, 16, 16)
    masks = (torch.rand(2, 1, 16, 16) > 0.3).float()
    state.model(images * masks, masks).mean().backward()
    state.optimizer.step()
    state.ema.update_parameters(state.model)
    state.step = 3
    state.enter_stage2(cfg)
    state.window.add({"total": 2.0}, 2)
    state.history.append({"step": 3, "loss_total": 2.0})
    state.elapsed_s = 12.5
    checkpoint = state.to_checkpoint("abc", {"seed": 7}, rng=capture_rng_state())
    assert checkpoint["fingerprint"] == "abc" and checkpoint["config"] == {"seed": 7}

    restored = _state(cfg, checkpoint)
    assert (restored.step, restored.stage, restored.resumed_from) == (3, 2, 3)
    assert restored.history == state.history and restored.elapsed_s == 12.5
    assert restored.window == state.window
    for key, value in state.model.state_dict().items():
        assert torch.equal(value, restored.model.state_dict()[key]), key
    for key, value in state.ema.state_dict().items():
        assert torch.equal(value, restored.ema.state_dict()[key]), key
    assert restored.optimizer.param_groups[0]["lr"] == cfg.lr_stage2
    # stage 2: the encoder's BatchNorm is frozen again, in the restored model too
    assert not any(p.requires_grad for p in restored.model.enc_norms.parameters())


@pytest.mark.parametrize(
    ("model", "block", "change", "expected"),
    [
        (EvaluateParams, "evaluate", {"batch_size": "eight"}, "batch_size"),
        (EvaluateParams, "evaluate", {"baselinez": ["telea"]}, "baselinez"),
        (InpaintParams, "inpaint", {"overlap": None}, "overlap"),
    ],
)
def test_a_wrong_key_is_named_with_its_file(model, block, change, expected):
    params = {**conf_parameters(block), **change}
    with pytest.raises(ValueError, match=rf"`{block}` in conf/base/parameters_{block}\.yml") as err:
        model.parse(params)
    assert expected in str(err.value)


def test_a_missing_key_is_named_with_its_file():
    params = conf_parameters("data_processing")
    del params["split"]["seed"]
    with pytest.raises(ValueError, match=r"parameters_data_processing\.yml") as err:
        DataProcessingParams.parse(params)
    assert "split.seed" in str(err.value) and "Field required" in str(err.value)


def test_the_yaml_parses_completely():
    for model, block in (
        (EvaluateParams, "evaluate"),
        (InpaintParams, "inpaint"),
        (DataProcessingParams, "data_processing"),
        (LargeHolesParams, "large_holes"),
    ):
        assert model.parse(conf_parameters(block)).model_dump() == conf_parameters(block)
