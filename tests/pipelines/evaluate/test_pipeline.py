"""The evaluate nodes on tiny data, and an end-to-end `kedro run --pipelines=evaluate`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import conf_parameters
from kedro.io import DatasetError
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from aerial_inpainting.evaluation import baselines
from aerial_inpainting.imaging.buckets import bucket_of
from aerial_inpainting.pconv.unet import PConvUNet, UNetConfig
from aerial_inpainting.pipelines.data_processing.nodes import generate_large_test_masks
from aerial_inpainting.pipelines.evaluate import nodes

SIZE = 32
N_IMAGES = 8
PARAMS = conf_parameters("evaluate") | {
    "seed": 3,
    "device": "cpu",
    "batch_size": 3,
    "tta": False,
    "metrics_batch_size": 4,
    "num_workers": 1,
    "progress_bar": False,
    "biharmonic_sample": 3,
    "patchmatch_sample": 3,
    "num_examples": 1,
}


def _tiny_model() -> PConvUNet:
    torch.manual_seed(0)
    return PConvUNet(UNetConfig(depth=3, base_channels=8, max_channels=16)).eval()


def _tiny_data() -> tuple[np.ndarray, pd.DataFrame, dict[str, np.ndarray], pd.DataFrame]:
    """Images (with 2 extra non-test rows), test split, masks and mask index."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    images = np.stack(
        [
            np.clip(
                np.stack([xx * 6 + 20 * k, yy * 5, 128 + 0 * xx], -1)
                + rng.normal(0, 8, (SIZE, SIZE, 3)),
                0,
                255,
            )
            for k in range(N_IMAGES + 2)
        ]
    ).astype(np.uint8)
    rows = np.arange(2, N_IMAGES + 2)
    split = pd.DataFrame(
        {
            "image_id": [f"Forest_{i:03d}" if i % 2 else f"Lake_{i:03d}" for i in rows],
            "class_name": ["Forest" if i % 2 else "Lake" for i in rows],
            "row": rows,
        }
    )
    masks, index = {}, []
    for k, image_id in enumerate(split["image_id"]):
        mask = np.ones((SIZE, SIZE), np.uint8)
        side = 4 + 2 * k  # hole ratios from 0.016 to 0.47
        mask[3 : 3 + side, 5 : 5 + side] = 0
        mask_id = f"test_{k:05d}"
        masks[mask_id] = mask
        ratio = float((mask == 0).mean())
        index.append(
            {
                "mask_id": mask_id,
                "image_id": image_id,
                "hole_ratio": ratio,
                "bucket": bucket_of(ratio),
            }
        )
    return images, split, masks, pd.DataFrame(index)


