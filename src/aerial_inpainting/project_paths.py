"""Paths that follow the Kedro project, not the working directory.

``kedro run`` works from any subdirectory of the project; Kedro resolves the catalog's
relative paths against the project root, but a relative path elsewhere (a parameter, the
MLflow tracking URI ``sqlite:///mlflow.db``) would resolve against the working directory and
scatter a second MLflow store, checkpoints and grids under it. Everything here resolves
against the project root instead:

* :class:`ProjectConfigLoader` (``settings.CONFIG_LOADER_CLASS``) rewrites a relative
  ``sqlite:///<file>`` tracking/registry URI in ``mlflow.yml`` to the file under the project
  root (kedro-mlflow already does so for plain relative paths and the artifact location);
* :func:`project_root` is the root of the running session (recorded by
  :class:`~aerial_inpainting.hooks.ProjectRootHook`), else the Kedro project holding the
  working directory; :func:`resolve_in_project` makes a parameter's relative path absolute
  against it;
* :func:`project_tracking_uri` is what ``aerial-inpaint --model runs:/...`` uses.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kedro.config import OmegaConfigLoader

_SESSION_ROOT: Path | None = None  # set by hooks.ProjectRootHook for the running session


def set_session_root(root: str | os.PathLike | None) -> None:
    """Record the project root of the Kedro session being run (``None`` forgets it)."""
    global _SESSION_ROOT
    _SESSION_ROOT = Path(root).resolve() if root is not None else None


def find_project(start: str | os.PathLike | None = None) -> Path | None:
    """The Kedro project (``pyproject.toml`` with ``[tool.kedro]``) containing ``start`` (cwd)."""
    from kedro.utils import find_kedro_project

    return find_kedro_project(Path(start or Path.cwd()).resolve())


def project_root() -> Path:
    """The running session's project root, else the project holding the cwd, else the cwd."""
    if _SESSION_ROOT is not None:
        return _SESSION_ROOT
    return find_project() or Path.cwd().resolve()


def resolve_in_project(path: str | os.PathLike | None, root: Path | None = None) -> str | None:
    """``path`` made absolute against the project root (absolute paths and None unchanged)."""
    if path is None or str(path) == "":
        return None if path is None else str(path)
    candidate = Path(os.path.expanduser(str(path)))
    if candidate.is_absolute():
        return str(candidate)
    return str((root or project_root()) / candidate)


def resolve_sqlite_uri(uri: Any, root: Path) -> Any:
    """``sqlite:///relative.db`` -> ``sqlite:////<root>/relative.db``; anything else unchanged."""
    prefix = "sqlite:///"
    if not isinstance(uri, str) or not uri.startswith(prefix):
        return uri
    target = uri[len(prefix) :]
    if target.startswith("/") or target in ("", ":memory:") or Path(target).is_absolute():
        return uri
    return prefix + str((root / target).resolve())


class ProjectConfigLoader(OmegaConfigLoader):
    """``OmegaConfigLoader`` whose ``mlflow`` config has SQLite URIs under the project root."""

    def __getitem__(self, key: str) -> Any:
        config = super().__getitem__(key)
        if key == "mlflow" and isinstance(config, dict):
            root = Path(str(self.conf_source)).resolve().parent
            server = config.get("server")
            if isinstance(server, dict):
                for name in ("mlflow_tracking_uri", "mlflow_registry_uri"):
                    server[name] = resolve_sqlite_uri(server.get(name), root)
        return config


def project_tracking_uri(root: str | os.PathLike, env: str | None = None) -> str | None:
    """The MLflow tracking URI the project's ``conf/`` declares (SQLite files under ``root``).

    ``env``: the Kedro environment overlaid on ``base`` (``local`` by default, as ``kedro
    run``). Returns None when the project declares none.
    """
    from aerial_inpainting import settings

    root = Path(root).resolve()
    args = dict(settings.CONFIG_LOADER_ARGS)
    if not (root / "conf" / (env or args.get("default_run_env", "local"))).is_dir():
        env, args["default_run_env"] = None, args.get("base_env", "base")  # base alone
    loader = ProjectConfigLoader(conf_source=str(root / "conf"), env=env, **args)
    try:
        config = loader["mlflow"]
    except KeyError:
        return None
    uri = (config.get("server") or {}).get("mlflow_tracking_uri")
    if uri is None:
        return None
    if "://" not in str(uri) and not str(uri).startswith(("databricks", "sqlite")):
        return (root / str(uri)).resolve().as_uri()  # a relative file store, as kedro-mlflow
    return str(uri)
