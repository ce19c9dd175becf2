"""The train_model node with a tiny model: outputs, MLflow logging, and the model dataset."""

from __future__ import annotations

import json

import matplotlib.figure
import mlflow
import pandas as pd
import pytest
import torch
from kedro.io.core import Version

from aerial_inpainting.datasets import TorchModelDataset
from aerial_inpainting.pconv.unet import PConvUNet
from aerial_inpainting.pipelines.training.nodes import pick_validation_set, train_model


def test_train_model_node_outputs(tiny_inputs, make_params, tmp_path):
    model, history, figure = train_model(**tiny_inputs, params=make_params(log_every=2))
    assert isinstance(model, PConvUNet) and not model.training
    assert next(model.parameters()).device.type == "cpu"
    assert model.encoder_batchnorm_frozen  # it went through stage 2
    assert isinstance(history, pd.DataFrame) and isinstance(figure, matplotlib.figure.Figure)
    assert history.dropna(subset=["loss_total"]).step.tolist() == [2, 4, 6, 7]
    assert history.val_psnr.notna().sum() == 3  # steps 3, 6, 7
    assert list((tmp_path / "checkpoints").iterdir())  # one fingerprint folder
    # the trained model runs on a full-size test image
    out = model(torch.rand(1, 3, 32, 32), torch.ones(1, 1, 32, 32))
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()


def test_train_model_logs_to_the_active_mlflow_run(tiny_inputs, make_params, tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    try:
        with mlflow.start_run(experiment_id=experiment) as run:
            train_model(**tiny_inputs, params=make_params(log_every=1, vgg_weights="random"))
    finally:
        mlflow.set_tracking_uri(None)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    data = client.get_run(run.info.run_id).data
    assert data.params["vgg_info.vgg_weights"] == "random-init"
    assert data.tags["training.device"] == "cpu"
    for key in (
        "loss_total",
        "loss_hole",
        "loss_valid",
        "loss_perceptual",
        "loss_style_out",
        "loss_tv",
    ):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == list(range(1, 8)), key  # every step
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_psnr")] == [3, 6, 7]
    grids = {f.path for f in client.list_artifacts(run.info.run_id, "training/grids")}
    assert "training/grids/val_grid_step000000007.png" in grids and len(grids) == 3
    model_files = {f.path for f in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/pconv_unet.pt", "model/config.json"} <= model_files
    config = json.loads(
        (tmp_path / "art")
        .joinpath(run.info.run_id, "artifacts", "model", "config.json")
        .read_text()
    )
    assert config["model_config"]["depth"] == 2 and config["training"]["steps_stage1"] == 4


def test_torch_model_dataset_versions_round_trip(tiny_inputs, make_params, tmp_path):
    model, _, _ = train_model(**tiny_inputs, params=make_params(steps_stage1=1, steps_stage2=0))
    path = tmp_path / "06_models" / "pconv_unet.pt"
    TorchModelDataset(str(path), version=Version(None, "v1")).save(model)
    assert (path / "v1" / "pconv_unet.pt").is_file()
    loaded = TorchModelDataset(str(path), version=Version(None, None)).load()
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    with pytest.raises(Exception, match=r"does not exist|No trained model"):
        TorchModelDataset(str(tmp_path / "nothing.pt")).load()


def test_validation_set_is_spread_over_hole_ratios():
    split = pd.DataFrame({"image_id": list("abcde"), "row": [10, 11, 12, 13, 14]})
    index = pd.DataFrame(
        {
            "mask_id": ["m" + c for c in "abcde"],
            "image_id": list("abcde"),
            "hole_ratio": [0.5, 0.1, 0.3, 0.2, 0.4],
        }
    )
    rows, masks = pick_validation_set(split, index, 3)
    assert masks == ["mb", "mc", "ma"] and rows == [11, 12, 10]  # lowest, middle, highest ratio
    with pytest.raises(ValueError, match="test_split: missing column"):
        pick_validation_set(split.drop(columns="row"), index, 2)