def test_nodes_score_the_model_and_every_baseline_against_skimage() -> None:
    images, split, masks, index = _tiny_data()
    eval_set, eval_masks = nodes.prepare_evaluation_set(split, index, masks)
    assert eval_set["mask_id"].tolist() == sorted(masks)
    for mask_id, stacked in zip(eval_set["mask_id"], eval_masks, strict=True):
        np.testing.assert_array_equal(stacked, masks[mask_id] == 1)
    model = _tiny_model()
    outputs = nodes.predict_test_images(model, images, eval_set, eval_masks, PARAMS)
    assert outputs.shape == (N_IMAGES, SIZE, SIZE, 3) and outputs.dtype == np.uint8

    # Independent reference for the model output: one forward pass per image.
    k = 5
    row, mask = eval_set.loc[k, "row"], masks[eval_set.loc[k, "mask_id"]]
    x = torch.from_numpy(images[row]).permute(2, 0, 1)[None].float() / 255
    m = torch.from_numpy(mask)[None, None].float()
    with torch.no_grad():
        ref = (model(x * m, m)[0].clamp(0, 1) * 255).round().permute(1, 2, 0).numpy()
    assert np.abs(ref - outputs[k].astype(float)).max() <= 1

    per_image = nodes.compute_metrics(images, eval_set, eval_masks, outputs, PARAMS)
    assert list(per_image.columns) == nodes.PER_IMAGE_COLUMNS
    counts = per_image["method"].value_counts().to_dict()
    assert counts == {
        "model": 8,
        "telea": 8,
        "navier_stokes": 8,
        "biharmonic": 3,
        "mean_fill": 8,
        "pull_push": 8,
        "patchmatch": 3,
    }
    # The slow baselines share one seeded draw: equal sizes, the same images.
    sampled = per_image.groupby("method")["mask_id"].apply(sorted)
    assert sampled["patchmatch"] == sampled["biharmonic"]
    assert per_image.loc[per_image.method != "model", "ssim_raw"].isna().all()

    # The model's numbers against scikit-image on the composite, computed here from scratch.
    model_rows = per_image[per_image.method == "model"].set_index("mask_id")
    for i, r in eval_set.iterrows():
        gt = images[r["row"]] / 255.0
        valid = masks[r["mask_id"]].astype(bool)[..., None]
        comp = np.where(valid, gt, outputs[i] / 255.0)
        got = model_rows.loc[r["mask_id"]]
        assert got["psnr"] == pytest.approx(peak_signal_noise_ratio(gt, comp, data_range=1.0))
        assert got["ssim"] == pytest.approx(
            structural_similarity(gt, comp, channel_axis=-1, data_range=1.0), abs=1e-4
        )
        assert got["ssim_raw"] == pytest.approx(
            structural_similarity(gt, outputs[i] / 255.0, channel_axis=-1, data_range=1.0), abs=1e-4
        )
        assert got["class_name"] == r["class_name"] and got["bucket"] == r["bucket"]

    # A smooth gradient: diffusion baselines beat the flat mean fill in the hole.
    means = per_image.groupby("method")["hole_l1"].mean()
    assert means["telea"] < means["mean_fill"] and means["navier_stokes"] < means["mean_fill"]

    _summary, markdown, metrics = nodes.summarise_evaluation(per_image, PARAMS)
    assert "seeded random sample of 3 of the 8" in markdown
    assert metrics["model.n_images"]["value"] == 8.0
    assert "PatchMatch (pypatchmatch) is slow: it ran on a seeded random sample of 3" in markdown
    assert "## Paired margins of the model over each baseline" in markdown
    assert "model_vs_patchmatch.psnr_diff" in metrics
    fig = nodes.plot_evaluation_examples(images, eval_set, eval_masks, outputs, per_image, PARAMS)
    assert len(fig.axes) == 3 * 5  # the 3 images of the PatchMatch sample, 5 columns each
    titles = [ax.get_title().split("\n")[0] for ax in fig.axes[:5]]
    assert titles == [
        "input (holes in magenta)",
        "OpenCV Telea",
        "PatchMatch (pypatchmatch)",
        "PConv U-Net (ours)",
        "ground truth",
    ]
    shown = {label.split("\n")[1] for label in (ax.get_ylabel() for ax in fig.axes[::5])}
    assert shown == set(sampled["patchmatch"])
    # each panel's PSNR is the scored one: Telea's recomputed fill is the one scored
    pm_title = fig.axes[2].get_title()
    first = fig.axes[0].get_ylabel().split("\n")[1]
    scored = per_image[(per_image.method == "patchmatch") & (per_image.mask_id == first)]
    assert f"PSNR {scored.psnr.iloc[0]:.2f} dB" in pm_title


def test_the_slow_baselines_sample_is_seeded_and_reproducible() -> None:
    """The sample is numpy's seeded draw without replacement, the same for the same seed."""
    for n, size, seed in ((8, 3, 3), (1200, 100, 42)):
        expected = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
        np.testing.assert_array_equal(nodes.seeded_sample(n, size, seed), expected)
    np.testing.assert_array_equal(nodes.seeded_sample(5, None, 0), np.arange(5))
    np.testing.assert_array_equal(nodes.seeded_sample(5, 9, 0), np.arange(5))
    images, split, masks, index = _tiny_data()
    eval_set, eval_masks = nodes.prepare_evaluation_set(split, index, masks)
    outputs = np.zeros((N_IMAGES, SIZE, SIZE, 3), np.uint8)
    params = PARAMS | {"baselines": ["patchmatch"], "lpips_net": "none"}
    runs = [nodes.compute_metrics(images, eval_set, eval_masks, outputs, params) for _ in range(2)]
    pd.testing.assert_frame_equal(runs[0], runs[1])  # same inputs + seed: same sample, scores
    pm = runs[0][runs[0].method == "patchmatch"]
    drawn = nodes.seeded_sample(N_IMAGES, 3, PARAMS["seed"])
    assert sorted(pm.mask_id) == eval_set.mask_id.iloc[drawn].tolist()


