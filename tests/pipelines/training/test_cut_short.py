"""A training run whose wall-time budget ends it before its steps: the run's MLflow name and
tags, the model file, the loss curve and the evaluation's headline all carry the steps it
actually trained (a tiny model; every step takes a known, fake wall time)."""

from __future__ import annotations

from types import SimpleNamespace

import mlflow
import pandas as pd
from kedro.io.core import Version
from matplotlib.figure import Figure
from support.training import steps_take

from aerial_inpainting.datasets import TorchModelDataset
from aerial_inpainting.evaluation import report
from aerial_inpainting.hooks import MlflowRunHook
from aerial_inpainting.pipelines.evaluate.nodes import report_headline
from aerial_inpainting.pipelines.training.nodes import train_model
from aerial_inpainting.tracking import loss_curve_figure, stage2_start


def _stage_lines(figure: Figure) -> list[list[float]]:
    """The x positions of the "stage 2 starts" lines, one list per axis."""
    return [
        [float(line.get_xdata()[0]) for line in ax.get_lines() if line.get_label() == label]
        for ax in figure.axes
        for label in ["stage 2 starts"]
    ]


def _summary() -> pd.DataFrame:
    """An evaluation summary of two test images, the model's and Telea's scores."""
    rows = [
        {"image_id": f"img{i}", "class_name": "Forest", "mask_id": f"test_{i:05d}",
         "hole_ratio": 0.15, "bucket": "0.1-0.2", "method": method, "psnr": psnr, "ssim": 0.8,
         "hole_psnr": 20.0, "hole_l1": 0.05, "ssim_raw": 0.7, "lpips": 0.25}
        for i, (method, psnr) in enumerate([("model", 23.0), ("model", 24.0), ("telea", 26.0),
                                            ("telea", 27.0)])
    ]  # fmt: skip
    return report.summarise(pd.DataFrame(rows))


class _Catalog(dict):
    def load(self, name: str):
        return self[name]


def _hook_for(params: dict) -> tuple[MlflowRunHook, SimpleNamespace]:
    """The run-naming hook, given a kedro-mlflow configuration and a run that trains."""
    config = SimpleNamespace(
        tracking=SimpleNamespace(
            experiment=SimpleNamespace(name="t"), run=SimpleNamespace(name=None)
        )
    )
    hook = MlflowRunHook()
    hook.after_context_created(SimpleNamespace(mlflow=config))
    hook.before_pipeline_run(
        {"pipeline_names": ["training"], "env": None},
        SimpleNamespace(all_outputs=lambda: {"model", "image_index"}),
        _Catalog(parameters={"training": params}),
    )
    return hook, config


def test_a_run_cut_short_by_its_budget_reports_the_steps_it_trained(
    tiny_inputs, make_params, monkeypatch, tmp_path, capsys
):
    # 6 s per step, a 0.5-minute (30 s) budget: 5 of the 10 + 5 steps; stage 2 from step 4
    # (the run's progress max(k / 15, 6 k / 30) reaches 10 / 15 after step k = 4).
    steps_take(monkeypatch, 6.0)
    params = make_params(steps_stage1=10, steps_stage2=5, max_minutes=0.5, val_every=0)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
        hook, config = _hook_for(params)
        assert config.tracking.run.name == "training | U-Net depth 2, 4-16 ch | 15 steps, 0.5 min"
        with mlflow.start_run(experiment_id=experiment, run_name=config.tracking.run.name) as run:
            outputs = train_model(**tiny_inputs, params=params)
            hook.after_node_run(SimpleNamespace(name="train_model"), dict(zip(
                ["model", "model_metadata", "training_history", "loss_curve", "training_grids",
                 "mlflow_model"], outputs, strict=True)))  # fmt: skip
    finally:
        mlflow.set_tracking_uri(None)
    model, metadata, history, figure, _, _ = outputs
    # the run's info and MLflow run
    assert metadata["info"]["final_step"] == 5 and metadata["info"]["cut_short"] is True
    data = mlflow.MlflowClient(uri).get_run(run.info.run_id).data
    assert data.tags["mlflow.runName"] == (
        "training | U-Net depth 2, 4-16 ch | 5 of 15 steps, cut short at 0.5 min"
    )
    assert data.tags["training.steps_trained"] == "5"
    assert data.tags["training.steps_configured"] == "15"
    assert data.tags["training.cut_short"] == "true"
    # the loss curve: the stage line where stage 2 began, the x axis over the 5 steps
    assert history["stage"].tolist() == [1, 1, 1, 1, 2]
    assert _stage_lines(figure) == [[4.0], [4.0]]
    assert all(ax.get_xlim() == (0.0, 5.0) for ax in figure.axes)
    assert figure.axes[0].get_title() == "Training losses (cut short: 5 of 15 steps)"
    # the model file carries it to the evaluation's headline
    path = tmp_path / "pconv_unet.safetensors"
    TorchModelDataset(str(path), version=Version(None, "v1")).save(model)
    loaded = TorchModelDataset(str(path), version=Version(None, None)).load()
    assert loaded.extra["training"] == {
        "steps": 5, "steps_configured": 15, "cut_short": True, "max_minutes": 0.5,
        "elapsed_minutes": 0.5,
    }  # fmt: skip
    capsys.readouterr()
    report_headline(_summary(), loaded)
    printed = capsys.readouterr().out.strip().splitlines()[-1]  # after any logging handler's
    assert printed.startswith("Mean PSNR: 23.50 ± 0.71 dB")
    assert printed.endswith(
        "(undertrained: 5 of 15 steps in the 0.5-minute budget; see training.max_minutes)"
    )


def test_a_model_without_a_cut_short_run_has_a_plain_headline(capsys):
    for extra in ({}, {"pretrained": {"name": "x"}}, {"training": {"cut_short": False}}):
        capsys.readouterr()
        report_headline(_summary(), SimpleNamespace(extra=extra))
        assert (
            capsys.readouterr().out.strip().splitlines()[-1].endswith("LPIPS 0.2500 ± 0.0000)")
        )  # Telea's bracket


def test_the_stage_line_is_where_the_history_says_stage_2_began():
    # logged every 10 steps; stage 1 up to the row of step 160, stage 2 from the row of 170
    steps = list(range(10, 240, 10))
    history = pd.DataFrame(
        {
            "step": steps,
            "stage": [1 if s <= 160 else 2 for s in steps],
            "loss_total": [1.0 / s for s in steps],
            "val_psnr": [20.0 if s % 50 == 0 else None for s in steps],
        }
    )
    assert stage2_start(history) == 160
    figure = loss_curve_figure(history, steps_configured=6000)
    assert _stage_lines(figure) == [[160.0], [160.0]]
    assert all(ax.get_xlim() == (0.0, 230.0) for ax in figure.axes)
    assert figure.axes[0].get_title() == "Training losses (cut short: 230 of 6000 steps)"
    # a run that never reached stage 2 has no stage line; one that trained it all no note
    stage1 = history.assign(stage=1)
    assert stage2_start(stage1) is None
    figure = loss_curve_figure(stage1, steps_configured=230)
    assert _stage_lines(figure) == [[], []] and figure.axes[0].get_title() == "Training losses"
