"""LPIPS in the evaluation: equal to the reference `lpips` package, in every report, and missing
(NaN, one warning) rather than fatal when the ImageNet weights are absent."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import conf_parameters

from aerial_inpainting import pretrained
from aerial_inpainting.evaluation import perceptual, report
from aerial_inpainting.imaging.buckets import bucket_of
from aerial_inpainting.pipelines.evaluate import nodes

SIZE = 40
N = 6
PARAMS = conf_parameters("evaluate") | {
    "seed": 0,
    "metrics_batch_size": 4,
    "num_workers": 1,
    "progress_bar": False,
    "biharmonic_sample": 3,
    "lpips_net": "alex",
}


def _reference_lpips(net: str):
    """The reference package's LPIPS, its backbone loaded here from the converted file."""
    import lpips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, version="0.1", pnet_rand=True, verbose=False).eval()
    state = pretrained.load_converted(perceptual.LPIPS_NETS[net])
    model.net.load_state_dict(
        {
            n: state[f"features.{n.split('.')[1]}.{n.split('.')[2]}"]
            for n, _ in model.net.named_parameters()
        }
    )
    return model


def _reference_values(model, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """LPIPS.forward(in0, in1, normalize=True) of uint8 (N, H, W, 3) images, float64."""
    x0 = torch.from_numpy(a).permute(0, 3, 1, 2).double() / 255.0
    x1 = torch.from_numpy(b).permute(0, 3, 1, 2).double() / 255.0
    with torch.no_grad():
        return model.double()(x0, x1, normalize=True).flatten().numpy()


def _data() -> tuple[np.ndarray, pd.DataFrame, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    images = np.stack(
        [
            np.clip(
                np.stack([xx * 5 + 15 * k, yy * 4, 100 + 20 * np.sin(xx / 3.0)], -1)
                + rng.normal(0, 10, (SIZE, SIZE, 3)),
                0,
                255,
            )
            for k in range(N)
        ]
    ).astype(np.uint8)
    masks = np.ones((N, SIZE, SIZE), dtype=bool)
    for k in range(N):
        side = 5 + 3 * k
        masks[k, 4 : 4 + side, 6 : 6 + side] = False
    ratios = 1 - masks.mean(axis=(1, 2))
    eval_set = pd.DataFrame(
        {
            "image_id": [f"Forest_{k:03d}" for k in range(N)],
            "class_name": ["Forest"] * N,
            "row": np.arange(N),
            "mask_id": [f"test_{k:05d}" for k in range(N)],
            "hole_ratio": ratios,
            "bucket": [bucket_of(float(r)) for r in ratios],
        }
    )
    outputs = rng.integers(0, 256, (N, SIZE, SIZE, 3), dtype=np.uint8)
    return images, eval_set, masks, outputs


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_scorer_equals_the_reference_package(imagenet_weights, net) -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (3, 48, 56, 3), dtype=np.uint8)
    b = a.copy()
    b[:, 10:30, 5:40] = rng.integers(0, 256, (3, 20, 35, 3), dtype=np.uint8)
    b[2] = a[2]  # identical pair: 0
    scorer = perceptual.LPIPSScorer(net, batch_size=2)
    got = scorer.distance(scorer.features(a), scorer.features(b))
    expected = _reference_values(_reference_lpips(net), a, b)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert got[2] == 0.0 and got[0] > 0.01


@pytest.mark.parametrize("workers", [1, 2])
def test_every_method_gets_the_reference_lpips_of_its_composite(imagenet_weights, workers) -> None:
    from aerial_inpainting.evaluation import baselines

    images, eval_set, masks, outputs = _data()
    per_image = nodes.compute_metrics(
        images, eval_set, masks, outputs, {**PARAMS, "num_workers": workers}
    )
    reference = _reference_lpips("alex")
    for method in ["model", *PARAMS["baselines"]]:
        rows = per_image[per_image.method == method]
        assert len(rows) == (3 if method == "biharmonic" else N)
        idx = eval_set.reset_index().set_index("mask_id").loc[rows["mask_id"], "index"].to_numpy()
        if method == "model":
            filled = outputs[idx]
        else:
            fill = baselines.get_baseline(method, PARAMS)
            filled = np.stack([fill(images[i], masks[i].astype(np.uint8)) for i in idx])
        comp = np.where(masks[idx][..., None], images[idx], filled)
        expected = _reference_values(reference, comp, images[idx])
        np.testing.assert_allclose(rows["lpips"].to_numpy(), expected, atol=1e-4, rtol=0)
    # The random "model" output is perceptually worse than a diffusion fill.
    means = per_image.groupby("method")["lpips"].mean()
    assert means["model"] > means["telea"]

    summary, markdown, metrics = nodes.summarise_evaluation(per_image, PARAMS)
    assert "LPIPS, composite (lower = better) per hole-ratio bucket" in markdown
    assert "AlexNet backbone" in markdown
    assert metrics["model.lpips_mean"]["value"] == pytest.approx(means["model"])
    bucket = eval_set["bucket"].iloc[-1]
    assert f"telea.bucket_{bucket}.lpips_mean" in metrics
    text = report.headline(summary)
    assert f"Mean LPIPS: {means['model']:.4f} ± " in text
    assert f"LPIPS {means['telea']:.4f} ± " in text
    fig = report.plot_metrics_vs_hole_ratio(per_image)
    assert "LPIPS, composite (lower = better)" in [ax.get_ylabel() for ax in fig.axes]


def test_without_weights_lpips_is_nan_with_one_warning(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "empty-cache"))
    monkeypatch.setattr(perceptual, "_SCORERS", {})
    images, eval_set, masks, outputs = _data()
    with caplog.at_level(logging.WARNING):
        per_image = nodes.compute_metrics(images, eval_set, masks, outputs, PARAMS)
    warned = [r for r in caplog.records if "LPIPS" in r.getMessage()]
    assert len(warned) == 1 and "aerial-inpainting weights fetch" in warned[0].getMessage()
    assert per_image["lpips"].isna().all() and per_image["psnr"].notna().all()
    summary, markdown, metrics = nodes.summarise_evaluation(per_image, PARAMS)
    assert "LPIPS was not computed" in markdown
    assert "Mean LPIPS: n/a" in report.headline(summary)
    assert not any("lpips" in key for key in metrics)


def test_lpips_off_and_too_small_images(monkeypatch, caplog) -> None:
    assert perceptual.lpips_available("none") is False
    with caplog.at_level(logging.WARNING):
        assert perceptual.lpips_available("alex", (16, 16)) is False
    assert "smaller than the 31 pixels" in caplog.text
    with pytest.raises(ValueError, match="lpips_net"):
        perceptual.lpips_available("squeeze")
