"""Which model ``auto`` means: the project's latest trained model, or the shipped one.

``aerial-inpaint`` without ``--model`` and ``inpaint.model: auto`` inside a Kedro project use
the project's latest trained model only when its recorded score on the project's test split
is **not below** the shipped model's (``pretrained``, ``MODEL_CARD.md``) on the same split
definition; otherwise the shipped model. The rule (:func:`compare_scores`): mean composite
PSNR, both rounded to 0.01 dB, decides; equal at that resolution, mean SSIM (rounded to
0.0001) decides, a tie going to the project's model.

Where the scores come from:

* the project's models: the ``evaluate`` pipeline's node ``record_model_score`` writes one
  JSON record per evaluated model and split definition (catalog ``model_scores``,
  ``data/08_reporting/model_scores/<weights digest>_<split digest>.json``); the model is
  named by a digest of its weights (:func:`weights_digest`), so a record never describes
  another model than the one it names, whichever file it was loaded from;
* the shipped model: the ``test_scores`` of its JSON file
  (``pretrained_models/<name>.json``), each for one split definition, and any record the
  project wrote for it (``kedro run --pipelines=evaluate --params evaluate.model=pretrained``).

A split definition (:func:`split_definition`) is what fixes the test images and their masks:
the data source (real photographs or the synthetic stand-in, with its generator's
parameters), the image size, ``data_processing.split`` (seed, test and validation fractions),
the mask seed, and the number of test images scored. When no score of the shipped model
exists for the project's split, or the project's model has no score, the shipped model is
used and the one line says what to run to compare.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SCORE_FORMAT = "aerial-inpainting/model-score/1"
MODEL_SCORES_PATH = "data/08_reporting/model_scores"  # the catalog's `model_scores` folder
EVALUATE_COMMAND = "kedro run --pipelines=evaluate"
EVALUATE_SHIPPED_COMMAND = "kedro run --pipelines=evaluate --params evaluate.model=pretrained"


@dataclass(frozen=True)
class Selection:
    """The verdict: ``use_project`` (else the shipped model) and the reason, one line."""

    use_project: bool
    reason: str


def weights_digest(model: Any) -> str:
    """16 hex digits of the sha256 of a network's weights: every ``state_dict`` entry in name
    order (name, shape, then the values as little-endian float32), so the float16 shipped
    file and its float32 copy in memory give the same digest as any load of the same file."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        values = tensor.detach().to("cpu").float().numpy().astype("<f4", copy=False)
        digest.update(f"{name}:{tuple(values.shape)}".encode())
        digest.update(np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()[:16]


def split_definition(
    data_processing: Mapping[str, Any], data_source: str, n_images: int
) -> dict[str, Any]:
    """The parameters fixing the test images and masks (``params:data_processing``), the data
    source (``real``/``synthetic``) and the number of test images scored."""
    split = data_processing.get("split") or {}
    definition: dict[str, Any] = {
        "data_source": data_source,
        "image_size": data_processing.get("image_size"),
        "split_seed": split.get("seed"),
        "test_fraction": split.get("test_fraction"),
        "val_fraction": split.get("val_fraction"),
        "masks_seed": (data_processing.get("masks") or {}).get("seed"),
        "n_images": int(n_images),
    }
    if "synthetic" in data_source:
        synthetic = dict(data_processing.get("synthetic") or {})
        definition["synthetic"] = {k: synthetic.get(k) for k in sorted(synthetic)}
    return definition


def split_digest(definition: Mapping[str, Any]) -> str:
    """8 hex digits naming a split definition (its canonical JSON's sha256)."""
    text = json.dumps(definition, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def describe_split(definition: Mapping[str, Any]) -> str:
    """``"real data, 1140 test images, split seed 42"``."""
    return (
        f"{definition.get('data_source')} data, {definition.get('n_images')} test images, "
        f"split seed {definition.get('split_seed')}"
    )


def score_record(
    evaluation_summary: pd.DataFrame, digest: str, definition: Mapping[str, Any]
) -> dict[str, Any]:
    """The record of one evaluation: the model's overall mean PSNR (dB), SSIM and LPIPS
    (``evaluation_summary`` rows ``method == "model"``, ``group_type == "overall"``)."""
    rows = evaluation_summary[
        (evaluation_summary["method"] == "model") & (evaluation_summary["group_type"] == "overall")
    ]
    if rows.empty:
        raise ValueError("evaluation_summary: no overall row for method 'model'")
    row = rows.iloc[0]
    scores = {
        key: float(row[key])
        for key in ("psnr_mean", "ssim_mean", "lpips_mean")
        if key in row and pd.notna(row[key])
    }
    return {
        "format": SCORE_FORMAT,
        "weights_digest": digest,
        "split": dict(definition),
        "scores": scores,
    }


def compare_scores(project: Mapping[str, float], shipped: Mapping[str, float]) -> Selection:
    """The rule: PSNR at 0.01 dB, then SSIM at 0.0001; ties go to the project's model."""
    p_psnr, s_psnr = round(project["psnr_mean"], 2), round(shipped["psnr_mean"], 2)
    if p_psnr != s_psnr:
        better = p_psnr > s_psnr
        relation = "above" if better else "below"
        return Selection(better, f"PSNR {p_psnr:.2f} dB, {relation} the shipped {s_psnr:.2f} dB")
    p_ssim = round(project.get("ssim_mean", float("nan")), 4)
    s_ssim = round(shipped.get("ssim_mean", float("nan")), 4)
    if not (np.isfinite(p_ssim) and np.isfinite(s_ssim)) or p_ssim >= s_ssim:
        return Selection(True, f"PSNR {p_psnr:.2f} dB, level with the shipped model's")
    return Selection(
        False, f"PSNR level at {p_psnr:.2f} dB, SSIM {p_ssim:.4f} below the shipped {s_ssim:.4f}"
    )


def read_records(folder: str | Path) -> list[dict[str, Any]]:
    """Every readable score record in ``folder`` (others are ignored: a record is advice)."""
    records = []
    for path in sorted(Path(folder).glob("*.json")) if Path(folder).is_dir() else []:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(record, dict) and record.get("format") == SCORE_FORMAT:
            records.append(record)
    return records


def select(
    project_digest: str,
    project_records: Iterable[Mapping[str, Any]],
    shipped_digest: str,
    shipped_scores: Iterable[Mapping[str, Any]],
) -> Selection:
    """The project's model (weights ``project_digest``) or the shipped one (``shipped_digest``;
    ``shipped_scores``: its JSON's ``test_scores``, each ``{"split": ..., "scores": ...}``),
    from the project's score records. Several splits scored for both: the one with the most
    test images decides."""
    project_records = list(project_records)
    own = [r for r in project_records if r.get("weights_digest") == project_digest]
    if project_digest == shipped_digest:
        return Selection(True, "the project's latest model is the shipped model")
    if not own:
        return Selection(
            False,
            f"the project's latest model has no recorded evaluation ({EVALUATE_COMMAND} "
            "records one)",
        )
    shipped = {split_digest(s["split"]): s for s in shipped_scores}
    for record in project_records:  # the project's own scoring of the shipped model
        if record.get("weights_digest") == shipped_digest:
            shipped[split_digest(record["split"])] = record
    common = [r for r in own if split_digest(r["split"]) in shipped]
    if not common:
        split = max(own, key=lambda r: r["split"].get("n_images") or 0)["split"]
        return Selection(
            False,
            f"no score of the shipped model on the project's test split ({describe_split(split)}"
            f"; `{EVALUATE_SHIPPED_COMMAND}` records one)",
        )
    record = max(common, key=lambda r: r["split"].get("n_images") or 0)
    verdict = compare_scores(record["scores"], shipped[split_digest(record["split"])]["scores"])
    return Selection(
        verdict.use_project,
        f"{verdict.reason} on the test split ({describe_split(record['split'])})",
    )


def shipped_reference(name: str | None = None) -> tuple[str, list[dict[str, Any]]]:
    """(weights digest, ``test_scores``) of the shipped model ``name`` (default: the one
    ``pretrained`` means), from its JSON file; the digest is computed from the weights when
    the file does not record it. Raises PretrainedModelError (the file is missing or bad)."""
    from aerial_inpainting.pretrained_model import (
        DEFAULT_NAME,
        load_pretrained,
        read_pretrained_config,
    )

    name = name or DEFAULT_NAME
    info = read_pretrained_config(name)
    digest = info.get("weights_digest") or weights_digest(load_pretrained(name))
    return digest, list(info.get("test_scores") or [])


def select_latest(project_model: Any, records: Iterable[Mapping[str, Any]]) -> Selection:
    """:func:`select` for a loaded project model and the project's score records, against
    the shipped model (:func:`shipped_reference`)."""
    shipped_digest, shipped_scores = shipped_reference()
    return select(weights_digest(project_model), records, shipped_digest, shipped_scores)
