"""Issue 14, part 4: the MLflow store, checkpoints and grids follow the project root."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from mlflow.tracking._tracking_service import utils as tracking_utils
from support.images import write_png

from aerial_inpainting import project_paths
from aerial_inpainting.inpaint_cli import main
from aerial_inpainting.project_paths import (
    project_tracking_uri,
    resolve_in_project,
    resolve_sqlite_uri,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _project_with_real_conf(root: Path) -> Path:
    """A project copy whose mlflow.yml is the repository's own (relative sqlite:///mlflow.db)."""
    root.mkdir(parents=True)
    shutil.copy2(REPO_ROOT / "pyproject.toml", root / "pyproject.toml")
    shutil.copytree(REPO_ROOT / "conf" / "base", root / "conf" / "base")
    (root / "conf" / "local").mkdir()
    (root / "src").mkdir()
    (root / "notebooks").mkdir()
    (root / ".telemetry").write_text("consent: false\n")
    return root


@pytest.fixture
def no_tracking_uri(monkeypatch):
    """As in a fresh shell: no MLFLOW_TRACKING_URI, no URI set in this process."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    yield
    project_paths.set_session_root(None)


def test_relative_paths_resolve_against_the_root(tmp_path):
    root = tmp_path / "proj"
    assert resolve_sqlite_uri("sqlite:///mlflow.db", root) == f"sqlite:///{root}/mlflow.db"
    assert resolve_sqlite_uri("sqlite:////abs/m.db", root) == "sqlite:////abs/m.db"
    assert resolve_sqlite_uri("http://server:5000", root) == "http://server:5000"
    assert resolve_in_project("data/06_models/checkpoints", root) == str(
        root / "data/06_models/checkpoints"
    )
    assert resolve_in_project("/abs/dir", root) == "/abs/dir"
    assert resolve_in_project(None, root) is None


def test_kedro_session_from_a_subdirectory_uses_the_root_store(
    tmp_path, monkeypatch, no_tracking_uri
):
    project = _project_with_real_conf(tmp_path / "proj")
    monkeypatch.chdir(project / "notebooks")
    bootstrap_project(project)
    with KedroSession.create(project_path=project) as session:
        session.load_context()
        assert project_paths.project_root() == project.resolve()
        assert mlflow.get_tracking_uri() == f"sqlite:///{project.resolve()}/mlflow.db"
        # a parameter's relative path, as the training node resolves checkpoint_dir
        assert resolve_in_project("data/06_models/checkpoints") == str(
            project.resolve() / "data/06_models/checkpoints"
        )
    assert (project / "mlflow.db").is_file()
    assert sorted(p.name for p in (project / "notebooks").iterdir()) == []  # no stray store
    assert project_tracking_uri(project) == f"sqlite:///{project.resolve()}/mlflow.db"


def test_cli_mlflow_uri_never_creates_a_store(tmp_path, monkeypatch, capsys, no_tracking_uri):
    project = _project_with_real_conf(tmp_path / "proj")
    image = write_png(tmp_path / "i.png", np.full((8, 8, 3), 90, np.uint8))
    mask_array = np.full((8, 8), 255, np.uint8)
    mask_array[2:4, 2:4] = 0
    mask = write_png(tmp_path / "m.png", mask_array)
    args = [str(image), str(mask), "-o", str(tmp_path / "o.png"), "--model", "runs:/abc/model"]
    for cwd, extra in ((project / "notebooks", []), (tmp_path, ["--project-dir", str(project)])):
        monkeypatch.chdir(cwd)
        assert main([*args, *extra]) == 1
        err = capsys.readouterr().err
        assert "no MLflow store" in err and str(project / "mlflow.db") in err
    monkeypatch.chdir(tmp_path)
    assert main(args) == 1  # outside any project, no tracking URI: an error, not a new store
    assert "MLFLOW_TRACKING_URI" in capsys.readouterr().err
    assert not list(tmp_path.rglob("mlflow.db")) and not list(tmp_path.rglob("mlruns"))
