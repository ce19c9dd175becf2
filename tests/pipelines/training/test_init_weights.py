"""``training.init_weights: pretrained``: fine-tuning starts from the model shipped with the package."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from aerial_inpainting.pconv.unet import UNetConfig
from aerial_inpainting.pipelines.training.nodes import resolve_model_file, train_model
from aerial_inpainting.pretrained_model import DEFAULT_NAME, PRETRAINED_DIR

SHIPPED = PRETRAINED_DIR / f"{DEFAULT_NAME}.safetensors"
ROOT = Path(__file__).parents[3]


def test_the_keyword_resolves_to_the_shipped_file() -> None:
    assert resolve_model_file("pretrained") == SHIPPED
    assert resolve_model_file(" Pretrained ") == SHIPPED


def test_the_base_recipe_has_the_shipped_network() -> None:
    """So `--params training.init_weights=pretrained` works with conf/base as it is."""
    base = yaml.safe_load((ROOT / "conf/base/parameters_training.yml").read_text())
    shipped = json.loads(SHIPPED.with_suffix(".json").read_text())["config"]
    assert UNetConfig.from_dict(shipped) == UNetConfig.from_dict(base["training"]["model"])


def test_training_starts_from_the_shipped_weights(tiny_inputs, make_params) -> None:
    config = json.loads(SHIPPED.with_suffix(".json").read_text())["config"]
    params = make_params(
        model={
            k: config[k]
            for k in ("depth", "base_channels", "max_channels", "prefill")
            if k in config
        },
        train_size=32,  # 2**depth
        steps_stage1=1,
        steps_stage2=1,
        lr_stage1=1e-12,  # the weights stay where they started (BatchNorm statistics move)
        lr_stage2=1e-12,
        val_every=10,
        init_weights="pretrained",
    )
    model, *_ = train_model(**tiny_inputs, params=params)
    stored = load_file(str(SHIPPED))
    for name, value in model.named_parameters():
        torch.testing.assert_close(value, stored[name].float(), rtol=0, atol=1e-6)
