"""A made-up test score for a project's model, where `auto` model selection reads it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from aerial_inpainting.model_selection import (
    MODEL_SCORES_PATH,
    score_record,
    shipped_reference,
    split_digest,
    weights_digest,
)


def shipped_split() -> dict:
    """The split definition the shipped model's JSON records its test score for."""
    _, scores = shipped_reference()
    return dict(scores[0]["split"])


def shipped_psnr() -> float:
    _, scores = shipped_reference()
    return float(scores[0]["scores"]["psnr_mean"])


def write_score(
    project: Path, model, psnr: float, ssim: float = 0.8, split: dict | None = None
) -> Path:
    """Record ``model``'s (made-up) mean PSNR/SSIM on ``split`` (default: the shipped score's
    split) in ``project``'s score folder, as the evaluate pipeline's record_model_score does."""
    split = split if split is not None else shipped_split()
    summary = pd.DataFrame(
        [
            {
                "method": "model",
                "group_type": "overall",
                "group": "all",
                "n": split["n_images"],
                "psnr_mean": psnr,
                "ssim_mean": ssim,
            }
        ]
    )
    digest = weights_digest(model)
    record = score_record(summary, digest, split)
    path = Path(project) / MODEL_SCORES_PATH / f"{digest}_{split_digest(split)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, sort_keys=True))
    return path
