"""Multi-process training: one worker body for both ways of starting the processes.

Every process of a data-parallel run executes :func:`run_worker` on a :class:`WorkerJob`:
join the process group (:func:`join_process_group`), build the data (``job.data``), run the
shared loop :func:`aerial_inpainting.pconv.train.train`, and on rank 0 produce the outputs
(``job.outputs``). What differs between the two launch paths is only what those two steps are:

* the Kedro node with ``training.devices > 1`` calls :func:`train_multiprocess`: it writes the
  training inputs to a bundle (images memory-mapped, not copied, when they already are a
  ``.npy`` file), starts the processes with
  :func:`aerial_inpainting.pconv.distributed.launch_local` (torch's elastic launch, what
  ``torchrun --standalone`` does); the workers load the bundle and rank 0 saves the model
  file that the node reads back. Rank 0's reporting callbacks come from a picklable factory
  given by the caller (the node passes one that logs into its own MLflow run without
  starting or ending it, so a ``kedro run`` keeps one run);
* ``torchrun ... -m aerial_inpainting.torchrun_training`` (one node or several): every
  process builds the data from the project's catalog and rank 0 saves the training node's
  outputs to it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aerial_inpainting.pconv import distributed as ddp
from aerial_inpainting.pconv.checkpoint import atomic_torch_save, load_model, save_model
from aerial_inpainting.pconv.config import TrainConfig
from aerial_inpainting.pconv.data import AugmentConfig, InpaintingTrainDataset
from aerial_inpainting.pconv.train import (
    TrainingCallback,
    TrainingData,
    TrainResult,
    history_frame,
    train,
)

logger = logging.getLogger(__name__)

_BUNDLE_FILE = "bundle.pt"
_IMAGES_FILE = "images.npy"


CallbackFactory = Callable[[], Sequence[TrainingCallback]]


@dataclass
class WorkerJob:
    """What every process of a run does, in parts (picklable when the processes are spawned).

    ``params`` is ``params:training``; ``data()`` builds the loop's inputs (every rank);
    ``outputs(result)`` is rank 0's last step, its return value that of :func:`run_worker`;
    ``callbacks()`` makes rank 0's training callbacks.
    """

    params: dict[str, Any]
    data: Callable[[], TrainingData]
    outputs: Callable[[TrainResult], Any]
    callbacks: CallbackFactory | None = None
    log_level: str = "INFO"


# ------------------------------------------------------------------ data bundle
def save_bundle(directory: str | os.PathLike, data: TrainingData) -> Path:
    """Write the training inputs for worker processes: images as a memory-mappable .npy.

    A catalog ``images`` array that is already a memory-mapped ``.npy`` is referenced, not copied.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    train_set = data.train
    images_path = _npy_source(train_set.images)
    if images_path is None:
        images_path = directory / _IMAGES_FILE
        np.save(images_path, np.ascontiguousarray(train_set.images))
    payload = {
        "images_path": str(Path(images_path).resolve()),
        "rows": list(train_set.rows),
        "masks": list(train_set.masks),
        "mask_generator": train_set.mask_generator,  # a picklable functools.partial or None
        "size": train_set.size,
        "seed": train_set.seed,
        "augment": asdict(train_set.augment),
        "val_images": data.val_images,
        "val_masks": data.val_masks,
        "description": dict(data.description),
    }
    return atomic_torch_save(payload, directory / _BUNDLE_FILE)


def load_bundle(directory: str | os.PathLike) -> TrainingData:
    """Inverse of :func:`save_bundle` (images memory-mapped, read-only)."""
    path = Path(directory) / _BUNDLE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: training bundle not found")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    images = np.load(payload["images_path"], mmap_mode="r")
    train_set = InpaintingTrainDataset(
        images,
        payload["rows"],
        payload["masks"],
        size=payload["size"],
        seed=payload["seed"],
        augment=AugmentConfig(**payload["augment"]),
        mask_generator=payload["mask_generator"],
    )
    return TrainingData(
        train_set, payload["val_images"], payload["val_masks"], payload["description"]
    )


