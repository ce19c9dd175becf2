"""Decoding many image files in parallel into one uint8 stack.

On Linux the output stack is an anonymous shared memory map created before the worker
processes are forked: each worker decodes its chunk of files straight into its rows, and
only small metadata travel back, so no pixels are pickled or copied. Elsewhere (spawn)
the pixels are sent back and copied into place.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from aerial_inpainting.imaging.io import ImageReadError, read_rgb_image

# Below this many files a process pool costs more than it saves.
MIN_FILES_FOR_POOL = 256
CHUNK_SIZE = 64

# The output stack, inherited by forked workers (set only while a pool runs).
_SHARED_STACK: np.ndarray | None = None


@dataclass(frozen=True)
class DecodeOutcome:
    """Metadata of one file: either its original size/mode, or why it was skipped."""

    ok: bool
    original_width: int = 0
    original_height: int = 0
    original_mode: str = ""
    upscaled: bool = False
    reason: str = ""


def _decode_into(
    stack: np.ndarray | None, start: int, paths: Sequence[str], size: int, small_images: str
) -> tuple[list[DecodeOutcome], list[np.ndarray | None]]:
    """Decode ``paths``; rows go into ``stack[start + i]`` or, without a stack, are returned."""
    outcomes: list[DecodeOutcome] = []
    pixels: list[np.ndarray | None] = []
    for offset, path in enumerate(paths):
        try:
            decoded = read_rgb_image(path, size, small_images)
        except ImageReadError as exc:
            outcomes.append(DecodeOutcome(ok=False, reason=exc.reason))
            pixels.append(None)
            continue
        if stack is not None:
            stack[start + offset] = decoded.pixels
        else:
            pixels.append(decoded.pixels)
        outcomes.append(
            DecodeOutcome(
                ok=True,
                original_width=decoded.original_width,
                original_height=decoded.original_height,
                original_mode=decoded.original_mode,
                upscaled=decoded.upscaled,
            )
        )
    return outcomes, pixels


def _worker_shared(start: int, paths: Sequence[str], size: int, small_images: str):
    return _decode_into(_SHARED_STACK, start, paths, size, small_images)


def _worker_copy(start: int, paths: Sequence[str], size: int, small_images: str):
    return _decode_into(None, start, paths, size, small_images)


def _fork_available() -> bool:
    """fork on Linux: no re-import of ``__main__`` (works from notebooks, stdin, kedro CLI);
    the workers only decode with Pillow, so forking a threaded parent is harmless here."""
    return sys.platform.startswith("linux")


def _shared_stack(n: int, size: int) -> np.ndarray:
    shape = (n, size, size, 3)
    buffer = mmap.mmap(-1, max(1, int(np.prod(shape))))  # MAP_SHARED | MAP_ANONYMOUS
    return np.frombuffer(buffer, np.uint8, count=int(np.prod(shape))).reshape(shape)


def decode_images(
    paths: Sequence[str],
    size: int,
    small_images: str = "skip",
    num_workers: int | None = None,
    progress: bool | None = None,
) -> tuple[np.ndarray, list[DecodeOutcome]]:
    """Decode ``paths`` to a uint8 (n_ok, size, size, 3) stack, in input order.

    Returns the stack of the readable files only and one outcome per input path.
    ``num_workers`` None means os.cpu_count(); ``progress`` None shows a bar on a terminal.
    """
    global _SHARED_STACK
    workers = max(1, int(num_workers or os.cpu_count() or 1))
    jobs = [
        (start, list(paths[start : start + CHUNK_SIZE]))
        for start in range(0, len(paths), CHUNK_SIZE)
    ]
    disable = None if progress is None else not progress
    outcomes: list[DecodeOutcome] = []
    with tqdm(total=len(paths), desc="Decoding images", unit="img", disable=disable) as bar:
        if workers == 1 or len(paths) < MIN_FILES_FOR_POOL:
            stack = np.empty((len(paths), size, size, 3), np.uint8)
            for start, chunk in jobs:
                outcomes.extend(_decode_into(stack, start, chunk, size, small_images)[0])
                bar.update(len(chunk))
        elif _fork_available():
            stack = _shared_stack(len(paths), size)
            _SHARED_STACK = stack
            try:
                with ProcessPoolExecutor(
                    workers, mp_context=multiprocessing.get_context("fork")
                ) as pool:
                    _gather(
                        pool.map(_worker_shared, *_columns(jobs, size, small_images)),
                        outcomes,
                        None,
                        bar,
                    )
            finally:
                _SHARED_STACK = None
        else:
            stack = np.empty((len(paths), size, size, 3), np.uint8)
            with ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn")
            ) as pool:
                _gather(
                    pool.map(_worker_copy, *_columns(jobs, size, small_images)),
                    outcomes,
                    stack,
                    bar,
                )
    # Compact in place: readable images keep their order, skipped rows are squeezed out.
    n_ok = 0
    for row, outcome in enumerate(outcomes):
        if outcome.ok:
            if row != n_ok:
                stack[n_ok] = stack[row]
            n_ok += 1
    return stack[:n_ok], outcomes


def _columns(jobs: list[tuple[int, list[str]]], size: int, small_images: str) -> tuple[list, ...]:
    return (
        [start for start, _ in jobs],
        [chunk for _, chunk in jobs],
        [size] * len(jobs),
        [small_images] * len(jobs),
    )


def _gather(
    results: Iterable[tuple[list[DecodeOutcome], list[np.ndarray | None]]],
    outcomes: list[DecodeOutcome],
    stack: np.ndarray | None,
    bar: tqdm,
) -> None:
    for chunk_outcomes, chunk_pixels in results:
        if stack is not None:
            for offset, pixels in enumerate(chunk_pixels):
                if pixels is not None:
                    stack[len(outcomes) + offset] = pixels
        outcomes.extend(chunk_outcomes)
        bar.update(len(chunk_outcomes))
