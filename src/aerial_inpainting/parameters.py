"""Typed parameters of the pipelines, validated once at each node's entry.

One Pydantic model per ``conf/base/parameters_<pipeline>.yml`` block: every key is required
(the YAML is the only source of values; nothing here has a default), unknown keys are
refused, and values are checked against their types. A wrong or missing key raises a
ValueError whose heading names the block and its file, e.g.::

    1 validation error for `evaluate` in conf/base/parameters_evaluate.yml
    batch_size
      Field required [type=missing]

The training block has its own typed config, :class:`aerial_inpainting.pconv.config.TrainConfig`
(plain Python: the training loop is usable without Kedro, its fields keep defaults for that
use); the training node checks it the same way, every key required and a missing one named
with its file (``TrainConfig.from_params(params, complete=True)``).

Why the nodes parse their ``params:`` input themselves rather than through Kedro's typed
parameters (``kedro.validation``, a node argument annotated with a model): Kedro then hands
the model object to the hooks, and kedro-mlflow, which logs every node's parameters flattened
(``evaluate.seed``, ``evaluate.device``, ...), would log the whole object as one truncated
string with a warning. Parsing at the node's entry keeps the parameters logged key by key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

P = TypeVar("P", bound="Parameters")


def _config(block: str, file: str) -> ConfigDict:
    return ConfigDict(
        extra="forbid", frozen=True, hide_input_in_errors=True, title=f"`{block}` in {file}"
    )


class Parameters(BaseModel):
    """Base: strict keys, immutable, :meth:`parse` for a node's ``params:`` input."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    @classmethod
    def parse(cls: type[P], params: Mapping[str, Any] | P) -> P:
        """The typed parameters of a ``params:`` mapping (an instance is returned as is).

        Raises ValueError naming the block, its file and every wrong, missing or unknown key.
        """
        if isinstance(params, cls):
            return params
        try:
            return cls.model_validate(dict(params))
        except ValidationError as exc:
            raise ValueError(str(exc)) from None


# ------------------------------------------------------------------ data_processing
_DATA_FILE = "conf/base/parameters_data_processing.yml"


class SyntheticParams(Parameters):
    model_config = _config("data_processing.synthetic", _DATA_FILE)

    seed: int
    classes: list[str]
    images_per_class: int
    size: int | None


class SplitParams(Parameters):
    model_config = _config("data_processing.split", _DATA_FILE)

    seed: int
    test_fraction: float
    val_fraction: float


class MaskParams(Parameters):
    model_config = _config("data_processing.masks", _DATA_FILE)

    seed: int
    train_pool_size: int
    shapes: dict[str, Any]  # checked by aerial_inpainting.imaging.masks.MaskShapeConfig


class DataProcessingParams(Parameters):
    """``data_processing:`` of ``conf/base/parameters_data_processing.yml``."""

    model_config = _config("data_processing", _DATA_FILE)

    image_size: int
    num_workers: int | None
    small_images: Literal["skip", "upscale"]
    progress_bar: bool | None
    synthetic: SyntheticParams
    split: SplitParams
    masks: MaskParams


class LargeHolesParams(Parameters):
    """``large_holes:`` of ``conf/base/parameters_large_holes.yml``."""

    model_config = _config("large_holes", "conf/base/parameters_large_holes.yml")

    seed: int
    min_fraction: float
    max_fraction: float
    n_images: int | None


# ------------------------------------------------------------------ evaluate
class EvaluateParams(Parameters):
    """``evaluate:`` of ``conf/base/parameters_evaluate.yml``."""

    model_config = _config("evaluate", "conf/base/parameters_evaluate.yml")

    # trained | pretrained | auto, or a model file's path (checked by the PretrainedModelHook)
    model: Literal["trained", "pretrained", "auto"] | str
    seed: int
    device: str
    autocast: bool
    channels_last: bool
    tta: bool
    batch_size: int
    metrics_batch_size: int
    num_workers: int | Literal["auto"]
    progress_bar: bool | None
    baselines: list[str]
    telea_radius: float
    ns_radius: float
    biharmonic_sample: int | None
    patchmatch_sample: int | None
    patchmatch_patch_size: int
    lpips_net: Literal["alex", "vgg", "none"]
    num_examples: int


# ------------------------------------------------------------------ inpaint
class InpaintParams(Parameters):
    """``inpaint:`` of ``conf/base/parameters_inpaint.yml``."""

    model_config = _config("inpaint", "conf/base/parameters_inpaint.yml")

    model: Literal["trained", "pretrained", "auto"]
    invert_mask: bool
    device: str
    threshold: int | float | None
    tile_size: int | None
    max_size: int
    overlap: int
    max_image_pixels: int | None
    preview_max_height: int
    fail_on_error: bool
    progress_bar: bool | None
    window_size: int
    window_halo: int | None
    fill_nodata: Literal["inside", "all"]
