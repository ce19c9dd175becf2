"""`auto` takes the project's latest model only when its recorded test score is not below the
shipped model's on the same split, and says which model and why (issue 29). Scores are made
up; the rule is checked against hand-written verdicts."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from kedro.pipeline import Pipeline, node
from support.images import box_mask, smooth_image, write_png
from support.model_scores import shipped_psnr, shipped_split, write_score

from aerial_inpainting.hooks import PretrainedModelHook
from aerial_inpainting.inpaint_cli import main
from aerial_inpainting.model_selection import (
    compare_scores,
    read_records,
    score_record,
    select,
    split_definition,
    weights_digest,
)
from aerial_inpainting.pconv.checkpoint import save_model
from aerial_inpainting.pretrained_model import load_pretrained, read_pretrained_config

REAL = {"data_source": "real", "image_size": 256, "split_seed": 42, "test_fraction": 0.1,
        "val_fraction": 0.05, "masks_seed": 7, "n_images": 1140}  # fmt: skip
SYNTHETIC = {**REAL, "data_source": "synthetic", "n_images": 24}


def _record(digest: str, split: dict, psnr: float, ssim: float = 0.8) -> dict:
    summary = pd.DataFrame(
        [{"method": "model", "group_type": "overall", "n": split["n_images"], "psnr_mean": psnr,
          "ssim_mean": ssim}]
    )  # fmt: skip
    return score_record(summary, digest, split)


SHIPPED = [{"split": REAL, "scores": {"psnr_mean": 27.02, "ssim_mean": 0.8173}}]


def test_the_rule_psnr_at_a_hundredth_then_ssim_ties_to_the_project():
    assert compare_scores({"psnr_mean": 27.10}, {"psnr_mean": 27.02}).use_project
    assert not compare_scores({"psnr_mean": 26.50}, {"psnr_mean": 27.02}).use_project
    # 27.024 and 27.016 are both 27.02 dB: SSIM decides
    level = {"psnr_mean": 27.024, "ssim_mean": 0.8170}
    assert not compare_scores(level, {"psnr_mean": 27.016, "ssim_mean": 0.8173}).use_project
    assert compare_scores(level, {"psnr_mean": 27.016, "ssim_mean": 0.8170}).use_project


def test_a_worse_project_model_loses_to_the_shipped_one_and_the_reason_says_so():
    verdict = select("p" * 16, [_record("p" * 16, REAL, 23.47)], "s" * 16, SHIPPED)
    assert not verdict.use_project
    assert verdict.reason == (
        "PSNR 23.47 dB, below the shipped 27.02 dB on the test split "
        "(real data, 1140 test images, split seed 42)"
    )


def test_a_better_project_model_wins_over_the_shipped_one():
    verdict = select("p" * 16, [_record("p" * 16, REAL, 27.50)], "s" * 16, SHIPPED)
    assert verdict.use_project
    assert verdict.reason.startswith("PSNR 27.50 dB, above the shipped 27.02 dB")


def test_no_evaluation_or_another_split_keeps_the_shipped_model_and_says_what_to_run():
    other = [_record("o" * 16, REAL, 30.0)]  # another model's record is no evidence
    verdict = select("p" * 16, other, "s" * 16, SHIPPED)
    assert not verdict.use_project and "no recorded evaluation" in verdict.reason
    assert "kedro run --pipelines=evaluate" in verdict.reason
    on_synthetic = [_record("p" * 16, SYNTHETIC, 30.0)]
    verdict = select("p" * 16, on_synthetic, "s" * 16, SHIPPED)
    assert not verdict.use_project
    assert "no score of the shipped model on the project's test split (synthetic data" in (
        verdict.reason
    )
    assert "evaluate.model=pretrained" in verdict.reason
    # once the project has scored the shipped model on that split, they are compared
    shipped_there = _record("s" * 16, SYNTHETIC, 29.0)
    verdict = select("p" * 16, [*on_synthetic, shipped_there], "s" * 16, SHIPPED)
    assert verdict.use_project and "above the shipped 29.00 dB" in verdict.reason


def test_the_weights_digest_names_the_weights_not_the_file():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    half = weights_digest(model.half())
    assert half == weights_digest(model.float())  # float16 values cast to float32: the same
    digest = weights_digest(model)
    with torch.no_grad():
        model[0].bias[0] += 1
    assert weights_digest(model) != digest
    # the shipped model's JSON names its weights the same way
    assert read_pretrained_config()["weights_digest"] == weights_digest(load_pretrained())


def test_split_definition_holds_what_fixes_the_test_images():
    params = {"image_size": 256, "split": {"seed": 42, "test_fraction": 0.1,
              "val_fraction": 0.05}, "masks": {"seed": 7}, "synthetic": {"seed": 2018}}  # fmt: skip
    assert split_definition(params, "real", 1140) == REAL
    assert split_definition(params, "synthetic", 24) == {**SYNTHETIC, "synthetic": {"seed": 2018}}


# ------------------------------------------------------------------ aerial-inpaint
def _project_with_model(root: Path, model) -> Path:
    root.mkdir(parents=True)
    (root / "pyproject.toml").write_text('[tool.kedro]\npackage_name = "aerial_inpainting"\n')
    version = root / "data/06_models/pconv_unet.safetensors/2026-02-01T00.00.00.000Z"
    save_model(version / "pconv_unet.safetensors", model)
    return root


@pytest.mark.parametrize("margin", [-3.0, 0.5])
def test_aerial_inpaint_uses_the_better_model_and_says_why(
    tmp_path, tiny_model, capsys, monkeypatch, margin
):
    project = _project_with_model(tmp_path / "project", tiny_model)
    write_score(project, tiny_model, psnr=shipped_psnr() + margin)
    image = write_png(tmp_path / "a.png", smooth_image(32, 32))
    mask = write_png(tmp_path / "a_mask.png", box_mask(32, 32, [(8, 8, 20, 20)]) * 255)
    monkeypatch.chdir(project)
    code = main([str(image), str(mask), "-o", str(tmp_path / "out.png")])
    err = capsys.readouterr().err
    assert code == 0, err
    (line,) = [line for line in err.splitlines() if "aerial-inpaint: model:" in line]
    if margin < 0:
        assert "pretrained model skyview-small" in line
        assert "not the project's latest model" in line and "below the shipped" in line
    else:
        assert "latest trained model of the project" in line and "2026-02-01" in line
        assert "above the shipped" in line


def test_aerial_inpaint_prefers_the_shipped_model_when_the_project_model_is_unscored(
    tmp_path, tiny_model, capsys, monkeypatch
):
    project = _project_with_model(tmp_path / "project", tiny_model)
    image = write_png(tmp_path / "a.png", smooth_image(32, 32))
    mask = write_png(tmp_path / "a_mask.png", box_mask(32, 32, [(8, 8, 20, 20)]) * 255)
    monkeypatch.chdir(project)
    assert main([str(image), str(mask), "-o", str(tmp_path / "out.png")]) == 0
    err = capsys.readouterr().err
    assert "pretrained model skyview-small" in err and "no recorded evaluation" in err


# ------------------------------------------------------------------ inpaint.model: auto
class _Catalog:
    """The part of a DataCatalog the hook uses, over plain values."""

    def __init__(self, values: dict) -> None:
        self.values = values

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def exists(self, name: str) -> bool:
        return name in self.values

    def load(self, name: str):
        return self.values[name]

    def get(self, name: str):
        return self.values.get(name)

    def __setitem__(self, name: str, value) -> None:
        self.values[name] = value


@pytest.mark.parametrize("margin", [-3.0, 0.5])
def test_inpaint_model_auto_takes_the_better_model_and_logs_why(
    tmp_path, tiny_model, caplog, margin
):
    record = write_score(tmp_path, tiny_model, psnr=shipped_psnr() + margin)
    (found,) = read_records(record.parent)
    catalog = _Catalog(
        {
            "parameters": {"inpaint": {"model": "auto"}},
            "model": tiny_model,
            "model_scores": {record.stem: lambda: found},
        }
    )
    users = Pipeline([node(lambda model: model, "model", "out", name="inpaint", tags=["inpaint"])])
    hook = PretrainedModelHook()
    with caplog.at_level(logging.INFO, logger="aerial_inpainting.hooks"):
        hook.before_pipeline_run({}, users, catalog)
    (line,) = [r.getMessage() for r in caplog.records if "model" in r.getMessage()]
    if margin < 0:
        assert hook.source == "pretrained:skyview-small"
        assert line.startswith("inpaint.model=auto: using the pretrained model skyview-small")
        assert "below the shipped" in line
        assert catalog.values["model"] is not tiny_model  # swapped for the shipped model
    else:
        assert hook.source == "trained" and catalog.values["model"] is tiny_model
        assert "using the project's latest trained model [PSNR" in line
        assert "above the shipped" in line
    assert shipped_split()["data_source"] == "real"


def test_the_evaluate_pipeline_records_the_score_it_computed(tiny_model):
    from aerial_inpainting.pipelines.evaluate.nodes import record_model_score

    summary = pd.DataFrame(
        [
            {
                "method": "model",
                "group_type": "overall",
                "n": 3,
                "psnr_mean": 25.5,
                "ssim_mean": 0.75,
            },
            {
                "method": "telea",
                "group_type": "overall",
                "n": 3,
                "psnr_mean": 24.0,
                "ssim_mean": 0.7,
            },
        ]
    )
    split = pd.DataFrame({"image_id": ["a", "b", "c"], "data_source": "real"})
    params = {"image_size": 256, "split": {"seed": 42, "test_fraction": 0.1,
              "val_fraction": 0.05}, "masks": {"seed": 7}}  # fmt: skip
    ((name, record),) = record_model_score(summary, tiny_model, split, params).items()
    assert name.startswith(weights_digest(tiny_model) + "_")
    assert record["scores"] == {"psnr_mean": 25.5, "ssim_mean": 0.75}
    assert record["split"] == {**REAL, "n_images": 3}
    assert np.isfinite(record["scores"]["psnr_mean"])
