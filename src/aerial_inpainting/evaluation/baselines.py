"""Classical inpainting baselines, so every report shows the model's margin over them.

Each baseline maps one uint8 RGB image (H, W, 3) and its mask (H, W; 1/True = valid, 0 = hole)
to a uint8 image whose valid pixels are the input's, unchanged: only holes are filled.

- ``telea``: OpenCV's fast-marching method (Telea 2004), ``cv2.INPAINT_TELEA``.
- ``navier_stokes``: OpenCV's fluid-dynamics method (Bertalmio et al. 2001), ``cv2.INPAINT_NS``.
- ``biharmonic``: scikit-image's biharmonic-equation fill; slow (seconds per 256x256 image),
  so the pipeline runs it on a seeded sample of the test set only.
- ``mean_fill``: every hole pixel takes the image's mean valid colour (per channel), rounded.
- ``pull_push``: the pull-push interpolation of Gortler et al. 1996
  (:func:`aerial_inpainting.pconv.pushpull.pull_push_fill`), rounded: the classical fill the
  prefilled network starts from.
- ``patchmatch``: exemplar-based fill with PatchMatch (Barnes et al. 2009, as the
  ``pypatchmatch`` wheel implements it; what image editors call content-aware fill): every hole
  pixel is copied from the best-matching patch of the valid region, coarse to fine. The
  diffusion methods above fill smoothly; this one copies texture. About a second per
  256 x 256 image on one core, so the pipeline runs it on a seeded sample, like biharmonic.
  Optional: ``pypatchmatch`` has wheels for Python >= 3.11 only; where it cannot be imported
  (:func:`unavailable_reason`) the pipeline skips it with one WARNING.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from typing import Any

import cv2
import numpy as np
from skimage.restoration import inpaint_biharmonic

BASELINES = ("telea", "navier_stokes", "biharmonic", "mean_fill", "pull_push", "patchmatch")

SAMPLE_PARAMETERS = {"biharmonic": "biharmonic_sample", "patchmatch": "patchmatch_sample"}
"""The slow baselines and the ``evaluate:`` key holding the size of the seeded sample of the
evaluation images each runs on (one draw shared by all of them:
:func:`aerial_inpainting.pipelines.evaluate.nodes.seeded_sample`)."""


def _check(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image (C-contiguous) and the valid mask as a (H, W) bool array (non-zero = valid)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"Expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    mask = np.asarray(mask)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"Mask shape {mask.shape} does not match image shape {image.shape[:2]}")
    valid = mask if mask.dtype == np.bool_ else mask != 0  # what astype(bool) gives, no copy
    return np.ascontiguousarray(image), np.ascontiguousarray(valid)


def _as_cv_mask(valid: np.ndarray) -> np.ndarray:
    """A C-contiguous bool mask as the uint8 0/1 mask OpenCV takes (a view, no copy)."""
    return valid.view(np.uint8)


def _keep_valid(image: np.ndarray, filled: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Guarantee the contract: valid pixels are the input's, bit for bit.

    ``filled`` (values already in 0..255) is cast to uint8; a uint8 ``filled`` is written in
    place, so callers pass a fresh array.
    """
    out = np.ascontiguousarray(filled, dtype=np.uint8)
    cv2.copyTo(image, _as_cv_mask(valid), out)  # in place: the input's pixels where valid
    return out


def _opencv(image: np.ndarray, mask: np.ndarray, radius: float, flags: int) -> np.ndarray:
    image, valid = _check(image, mask)
    if valid.all():
        return image.copy()
    hole = cv2.compare(_as_cv_mask(valid), 0, cv2.CMP_EQ)  # OpenCV: non-zero (255) = pixel to fill
    return _keep_valid(image, cv2.inpaint(image, hole, float(radius), flags), valid)


def telea(image: np.ndarray, mask: np.ndarray, radius: float = 3.0) -> np.ndarray:
    """OpenCV Telea inpainting; ``radius`` is the neighbourhood considered around each pixel."""
    return _opencv(image, mask, radius, cv2.INPAINT_TELEA)


def navier_stokes(image: np.ndarray, mask: np.ndarray, radius: float = 3.0) -> np.ndarray:
    """OpenCV Navier-Stokes inpainting."""
    return _opencv(image, mask, radius, cv2.INPAINT_NS)