def test_patchmatch_missing_is_skipped_with_one_warning(monkeypatch, caplog) -> None:
    monkeypatch.setitem(__import__("sys").modules, "patchmatch", None)  # `import patchmatch` fails
    monkeypatch.setattr(nodes, "_WARNED_UNAVAILABLE", set())
    images, split, masks, index = _tiny_data()
    eval_set, eval_masks = nodes.prepare_evaluation_set(split, index, masks)
    outputs = np.zeros((N_IMAGES, SIZE, SIZE, 3), np.uint8)
    params = PARAMS | {"baselines": ["telea", "patchmatch"], "lpips_net": "none"}
    with caplog.at_level("WARNING"):
        for _ in range(2):  # the main and the large-hole scoring: one warning in all
            per_image = nodes.compute_metrics(images, eval_set, eval_masks, outputs, params)
    assert set(per_image.method) == {"model", "telea"}
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "Baseline patchmatch skipped: the pypatchmatch package cannot be imported" in (
        warnings[0].getMessage()
    )
    _summary, markdown, _metrics = nodes.summarise_evaluation(per_image, params)
    assert "PatchMatch (pypatchmatch) was not run: the pypatchmatch package" in markdown
    fig = nodes.plot_evaluation_examples(images, eval_set, eval_masks, outputs, per_image, params)
    assert [ax.get_title().split("\n")[0] for ax in fig.axes[:4]] == [
        "input (holes in magenta)",
        "OpenCV Telea",
        "PConv U-Net (ours)",
        "ground truth",
    ]


def test_mismatched_inputs_are_named() -> None:
    _images, split, masks, index = _tiny_data()
    with pytest.raises(ValueError, match="test_split: 1 image"):
        nodes.prepare_evaluation_set(split, index.iloc[1:], masks)
    del masks["test_00003"]
    with pytest.raises(ValueError, match="test_masks: 1 mask"):
        nodes.prepare_evaluation_set(split, index, masks)


@contextlib.contextmanager
def _catalog(project: Path) -> Iterator:
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    previous = Path.cwd()
    os.chdir(project)
    try:
        with KedroSession.create(project_path=project) as session:
            yield session.load_context().catalog
    finally:
        os.chdir(previous)


