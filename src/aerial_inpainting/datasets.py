"""Custom Kedro datasets of the project.

Sections (append new datasets as a new headed section at the end):
* data_processing: AerialFolderDataset, ImageArrayDataset, MaskFolderDataset.
* evaluate: VersionedMlflowArtifactDataset (versioned report files logged to MLflow).
* inpaint: RasterFileDataset (a raster file handed over by path, for windowed processing).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from kedro.io.core import AbstractDataset, AbstractVersionedDataset, DatasetError, Version
from PIL import Image

from aerial_inpainting.imaging.io import IMAGE_EXTENSIONS

# ============================================================================ data_processing

_IGNORED_NAMES = frozenset({"Thumbs.db", "desktop.ini"})


def natural_key(name: str) -> tuple:
    """Sort key putting ``2.jpg`` before ``10.jpg``; ties broken by the raw name."""
    parts = re.split(r"(\d+)", name)
    return (tuple((0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in parts), name)


@dataclass
class AerialListing:
    """What a Kaggle-layout folder holds, without decoding anything.

    ``entries`` are (class_name, absolute file path) of candidate images in sorted order;
    ``problems`` are rows of the data-quality report (source_file relative to ``root``,
    class_name, problem, action); ``n_files`` counts every non-hidden file seen, so
    "empty" (fall back to synthetic) and "full of junk" (an error) can be told apart.
    """

    root: str
    exists: bool
    entries: list[tuple[str, str]] = field(default_factory=list)
    problems: list[dict[str, str]] = field(default_factory=list)
    n_files: int = 0

    @property
    def data_source(self) -> str:
        return "real" if self.entries else "missing"

    @property
    def is_empty(self) -> bool:
        """True when there is nothing at all to read: missing root or no file in it."""
        return self.n_files == 0

    def relative(self, path: str | Path) -> str:
        """A path as stored in reports and the index: relative to the root, POSIX style."""
        return Path(path).relative_to(self.root).as_posix()


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and path.name not in _IGNORED_NAMES


def list_aerial_folder(root: str | Path) -> AerialListing:
    """List ``root/<Class>/<file>`` and record layout problems; never opens an image."""
    root = Path(root)
    listing = AerialListing(root=str(root), exists=root.is_dir())
    if not listing.exists:
        return listing

    def problem(path: Path, class_name: str, what: str, action: str = "skipped") -> None:
        listing.problems.append(
            {
                "source_file": listing.relative(path),
                "class_name": class_name,
                "problem": what,
                "action": action,
            }
        )

    for child in sorted(filter(_visible, root.iterdir()), key=lambda p: natural_key(p.name)):
        if child.is_file():
            listing.n_files += 1
            problem(child, "", "file outside a class folder (expected <root>/<Class>/<file>)")
            continue
        if not child.is_dir():
            continue
        class_name = child.name
        members = sorted(filter(_visible, child.iterdir()), key=lambda p: natural_key(p.name))
        n_images = 0
        for member in members:
            if member.is_dir():
                problem(member, class_name, "stray subfolder inside a class folder (not read)")
                listing.n_files += sum(1 for p in member.rglob("*") if p.is_file() and _visible(p))
            elif member.suffix.lower() not in IMAGE_EXTENSIONS:
                listing.n_files += 1
                problem(
                    member,
                    class_name,
                    f"not an image file extension ({member.suffix or 'none'}); "
                    f"accepted: {', '.join(sorted(IMAGE_EXTENSIONS))}",
                )
            else:
                listing.n_files += 1
                n_images += 1
                listing.entries.append((class_name, str(member)))
        if n_images == 0:
            problem(child, class_name, "class folder holds no image file", "class ignored")
    return listing


class AerialFolderDataset(AbstractDataset[None, AerialListing]):
    """The raw Kaggle download, read-only: ``path/<Class>/<NNN>.jpg``.

    ``load`` returns an AerialListing (file paths only; decoding happens in the ingest
    node, in parallel). A missing or empty folder gives an empty listing so the pipeline
    can fall back to synthetic data. Raw files are never modified, moved or deleted.
    """

    def __init__(self, path: str, metadata: dict[str, Any] | None = None):
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> AerialListing:
        return list_aerial_folder(self._path)

    def save(self, data: Any) -> None:
        raise DatasetError(f"AerialFolderDataset({self._path}) is raw input and read-only")

    def _exists(self) -> bool:
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}


class ImageArrayDataset(AbstractDataset[np.ndarray, np.ndarray]):
    """A uint8 (N, H, W, 3) image stack as one ``.npy`` file, memory-mapped on load.

    Saving writes a temporary file next to the target and renames it, so readers never
    see a half-written array.
    """

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> np.ndarray:
        return np.load(self._filepath, mmap_mode="r")

    def save(self, data: np.ndarray) -> None:
        array = np.asarray(data)
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
            raise DatasetError(
                f"ImageArrayDataset({self._filepath}) expects uint8 (N, H, W, 3), "
                f"got {array.dtype} {array.shape}"
            )
        self._filepath.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self._filepath.name}.", suffix=".tmp", dir=self._filepath.parent
        )
        try:
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
            os.replace(tmp, self._filepath)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}


_MASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def read_binary_mask(path: str | Path) -> np.ndarray:
    """Read a mask PNG as uint8 (H, W) with 1 = valid (white) and 0 = hole (black)."""
    path = Path(path)
    with Image.open(path) as image:
        mode = image.mode
        array = np.asarray(image)
    if mode == "1":
        return array.astype(np.uint8)
    if mode == "L":
        if not np.isin(array, (0, 255)).all():
            values = np.unique(array)
            raise DatasetError(
                f"Mask {path} is not binary: grey levels {values[:8].tolist()}... found, "
                f"expected only 0 (hole) and 255 (valid)"
            )
        return (array == 255).astype(np.uint8)
    raise DatasetError(f"Mask {path} has image mode {mode!r}; expected a 1-bit or 8-bit grey PNG")


class MaskFolderDataset(AbstractVersionedDataset[dict[str, np.ndarray], dict[str, np.ndarray]]):
    """A folder of binary PNG masks, one per mask id; optionally versioned.

    On disk: ``<mask_id>.png``, 1-bit, white = valid, black = hole (lossless, never
    resized). In memory: dict mask_id -> uint8 (H, W), 1 = valid, sorted by id. With
    ``versioned: true`` the folder is ``path/<version>/<basename>/``. A save is written to
    a hidden temporary folder, then renamed into place.
    """

    def __init__(
        self,
        path: str,
        version: Version | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        super().__init__(PurePosixPath(Path(path).as_posix()), version)
        self.metadata = metadata

    def load(self) -> dict[str, np.ndarray]:
        folder = Path(str(self._get_load_path()))
        if not folder.is_dir():
            raise DatasetError(f"Mask folder {folder} does not exist")
        files = sorted(folder.glob("*.png"), key=lambda p: p.stem)
        return {file.stem: read_binary_mask(file) for file in files}

    def save(self, data: dict[str, np.ndarray]) -> None:
        target = Path(str(self._get_save_path()))
        masks = {}
        for mask_id, mask in data.items():
            if not _MASK_ID.match(str(mask_id)):
                raise DatasetError(f"Mask id {mask_id!r} is not a safe file name")
            array = np.asarray(mask)
            if array.ndim != 2 or not np.isin(array, (0, 1)).all():
                raise DatasetError(
                    f"Mask {mask_id!r} must be a 2-D array of 0/1, got {array.dtype} {array.shape}"
                )
            masks[str(mask_id)] = array.astype(bool)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            for mask_id in sorted(masks):
                Image.fromarray(masks[mask_id]).save(
                    tmp / f"{mask_id}.png", format="PNG", optimize=False
                )
            if target.exists():  # unversioned overwrite: move the old folder out of the way
                old = target.parent / f".{target.name}.old-{uuid.uuid4().hex}"
                os.replace(target, old)
                shutil.rmtree(old)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _exists(self) -> bool:
        try:
            return Path(str(self._get_load_path())).is_dir()
        except DatasetError:
            return False

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._filepath), "version": self._version}


# ============================================================================ training


class TorchModelDataset(AbstractVersionedDataset[Any, Any]):
    """A trained :class:`~aerial_inpainting.pconv.unet.PConvUNet` as one safetensors file.

    The file holds the network's config and weights (``pconv.checkpoint.save_model``), so
    loading rebuilds the model without any other configuration; written atomically. With
    ``versioned: true`` the file is ``filepath/<version>/<basename>``.
    ``load_args: {map_location: cuda}`` loads straight onto a device (default CPU).
    """

    def __init__(
        self,
        filepath: str,
        version: Version | None = None,
        load_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        super().__init__(PurePosixPath(Path(filepath).as_posix()), version)
        self._load_args = dict(load_args or {})
        self.metadata = metadata

    def load(self) -> Any:
        from aerial_inpainting.pconv.checkpoint import load_model

        try:
            path = Path(str(self._get_load_path()))
        except DatasetError as exc:  # versioned and nothing saved yet (added for `evaluate`)
            raise DatasetError(
                "No trained model found: run `kedro run` (or `kedro run --pipelines=training`) "
                f"first ({exc})"
            ) from exc
        if not path.is_file():
            raise DatasetError(f"Model file {path} does not exist; run the training pipeline first")
        return load_model(path, map_location=self._load_args.get("map_location", "cpu"))

    def save(self, data: Any) -> None:
        from aerial_inpainting.pconv.checkpoint import save_model

        if not hasattr(data, "config") or not hasattr(data.config, "to_dict"):
            raise DatasetError(
                f"TorchModelDataset {self._filepath}: expected a PConvUNet, got {type(data).__name__}"
            )
        save_model(Path(str(self._get_save_path())), data, extra=getattr(data, "extra", None))

    def _exists(self) -> bool:
        try:
            return Path(str(self._get_load_path())).is_file()
        except DatasetError:
            return False

    def _describe(self) -> dict[str, Any]:
        return {
            "filepath": str(self._filepath),
            "version": self._version,
            "load_args": self._load_args,
        }


class PretrainedModelDataset(AbstractDataset[None, Any]):
    """The pretrained model shipped with the package (read-only; ``MODEL_CARD.md``).

    Loads :func:`aerial_inpainting.pretrained_model.load_pretrained` (sha256 verified,
    safetensors, no unpickling). It replaces the catalog's ``model`` for a run whose
    ``evaluate.model`` / ``inpaint.model`` select ``pretrained``
    (:class:`aerial_inpainting.hooks.PretrainedModelHook`). Saving is refused: the shipped
    files are rebuilt with ``python -m aerial_inpainting.pretrained_model build FILE``.
    """

    def __init__(
        self,
        name: str,
        load_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        self._name = name
        self._load_args = dict(load_args or {})
        self.metadata = metadata

    def load(self) -> Any:
        from aerial_inpainting.pretrained_model import load_pretrained

        return load_pretrained(self._name, map_location=self._load_args.get("map_location", "cpu"))

    def save(self, data: Any) -> None:
        raise DatasetError(
            f"the pretrained model {self._name!r} is read-only (it ships with the package); "
            "a run that trains a model saves it to `model`. To replace the shipped files: "
            "python -m aerial_inpainting.pretrained_model build MODEL_FILE"
        )

    def _exists(self) -> bool:
        from aerial_inpainting.pretrained_model import pretrained_paths

        return all(path.is_file() for path in pretrained_paths(self._name))

    def _describe(self) -> dict[str, Any]:
        return {"name": self._name, "load_args": self._load_args}


class ModelFileDataset(AbstractDataset[None, Any]):
    """One model file named by its path (``evaluate.model=<path>``), read-only.

    Loads :func:`aerial_inpainting.pconv.checkpoint.load_model` (safetensors, or a checkpoint
    read with ``weights_only=True``: no code from the file runs). Saving is refused.
    """

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> Any:
        from aerial_inpainting.pconv.checkpoint import load_model

        return load_model(self._filepath)

    def save(self, data: Any) -> None:
        raise DatasetError(f"{self._filepath}: a model file chosen by its path is read-only")

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}


# ============================================================================ evaluate


class VersionedMlflowArtifactDataset(AbstractVersionedDataset):
    """kedro-mlflow's ``MlflowArtifactDataset`` around a dataset versioned like the rest of the catalog.

    Declared with ``versioned: true`` at the top level (not inside ``dataset``), it gets the
    run's :class:`Version` from Kedro and hands it to the wrapped dataset, which is saved to
    ``filepath/<version>/<name>`` and logged as an artefact of the active MLflow run. Why not
    ``MlflowArtifactDataset`` with a versioned inner dataset: kedro-mlflow gives that inner
    dataset its own save timestamp, and Kedro refuses a catalog whose versioned datasets
    disagree ("All datasets in the catalog must have the same save version").
    """

    def __new__(  # type: ignore[misc]
        cls,
        dataset: str | dict[str, Any],
        artifact_path: str | None = None,
        run_id: str | None = None,
        credentials: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        version: Version | None = None,
    ) -> AbstractVersionedDataset:
        from kedro_mlflow.io.artifacts import MlflowArtifactDataset

        config = dict(dataset) if isinstance(dataset, dict) else {"type": dataset}
        config["versioned"] = version is not None
        wrapped = MlflowArtifactDataset(
            dataset=config,
            run_id=run_id,
            artifact_path=artifact_path,
            credentials=credentials,
            metadata=metadata,
        )
        if version is not None:
            wrapped._version = version  # the catalog's version, before anything is saved
        return wrapped


# ============================================================================ inpaint


class RasterFileDataset(AbstractDataset[str, str]):
    """A raster file (GeoTIFF, ...) passed by path: rasters of any size are read and written
    window by window by :func:`aerial_inpainting.geotiff.inpaint_raster`, never loaded whole.

    ``load`` returns the file's path (str). ``save`` takes the path of a finished file
    (written by the node in a temporary folder) and moves it to ``filepath``, so a
    half-written raster never appears there. Use inside a ``PartitionedDataset``.
    """

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> str:
        if not self._filepath.is_file():
            raise DatasetError(f"RasterFileDataset: {self._filepath} does not exist")
        return str(self._filepath)

    def save(self, data: str | os.PathLike) -> None:
        source = Path(data)
        if not source.is_file():
            raise DatasetError(f"RasterFileDataset: nothing to save, {source} is not a file")
        self._filepath.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(source), self._filepath)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
