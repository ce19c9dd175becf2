"""The train_model node with a tiny model: outputs, MLflow logging, and the model dataset."""

from __future__ import annotations

import base64
import io
import json

import matplotlib.figure
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from kedro.io.core import Version
from PIL import Image

from aerial_inpainting.datasets import TorchModelDataset
from aerial_inpainting.inference import inpaint_image
from aerial_inpainting.mlflow_model import encode_png
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
    model_files = {f.path for f in client.list_artifacts(run.info.run_id, "model_files")}
    assert {"model_files/pconv_unet.safetensors", "model_files/config.json"} <= model_files
    config = json.loads(
        (tmp_path / "art")
        .joinpath(run.info.run_id, "artifacts", "model_files", "config.json")
        .read_text()
    )
    assert config["model_config"]["depth"] == 2 and config["training"]["steps_stage1"] == 4


def test_trained_model_is_logged_as_a_pyfunc_that_inpaints(tiny_inputs, make_params, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
        with mlflow.start_run(experiment_id=experiment) as run:
            model, _, _ = train_model(**tiny_inputs, params=make_params())
        loaded = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
        image = (np.random.default_rng(0).random((20, 28, 3)) * 255).astype(np.uint8)
        mask = np.full((20, 28), 255, np.uint8)
        mask[5:12, 8:20] = 0
        frame = pd.DataFrame({"image": [encode_png(image)], "mask": [encode_png(mask)]})
        text = loaded.predict(frame)["inpainted"][0]
    finally:
        mlflow.set_tracking_uri(None)
    with Image.open(io.BytesIO(base64.b64decode(text))) as png:
        result = np.asarray(png)
    # the logged model is the trained one: same pixels as inpainting with it directly
    np.testing.assert_array_equal(result, inpaint_image(model, image, mask))
    assert (result[mask == 255] == image[mask == 255]).all()


def test_torch_model_dataset_versions_round_trip(tiny_inputs, make_params, tmp_path):
    model, _, _ = train_model(**tiny_inputs, params=make_params(steps_stage1=1, steps_stage2=0))
    path = tmp_path / "06_models" / "pconv_unet.safetensors"
    TorchModelDataset(str(path), version=Version(None, "v1")).save(model)
    assert (path / "v1" / "pconv_unet.safetensors").is_file()
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
    with pytest.raises(ValueError, match="val_split: missing column"):
        pick_validation_set(split.drop(columns="row"), index, 2)
