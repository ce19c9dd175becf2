"""The train_model node with a tiny model: outputs, live MLflow metrics, the pyfunc model
dataset, and the model dataset."""

from __future__ import annotations

import base64
import io
import json
import warnings

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
from aerial_inpainting.tracking import grid_header_height


def test_train_model_node_outputs(tiny_inputs, make_params, tmp_path):
    outputs = train_model(**tiny_inputs, params=make_params(log_every=2))
    model, metadata, history, figure, grids, pyfunc_model = outputs
    assert isinstance(model, PConvUNet) and not model.training and pyfunc_model is model
    assert next(model.parameters()).device.type == "cpu"
    assert model.encoder_batchnorm_frozen  # it went through stage 2
    assert isinstance(history, pd.DataFrame) and isinstance(figure, matplotlib.figure.Figure)
    assert history.dropna(subset=["loss_total"]).step.tolist() == [2, 4, 6, 7]
    assert history.val_psnr.notna().sum() == 3  # steps 3, 6, 7
    assert list((tmp_path / "checkpoints").iterdir())  # one fingerprint folder
    # the metadata saved next to the model: JSON as it is, the run's config and info
    assert json.loads(json.dumps(metadata)) == metadata
    assert metadata["model_config"]["depth"] == 2 and metadata["model_config"]["max_channels"] == 16
    assert metadata["training"]["steps_stage1"] == 4 and metadata["info"]["final_step"] == 7
    assert metadata["info"]["fingerprint"] and metadata["info"]["device"] == "cpu"
    # the grids: lazy PNG partitions, one per validation, titles + 2 images x 5 tiles of 32 px
    assert sorted(grids) == [f"val_grid_step{s:09d}" for s in (3, 6, 7)]
    grid = grids["val_grid_step000000007"]()
    height = grid_header_height(32) + 2 * 32 + 2
    assert isinstance(grid, Image.Image) and grid.size == (5 * 32 + 4 * 2, height)
    # the model object carries how far its run got, saved in its file (for the headline)
    assert model.extra == {
        "training": {"steps": 7, "steps_configured": 7, "cut_short": False,
                     "max_minutes": metadata["training"]["max_minutes"],
                     "elapsed_minutes": metadata["info"]["elapsed_minutes"]}
    }  # fmt: skip
    # the trained model runs on a full-size test image
    out = model(torch.rand(1, 3, 32, 32), torch.ones(1, 1, 32, 32))
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()


def test_train_model_logs_live_metrics_and_nothing_else(tiny_inputs, make_params, tmp_path):
    """The node logs per-step metrics and run info to the active run; files and the model
    reach MLflow only through the catalog (tested in test_mlflow_tracking.py)."""
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
    assert client.list_artifacts(run.info.run_id) == []
    assert client.search_logged_models([experiment]) == []


def test_the_catalog_logs_the_trained_model_as_a_pyfunc_that_inpaints(
    tiny_inputs, make_params, tmp_path, capfd
):
    """``mlflow_model`` (kedro-mlflow's MlflowModelTrackingDataset, this project's flavor
    module): logged from code with a signature and an input example, without a warning."""
    from kedro_mlflow.io.models import MlflowModelTrackingDataset

    model, *_ = train_model(**tiny_inputs, params=make_params())
    dataset = MlflowModelTrackingDataset(
        flavor="aerial_inpainting.mlflow_model", save_args={"name": "model"}
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
        capfd.readouterr()
        with (
            warnings.catch_warnings(record=True) as caught,
            mlflow.start_run(experiment_id=experiment) as run,
        ):
            warnings.simplefilter("always")
            dataset.save(model)
        logged_err = capfd.readouterr().err
        loaded = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
        image = (np.random.default_rng(0).random((20, 28, 3)) * 255).astype(np.uint8)
        mask = np.full((20, 28), 255, np.uint8)
        mask[5:12, 8:20] = 0
        frame = pd.DataFrame({"image": [encode_png(image)], "mask": [encode_png(mask)]})
        text = loaded.predict(frame)["inpainted"][0]
    finally:
        mlflow.set_tracking_uri(None)
    warned = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    warned += [line for line in logged_err.splitlines() if "warn" in line.lower()]
    assert warned == []  # e.g. CloudPickle, no input example, no type hints (MLflow 3)
    flavor = loaded.metadata.flavors["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"  # models from code
    assert [c.name for c in loaded.metadata.get_input_schema().inputs] == ["image", "mask"]
    assert loaded.metadata.saved_input_example_info["type"] == "dataframe"
    with Image.open(io.BytesIO(base64.b64decode(text))) as png:
        result = np.asarray(png)
    # the logged model is the trained one: same pixels as inpainting with it directly
    np.testing.assert_array_equal(result, inpaint_image(model, image, mask))
    assert (result[mask == 255] == image[mask == 255]).all()


def test_torch_model_dataset_versions_round_trip(tiny_inputs, make_params, tmp_path):
    model, *_ = train_model(**tiny_inputs, params=make_params(steps_stage1=1, steps_stage2=0))
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