@pytest.mark.slow
def test_evaluate_pipeline_end_to_end(kedro_project: Path, capsys: pytest.CaptureFixture) -> None:
    import mlflow
    from conftest import run_pipeline

    images, split, masks, index = _tiny_data()
    with _catalog(kedro_project) as catalog:
        catalog.save("images", images)
        catalog.save("test_split", split)
        catalog.save("test_masks", masks)
        catalog.save("test_mask_index", index)
        large_masks, large_index, large_split = generate_large_test_masks(
            split, SIZE, {"seed": 5, "min_fraction": 0.25, "max_fraction": 0.5, "n_images": 5}
        )
        catalog.save("test_masks_large", large_masks)
        catalog.save("test_mask_index_large", large_index)
        catalog.save("test_split_large", large_split)

    # Without a trained model: a message naming the command that makes one.
    with pytest.raises(DatasetError, match=r"No trained model found: run `kedro run`"):
        run_pipeline(kedro_project, "evaluate", {"evaluate": PARAMS})

    with _catalog(kedro_project) as catalog:
        catalog.save("model", _tiny_model())
    # Two scoring processes: the spawned pool path of the real runs.
    run_pipeline(kedro_project, "evaluate", {"evaluate": {**PARAMS, "num_workers": 2}})
    out = capsys.readouterr().out
    assert "Mean PSNR: " in out and "OpenCV Telea: " in out
    assert "Mean LPIPS: " in out  # a value, or n/a where the weights were never fetched

    reporting = kedro_project / "data" / "08_reporting"
    for name in (
        "evaluation_per_image.csv",
        "evaluation_summary.csv",
        "evaluation_summary.md",
        "metrics_vs_hole_ratio.png",
        "evaluation_examples.png",
    ):
        versions = sorted((reporting / name).iterdir())  # versioned: <name>/<version>/<name>
        assert len(versions) == 1 and (versions[0] / name).stat().st_size > 0, name
    per_image = pd.read_csv(
        next((reporting / "evaluation_per_image.csv").iterdir()) / "evaluation_per_image.csv"
    )
    # model, telea, navier_stokes, mean_fill, pull_push + biharmonic and PatchMatch on 3 each
    assert len(per_image) == 8 * 5 + 3 + 3
    # Rows scored in the worker processes line up with their images (reference: skimage).
    telea = per_image[per_image.method == "telea"].set_index("mask_id")
    for _, r in index.iterrows():
        gt = images[split.set_index("image_id").loc[r["image_id"], "row"]]
        filled = baselines.telea(gt, masks[r["mask_id"]], radius=PARAMS["telea_radius"])
        expected = peak_signal_noise_ratio(gt / 255.0, filled / 255.0, data_range=1.0)
        assert telea.loc[r["mask_id"], "psnr"] == pytest.approx(expected)
        assert telea.loc[r["mask_id"], "image_id"] == r["image_id"]
    summary = pd.read_csv(
        next((reporting / "evaluation_summary.csv").iterdir()) / "evaluation_summary.csv"
    )
    model_psnr = per_image.loc[per_image.method == "model", "psnr"]

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{kedro_project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("aerial_inpainting")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
    run = runs[0]
    assert run.data.metrics["evaluate.model.psnr_mean"] == pytest.approx(model_psnr.mean())
    assert run.data.metrics["evaluate.telea.ssim_mean"] == pytest.approx(
        summary.query("method == 'telea' and group_type == 'overall'")["ssim_mean"].iloc[0]
    )
    pm = per_image[per_image.method == "patchmatch"].set_index("mask_id")
    paired = model_psnr.set_axis(per_image.loc[per_image.method == "model", "mask_id"])
    assert run.data.metrics["evaluate.model_vs_patchmatch.psnr_diff"] == pytest.approx(
        (paired.loc[pm.index] - pm["psnr"]).mean()
    )
    # The large-hole masks: their own rows (summary files, MLflow metrics), 5 sampled images.
    large = pd.read_csv(
        next((reporting / "large_holes" / "evaluation_per_image.csv").iterdir())
        / "evaluation_per_image.csv"
    )
    assert sorted(large.loc[large.method == "model", "mask_id"]) == sorted(large_index.mask_id)
    assert len(large_index) == 5 and set(large_index.image_id) <= set(split.image_id)
    assert run.data.metrics["evaluate_large_holes.model.psnr_mean"] == pytest.approx(
        large.loc[large.method == "model", "psnr"].mean()
    )
    # The model's score, recorded for `auto` model selection under its weights' digest.
    from aerial_inpainting.model_selection import read_records, weights_digest

    (record,) = read_records(reporting / "model_scores")
    assert record["weights_digest"] == weights_digest(_tiny_model())
    assert record["scores"]["psnr_mean"] == pytest.approx(model_psnr.mean())
    assert record["split"]["n_images"] == len(split) and record["split"]["split_seed"] == 42
    artefacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {
        "evaluation/evaluation_per_image.csv",
        "evaluation/evaluation_summary.csv",
        "evaluation/evaluation_summary.md",
        "evaluation/metrics_vs_hole_ratio.png",
        "evaluation/evaluation_examples.png",
    } <= artefacts


@pytest.mark.slow
def test_evaluate_pipeline_scores_the_pretrained_model(kedro_project: Path, capsys) -> None:
    """`--params evaluate.model=pretrained`: the shipped model, no trained model needed."""
    from conftest import run_pipeline

    from aerial_inpainting.pretrained_model import load_pretrained

    images, split, masks, index = _tiny_data()
    with _catalog(kedro_project) as catalog:
        for name, data in (
            ("images", images),
            ("test_split", split),
            ("test_masks", masks),
            ("test_mask_index", index),
        ):
            catalog.save(name, data)
        large = generate_large_test_masks(
            split, SIZE, {"seed": 5, "min_fraction": 0.25, "max_fraction": 0.5, "n_images": 2}
        )
        for name, data in zip(
            ("test_masks_large", "test_mask_index_large", "test_split_large"), large, strict=True
        ):
            catalog.save(name, data)
    run_pipeline(kedro_project, "evaluate", {"evaluate": {**PARAMS, "model": "pretrained"}})
    assert "Mean PSNR: " in capsys.readouterr().out
    assert not (kedro_project / "data/06_models/pconv_unet.safetensors").exists()

    reporting = kedro_project / "data" / "08_reporting" / "evaluation_per_image.csv"
    per_image = pd.read_csv(next(reporting.iterdir()) / "evaluation_per_image.csv")
    scored = per_image[per_image.method == "model"].set_index("mask_id")
    # Reference: the shipped model called directly on one image, scored by scikit-image.
    model = load_pretrained()
    row = index.iloc[3]
    gt = images[split.set_index("image_id").loc[row["image_id"], "row"]]
    valid = masks[row["mask_id"]].astype(bool)
    x = torch.from_numpy(gt).permute(2, 0, 1)[None].float() / 255
    m = torch.from_numpy(valid)[None, None].float()
    with torch.no_grad():
        out = model(x * m, m)[0].clamp(0, 1).mul(255).round().permute(1, 2, 0).numpy()
    comp = np.where(valid[..., None], gt / 255.0, out / 255.0)
    expected = peak_signal_noise_ratio(gt / 255.0, comp, data_range=1.0)
    assert scored.loc[row["mask_id"], "psnr"] == pytest.approx(expected, abs=0.05)


@pytest.mark.parametrize("channels_last", [True, False])
def test_predict_images_equals_a_direct_forward_pass(channels_last: bool) -> None:
    """Batched, channels_last prediction = the model called on each image in NCHW, rounded."""
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    masks = rng.random((5, 32, 32)) > 0.3
    reference_model = _tiny_model()
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).double() / 255.0
        m = torch.from_numpy(masks).double()[:, None]
        want = reference_model.double()(x * m, m).clamp(0, 1).mul(255).round()
    got = nodes.predict_images(
        _tiny_model(), images, masks, torch.device("cpu"), 2, channels_last=channels_last
    )
    diff = np.abs(got.astype(int) - want.permute(0, 2, 3, 1).numpy().astype(int))
    assert diff.max() <= 1  # float32 against float64: a rounding step at most
    assert (diff == 0).mean() > 0.99


