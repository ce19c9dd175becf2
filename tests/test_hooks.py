"""Which model a run's `model` input is: `evaluate.model` / `inpaint.model` (no Kedro session)."""

from __future__ import annotations

import pytest
from kedro.pipeline import node

from aerial_inpainting.hooks import choose_model_source


def _user(tag: str):
    return node(lambda model: model, inputs="model", outputs=f"out_{tag}", name=tag, tags=[tag])


EVALUATE, INPAINT = _user("evaluate"), _user("inpaint")


def _never_called():
    raise AssertionError("the trained model's existence was not needed")


def test_trained_is_the_evaluate_default_and_pretrained_selects_the_shipped_model() -> None:
    assert choose_model_source([EVALUATE], {"evaluate": {}}, False, _never_called) is None
    params = {"evaluate": {"model": "trained"}}
    assert choose_model_source([EVALUATE], params, False, _never_called) is None
    params = {"evaluate": {"model": "Pretrained"}}
    assert choose_model_source([EVALUATE], params, False, _never_called) == (
        "evaluate.model=pretrained"
    )


def test_auto_takes_the_trained_model_when_there_is_one() -> None:
    params = {"inpaint": {"model": "auto"}}
    assert choose_model_source([INPAINT], params, False, lambda: True) is None
    assert (
        choose_model_source([INPAINT], params, False, lambda: False) == "inpaint.model=pretrained"
    )
    # A run that trains the model uses it, whether one was saved before or not.
    assert choose_model_source([INPAINT], params, True, _never_called) is None


def test_contradictions_and_bad_values_are_refused_with_the_parameter_named() -> None:
    with pytest.raises(ValueError, match="also trains a model"):
        choose_model_source([EVALUATE], {"evaluate": {"model": "pretrained"}}, True, _never_called)
    params = {"evaluate": {"model": "pretrained"}, "inpaint": {"model": "trained"}}
    with pytest.raises(ValueError, match=r"inpaint\.model uses the trained model"):
        choose_model_source([EVALUATE, INPAINT], params, False, _never_called)
    with pytest.raises(ValueError, match=r"evaluate.model: expected one of .*'latest'"):
        choose_model_source([EVALUATE], {"evaluate": {"model": "latest"}}, False, _never_called)


def test_pretrained_swap_replaces_the_model_entry_without_a_warning(caplog) -> None:
    from kedro.io import DataCatalog, MemoryDataset
    from kedro.pipeline import Pipeline

    from aerial_inpainting.datasets import PretrainedModelDataset
    from aerial_inpainting.hooks import PretrainedModelHook

    catalog = DataCatalog(
        {
            "model": MemoryDataset("trained"),
            "parameters": MemoryDataset({"evaluate": {"model": "pretrained"}}),
        }
    )
    hook = PretrainedModelHook()
    with caplog.at_level("INFO"):
        hook.before_pipeline_run({}, Pipeline([EVALUATE]), catalog)
    assert isinstance(catalog.get("model"), PretrainedModelDataset)
    assert hook.source is not None and hook.source.startswith("pretrained:")
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == []
    assert any("evaluate.model=pretrained: using the" in r.getMessage() for r in caplog.records)


def test_a_model_file_path_selects_that_file_read_only(tmp_path, model_file) -> None:
    from kedro.io import DataCatalog, DatasetError, MemoryDataset
    from kedro.pipeline import Pipeline

    from aerial_inpainting.datasets import ModelFileDataset
    from aerial_inpainting.hooks import PretrainedModelHook

    params = {"evaluate": {"model": str(model_file)}}
    chosen = choose_model_source([EVALUATE], params, False, _never_called)
    assert chosen == f"evaluate.model={model_file}"
    with pytest.raises(ValueError, match=r"evaluate\.model: .*no such file"):
        missing = {"evaluate": {"model": str(tmp_path / "nope.safetensors")}}
        choose_model_source([EVALUATE], missing, False, _never_called)
    with pytest.raises(ValueError, match="also trains a model"):
        choose_model_source([EVALUATE], params, True, _never_called)

    catalog = DataCatalog({"model": MemoryDataset("trained"), "parameters": MemoryDataset(params)})
    hook = PretrainedModelHook()
    hook.before_pipeline_run({}, Pipeline([EVALUATE]), catalog)
    dataset = catalog.get("model")
    assert isinstance(dataset, ModelFileDataset) and hook.source == f"file:{model_file}"
    assert dataset.load().config.depth == 3  # conftest's tiny model
    with pytest.raises(DatasetError, match="read-only"):
        dataset.save(object())