def biharmonic(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """scikit-image biharmonic inpainting (smooth fill solving a biharmonic equation)."""
    image, valid = _check(image, mask)
    if valid.all():
        return image.copy()
    if not valid.any():
        return mean_fill(image, mask)
    filled = inpaint_biharmonic(image.astype(np.float64) / 255.0, ~valid, channel_axis=-1)
    filled = np.clip(np.rint(filled * 255.0), 0, 255)
    return _keep_valid(image, filled, valid)


def mean_fill(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Fill holes with the mean valid colour per channel (rounded); mid-grey if nothing is valid."""
    image, valid = _check(image, mask)
    count = int(np.count_nonzero(valid))
    if count == valid.size:  # no hole (or no pixel)
        return image.copy()
    valid8 = _as_cv_mask(valid)
    if count:
        # OpenCV's masked mean times the count is the exact integer sum up to rounding far
        # below 0.5, so rint recovers it; sum / count is then the float64 mean that numpy
        # gives for image[valid].mean(axis=0), bit for bit (exact integer sums, one division).
        sums = np.rint(np.asarray(cv2.mean(image, mask=valid8)[:3]) * count)
        colour = sums / count
    else:
        colour = np.full(3, 127.5)
    h, w, c = image.shape
    filled = np.empty_like(image)
    # Row by row (a whole row of colours at once: far faster than broadcasting 3 values).
    filled.reshape(h, w * c)[...] = np.tile(np.clip(np.rint(colour), 0, 255).astype(np.uint8), w)
    cv2.copyTo(image, valid8, filled)  # in place: the input's pixels where valid
    return filled


def pull_push(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Fill holes by pull-push interpolation (float32, rounded to uint8)."""
    import torch

    from aerial_inpainting.pconv.pushpull import pull_push_fill

    image, valid = _check(image, mask)
    if valid.all():
        return image.copy()
    with torch.no_grad():
        rgb = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        weight = torch.from_numpy(valid)[None, None].float()
        filled = pull_push_fill(rgb * weight, weight)[0].permute(1, 2, 0)
    values = filled.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return _keep_valid(image, values.copy(), valid)


def unavailable_reason(name: str) -> str | None:
    """Why baseline ``name`` cannot run in this environment, or None when it can.

    Only ``patchmatch`` can be missing: its ``pypatchmatch`` wheel is an optional dependency
    (Python >= 3.11), and an installation without a wheel for the platform lacks the native
    library (``patchmatch.patchmatch_available`` is False).
    """
    if name != "patchmatch":
        return None
    try:
        import patchmatch as pm
    except ImportError as exc:
        return (
            f"the pypatchmatch package cannot be imported ({exc}); install it with "
            "`pip install pypatchmatch` (wheels for Python >= 3.11)"
        )
    if not getattr(pm, "patchmatch_available", False):
        return (
            "pypatchmatch is installed without its native library (no wheel for this platform); "
            "see https://pypi.org/project/PyPatchMatch/"
        )
    return None


def patchmatch(
    image: np.ndarray, mask: np.ndarray, patch_size: int = 3, seed: int = 0
) -> np.ndarray:
    """PatchMatch exemplar-based fill (``patchmatch.inpaint`` of the ``pypatchmatch`` wheel).

    ``patch_size`` is the patch *radius* of the library: patches of ``2 * patch_size + 1``
    pixels a side are compared (sum of squared differences over the three channels). The
    search is randomised; its generator (a Mersenne Twister in the native code) is reset to
    ``seed`` (modulo 2**32) before each image, so the same image, mask, patch size and seed
    give the same bytes whatever ran before in the process (the seed is process-wide state of
    the native library: call it from one thread per process, as the scoring pool does; the
    library has no per-call seed argument). An image without valid pixels
    gets :func:`mean_fill` (mid-grey): there is nothing to copy from.

    Raises RuntimeError naming the reason when the library is unavailable
    (:func:`unavailable_reason`).
    """
    image, valid = _check(image, mask)
    if valid.all():
        return image.copy()
    if not valid.any():
        return mean_fill(image, mask)
    reason = unavailable_reason("patchmatch")
    if reason:
        raise RuntimeError(f"Baseline patchmatch cannot run: {reason}")
    import patchmatch as pm

    pm.set_random_seed(int(seed))
    filled = pm.inpaint(image, ~valid, patch_size=int(patch_size))  # non-zero = hole
    return _keep_valid(image, filled, valid)


BASELINE_PARAMETERS: dict[str, dict[str, str]] = {
    "telea": {"radius": "telea_radius"},
    "navier_stokes": {"radius": "ns_radius"},
    "patchmatch": {"patch_size": "patchmatch_patch_size", "seed": "seed"},
}
"""Keyword argument -> ``evaluate:`` key, for the baselines that take parameters."""
PARAMETERS_FILE = "conf/base/parameters_evaluate.yml"


def get_baseline(
    name: str, params: Mapping[str, Any]
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The baseline called ``name``, with its parameters bound.

    ``params``: the ``evaluate:`` keys the baseline needs (:data:`BASELINE_PARAMETERS`):
    ``telea_radius`` for ``telea``, ``ns_radius`` for ``navier_stokes``,
    ``patchmatch_patch_size`` and ``seed`` for ``patchmatch`` (the others take none). Raises
    ValueError for an unknown name, or naming the key and its file when one is missing.
    """
    table: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
        "telea": telea,
        "navier_stokes": navier_stokes,
        "biharmonic": biharmonic,
        "mean_fill": mean_fill,
        "pull_push": pull_push,
        "patchmatch": patchmatch,
    }
    if name not in table:
        raise ValueError(f"Unknown baseline {name!r}; choose from {sorted(table)}")
    bound = {}
    for argument, key in BASELINE_PARAMETERS.get(name, {}).items():
        if key not in params:
            raise ValueError(
                f"evaluate.{key} is missing ({PARAMETERS_FILE}); baseline {name} needs it"
            )
        bound[argument] = params[key]
    return partial(table[name], **bound) if bound else table[name]


def _apply(
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray], pair: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    return fn(*pair)


def inpaint_batch(
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    images: np.ndarray,
    masks: np.ndarray,
    workers: int = 1,
) -> np.ndarray:
    """Apply a baseline to (N, H, W, 3) images and (N, H, W) masks; a process pool when asked."""
    pairs: Sequence[tuple[np.ndarray, np.ndarray]] = list(zip(images, masks, strict=True))
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as executor:
            chunksize = max(1, len(pairs) // (4 * workers))
            results = list(executor.map(partial(_apply, fn), pairs, chunksize=chunksize))
    else:
        results = [fn(image, mask) for image, mask in pairs]
    return np.stack(results) if results else np.empty((0, *images.shape[1:]), dtype=np.uint8)