def _npy_source(images: np.ndarray) -> Path | None:
    """The .npy file behind a memory-mapped array that is that whole file's array, else None."""
    filename = getattr(images, "filename", None)
    if not filename or Path(filename).suffix != ".npy" or not Path(filename).is_file():
        return None
    try:
        on_disk = np.load(filename, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if on_disk.shape != images.shape or on_disk.dtype != images.dtype:
        return None
    if getattr(images, "offset", None) != getattr(on_disk, "offset", None):
        return None
    return Path(filename)


# ------------------------------------------------------------------ one process
def join_process_group(cfg: TrainConfig, log_level: str = "INFO") -> ddp.DistContext:
    """Join the group described by the environment (torchrun's), set up logging and threads."""
    ctx = ddp.init_distributed(backend=cfg.backend, device=cfg.device)
    root = logging.getLogger()
    if not root.handlers:  # spawned processes do not inherit Kedro's logging setup
        logging.basicConfig(format=f"[rank {ctx.rank}] %(levelname)s %(name)s: %(message)s")
    root.setLevel(log_level if ctx.is_main else logging.WARNING)
    if ctx.is_distributed and ctx.device.type == "cpu":
        torch.set_num_threads(ddp.cpu_threads_per_process())  # the processes share the cores
    return ctx


def run_worker(job: WorkerJob) -> Any:
    """The body of every process: join the group, build the data, train, rank 0's outputs.

    Returns ``job.outputs(result)`` on rank 0, ``None`` on the other ranks. The process group
    is left even when training fails.
    """
    cfg = TrainConfig.from_params(job.params)
    ctx = join_process_group(cfg, job.log_level)
    try:
        data = job.data()
        callbacks = list(job.callbacks()) if ctx.is_main and job.callbacks is not None else []
        result = train(cfg, data, callbacks, dist_ctx=ctx)
        return job.outputs(result) if ctx.is_main else None
    finally:
        ddp.destroy_distributed()


def save_result(path: str | os.PathLike, result: TrainResult) -> Path:
    """The final model file (``save_model`` format) with the history and run info in ``extra``."""
    extra = {"history": result.history.to_dict(orient="records"), "info": dict(result.info)}
    return save_model(path, result.model, extra=extra)


def load_result(path: str | os.PathLike) -> TrainResult:
    """Inverse of :func:`save_result`: a plain model (CPU, eval mode), history and info."""
    model = load_model(path, map_location="cpu")
    extra = dict(getattr(model, "extra", {}))
    model.extra = {}  # type: ignore[attr-defined]
    history = history_frame(extra.get("history", []))
    return TrainResult(model=model, history=history, info=dict(extra.get("info", {})))


# ------------------------------------------------------------------ from the Kedro node
def train_multiprocess(
    params: Mapping[str, Any],
    data: TrainingData,
    n_procs: int,
    callbacks: CallbackFactory | None = None,
) -> TrainResult:
    """Train in ``n_procs`` local processes (one per GPU, or gloo processes on the CPU) and
    return rank 0's result. ``params`` is ``params:training``; ``callbacks`` (picklable, e.g.
    a ``functools.partial``) makes rank 0's training callbacks."""
    cfg = TrainConfig.from_params(params)
    on_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    if on_cuda and n_procs > torch.cuda.device_count():
        raise ValueError(
            f"training.devices={n_procs} but only {torch.cuda.device_count()} CUDA device(s) "
            "are visible"
        )
    with tempfile.TemporaryDirectory(prefix="pconv-ddp-") as tmp:
        save_bundle(tmp, data)
        result_path = Path(tmp) / "result.safetensors"
        job = WorkerJob(
            params=dict(params),
            data=partial(load_bundle, tmp),
            outputs=partial(save_result, result_path),
            callbacks=callbacks,
            log_level=logging.getLevelName(logging.getLogger().getEffectiveLevel()),
        )
        logger.info("Launching %d training processes (torch elastic launch)", n_procs)
        ddp.launch_local(n_procs, run_worker, (job,))
        if not result_path.is_file():
            raise RuntimeError("distributed training finished but rank 0 wrote no result file")
        return load_result(result_path)