def test_holes_beyond_the_networks_reach_are_predicted_not_left_black() -> None:
    """A hole wider than the network's reach: its middle pixels get the shared inference
    path's prediction (issue 14), never the partial convolution's default 0."""
    from aerial_inpainting.inference import fill_holes

    model = _tiny_model()
    rng = np.random.default_rng(0)
    size = 96
    images = rng.integers(40, 220, size=(2, size, size, 3), dtype=np.uint8)
    masks = np.ones((2, size, size), dtype=bool)
    masks[0, 3:93, 3:93] = False  # wider than a depth-3 network reaches
    masks[1, 10:14, 10:14] = False  # within reach
    with torch.no_grad():
        x = torch.from_numpy(images[:1]).permute(0, 3, 1, 2).float() / 255
        m = torch.from_numpy(masks[:1, None]).float()
        _, reach = model.forward_with_mask(x * m, m)
    assert (reach[0].amax(0) == 0).any()  # the case is real: some hole pixels are unreached
    outputs = nodes.predict_images(model, images, masks, torch.device("cpu"), 2, progress=False)
    np.testing.assert_array_equal(
        outputs[0], fill_holes(model, images[0], masks[0], torch.device("cpu"))
    )
    direct = nodes.predict_images(
        model, images[1:], masks[1:], torch.device("cpu"), 1, progress=False
    )
    np.testing.assert_array_equal(outputs[1], direct[0])  # reached images: the plain forward pass
