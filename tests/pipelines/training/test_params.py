"""``params:training`` at the node's entry: every key of parameters_training.yml is required
(the YAML is the only source of values); plain-Python use of TrainConfig keeps its defaults."""

from __future__ import annotations

import re

import pytest
import yaml
from conftest import REPO_ROOT

from aerial_inpainting.pconv.config import TrainConfig, missing_keys
from aerial_inpainting.pipelines.training.nodes import train_model, training_config


def _yaml_training() -> dict:
    text = (REPO_ROOT / "conf/base/parameters_training.yml").read_text()
    return yaml.safe_load(text)["training"]


def test_the_base_yaml_has_every_key():
    assert missing_keys(_yaml_training()) == []


@pytest.mark.parametrize(
    ("drop", "named"), [(("seed",), "'seed'"), (("model", "depth"), "'model.depth'")]
)
def test_a_missing_key_is_named_with_the_file(drop, named, tiny_inputs):
    params = _yaml_training()
    *parents, leaf = drop
    target = params
    for key in parents:
        target[key] = dict(target[key])
        target = target[key]
    del target[leaf]
    message = re.escape(
        f"conf/base/parameters_training.yml: missing key(s) under `training:` [{named}]"
    )
    with pytest.raises(ValueError, match=message):
        training_config(params)
    with pytest.raises(ValueError, match=message):  # before any data is touched
        train_model(**tiny_inputs, params=params)


def test_plain_python_use_keeps_the_field_defaults():
    cfg = TrainConfig.from_params({"model": {"depth": 2}})
    assert (cfg.model.depth, cfg.batch_size) == (2, TrainConfig().batch_size)
