"""notebooks/inpainting_tour.ipynb runs top to bottom (nbclient), with and without outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "inpainting_tour.ipynb"

TINY_RUN = {
    "data_processing": {
        "image_size": 32,
        "num_workers": 1,
        "progress_bar": False,
        "synthetic": {"images_per_class": 4, "classes": ["Forest", "Lake"]},
        "masks": {"train_pool_size": 6},
    },
    "training": {
        "device": "cpu",
        "model": {"depth": 2, "base_channels": 4, "max_channels": 8},
        "train_size": 16,
        "batch_size": 2,
        "steps_stage1": 2,
        "steps_stage2": 1,
        "vgg_weights": "none",
        "vgg_offline_fallback": "disable",
        "num_workers": 0,
        "log_every": 1,
        "val_every": 2,
        "val_images": 1,
        "progress_bar": False,
    },
    "evaluate": {
        "device": "cpu",
        "progress_bar": False,
        "baselines": ["mean_fill"],
        "biharmonic_sample": 2,
        "num_examples": 1,
    },
}


def _execute(project: Path) -> str:
    """Run a copy of the notebook with the project as working directory; return its text output."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(project)}},
    )
    client.execute()
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", ""))
            texts.append(str(output.get("data", {}).get("text/plain", "")))
            if "image/png" in output.get("data", {}):
                texts.append("<figure>")
    return "\n".join(texts)


def test_notebook_runs_before_anything_was_produced(kedro_project):
    text = _execute(kedro_project)
    assert "`model` is not available yet" in text
    assert "`evaluation_summary` is not available yet" in text
    assert "`inpaint_previews` is not available yet" in text
    assert "<figure>" not in text


def test_notebook_runs_after_a_tiny_kedro_run(kedro_project, kedro_runner):
    kedro_runner(kedro_project, "__default__", TINY_RUN)
    text = _execute(kedro_project)
    assert "`model` is not available" not in text
    assert "`test_masks` is not available" not in text
    assert "`evaluation_summary` is not available" not in text
    assert "mean_fill" in text  # the metrics table
    assert text.count("<figure>") >= 2  # masks, model results
