"""End-to-end through KedroSession at tiny size: data_processing + training, MLflow, quality;
and the paper-scale `gpu` environment for a few CPU steps."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO_ROOT, make_kedro_project, run_pipeline
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro.io.core import Version

from aerial_inpainting.datasets import MaskFolderDataset, TorchModelDataset
from aerial_inpainting.inference import fill_holes
from aerial_inpainting.pconv.checkpoint import load_model

pytestmark = pytest.mark.slow

DATA_PARAMS = {
    "data_processing.image_size": 128,
    "data_processing.num_workers": 1,
    "data_processing.synthetic.classes": ["Agriculture", "Lake", "Residential"],
    "data_processing.synthetic.images_per_class": 20,
    "data_processing.masks.train_pool_size": 24,
}
TINY_TRAINING = {
    "training.device": "cpu",
    "training.model": {"depth": 3, "base_channels": 16, "max_channels": 64},
    "training.train_size": 32,
    "training.batch_size": 8,
    "training.steps_stage1": 400,
    "training.steps_stage2": 50,
    "training.lr_stage1": 2e-3,
    "training.lr_stage2": 5e-4,
    "training.vgg_weights": "none",  # tests never touch the network; VGG is tested elsewhere
    "training.log_every": 5,
    "training.val_every": 225,
    "training.val_images": 2,
    "training.checkpoint_every": 150,
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A temporary project whose data_processing has run once (3 classes x 20 images, 128 px)."""
    path = make_kedro_project(tmp_path_factory.mktemp("e2e") / "project")
    shutil.copytree(REPO_ROOT / "conf" / "gpu", path / "conf" / "gpu")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{path / 'mlflow.db'}")
        torch.set_num_threads(1)
        run_pipeline(path, "data_processing", DATA_PARAMS)
        _end_leftover_mlflow_runs()
        yield path
        _end_leftover_mlflow_runs()


def _end_leftover_mlflow_runs() -> None:
    """kedro-mlflow with `run.nested: true` re-enters its run once per node and ends it once,
    so in-process sessions leave the (finished) run on MLflow's active-run stack; the next
    session would then log into it. A `kedro run` process exits, so only tests need this."""
    while mlflow.active_run() is not None:
        mlflow.end_run()


def _hole_psnr(pred: np.ndarray, target: np.ndarray, hole: np.ndarray) -> float:
    """PSNR over hole pixels, written out directly (float images in [0, 1])."""
    mse = float(np.mean((pred[hole] - target[hole]) ** 2))
    return 10 * np.log10(1.0 / mse)


def test_training_run_logs_to_mlflow_and_beats_mean_fill(project, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    run_pipeline(project, "training", TINY_TRAINING)
    _end_leftover_mlflow_runs()

    # --- catalog outputs
    assert (
        len(list((project / "data/06_models/pconv_unet.safetensors").iterdir())) == 1
    )  # one version
    model = TorchModelDataset(
        str(project / "data/06_models/pconv_unet.safetensors"), Version(None, None)
    ).load()
    assert model.config.depth == 3 and not model.training
    history = pd.read_csv(project / "data/08_reporting/training_history.csv")
    assert (
        history.step.max() == 450
        and (project / "data/08_reporting/loss_curve.png").stat().st_size > 0
    )

    # --- one MLflow run for this `kedro run`, with parameters, per-step losses, images
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = [
        r
        for e in client.search_experiments()
        for r in client.search_runs([e.experiment_id])
        if "training.steps_stage1" in r.data.params
    ]
    (run,) = [r for r in runs if r.data.params.get("training.steps_stage1") == "400"]
    params = run.data.params
    assert params["training.train_size"] == "32" and params["training.model.depth"] == "3"
    assert params["vgg_info.vgg_weights"] == "disabled"
    loss = client.get_metric_history(run.info.run_id, "loss_total")
    assert sorted(m.step for m in loss) == list(range(5, 451, 5))
    assert {m.step for m in client.get_metric_history(run.info.run_id, "loss_hole")} == {
        m.step for m in loss
    }
    grids = [f.path for f in client.list_artifacts(run.info.run_id, "training/training_grids")]
    assert len(grids) == 2 and all(g.endswith(".png") for g in grids)
    assert {"model_files/pconv_unet.safetensors", "model_files/pconv_unet_metadata.json"} <= {
        f.path for f in client.list_artifacts(run.info.run_id, "model_files")
    }

    # --- held-out quality: hole-region PSNR of the model vs. mean-colour fill, all test images
    images = np.load(project / "data/03_primary/images.npy")
    split_dir = project / "data/05_model_input/test_split.csv"
    test_split = pd.read_csv(next(split_dir.glob("*/test_split.csv")))
    index_dir = project / "data/04_feature/test_mask_index.csv"
    mask_index = pd.read_csv(next(index_dir.glob("*/test_mask_index.csv")))
    masks = MaskFolderDataset(
        str(project / "data/04_feature/test_masks"), Version(None, None)
    ).load()
    rows = dict(zip(test_split.image_id, test_split.row, strict=True))
    ours, baseline = [], []
    for mask_id, image_id in zip(mask_index.mask_id, mask_index.image_id, strict=True):
        gt = images[rows[image_id]].astype(np.float64) / 255
        valid = masks[mask_id].astype(bool)
        hole = ~valid
        mean_fill = np.where(valid[..., None], gt, gt[valid].mean(axis=0))
        # Through the shared inference path: holes wider than the tiny network's reach are
        # predicted too (a direct forward pass leaves them at the partial convolution's 0).
        filled = fill_holes(model, images[rows[image_id]], valid, "cpu")
        out = filled.astype(np.float64) / 255
        ours.append(_hole_psnr(out, gt, hole))
        baseline.append(_hole_psnr(mean_fill, gt, hole))
    assert len(ours) >= 6
    assert np.mean(ours) > np.mean(baseline) + 1.0, (ours, baseline)


def test_gpu_environment_runs_a_few_steps_on_the_cpu(project, monkeypatch):
    """`kedro run --env=gpu --params ...`: the paper-scale network (depth 7) for 3 CPU steps."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    overrides = {
        "training": {
            "device": "cpu",
            "train_size": 128,
            "batch_size": 2,
            "steps_stage1": 2,
            "steps_stage2": 1,
            "val_images": 1,
            "vgg_weights": "random",
        }
    }
    bootstrap_project(project)
    with (
        monkeypatch.context() as mp,
        KedroSession.create(project_path=project, env="gpu", runtime_params=overrides) as session,
    ):
        mp.chdir(project)
        params = session.load_context().params["training"]
        assert params["model"] == {
            "depth": 7,
            "base_channels": 64,
            "max_channels": 512,
            "prefill": "none",
        }
        assert params["checkpoint_dir"] == "data/06_models/checkpoints_gpu"
        session.run(pipeline_names=["training"])
    _end_leftover_mlflow_runs()
    history = pd.read_csv(project / "data/08_reporting/training_history.csv")
    assert history.step.tolist()[-1] == 3 and history.stage.tolist()[-1] == 2
    versions = sorted((project / "data/06_models/pconv_unet.safetensors").iterdir())
    model = load_model(versions[-1] / "pconv_unet.safetensors")
    assert model.config.depth == 7 and model.config.base_channels == 64
    (ckpt_dir,) = list((project / "data/06_models/checkpoints_gpu").iterdir())
    assert [p.name for p in ckpt_dir.iterdir()] == ["ckpt-000000003.pt"]
