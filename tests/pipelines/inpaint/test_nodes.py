"""The inpaint node on in-memory partitions: masks without holes and masks that are all hole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from support.images import smooth_image

from aerial_inpainting.pipelines.inpaint.nodes import inpaint_user_images

PARAMS = Path(__file__).parents[3] / "conf/base/parameters_inpaint.yml"


def test_no_hole_copies_the_image_and_an_all_hole_mask_is_skipped_naming_it(tiny_model):
    params = {**yaml.safe_load(PARAMS.read_text())["inpaint"], "device": "cpu"}
    params["progress_bar"] = False
    photo = smooth_image(32, 32, seed=5)
    images = {name: (lambda: Image.fromarray(photo)) for name in ("keep.png", "black.png")}
    masks = {
        "keep.png": lambda: Image.fromarray(np.full((32, 32), 255, np.uint8)),
        "black.png": lambda: Image.fromarray(np.zeros((32, 32), np.uint8)),
    }
    results, _, report = inpaint_user_images(tiny_model, images, masks, params)
    report = report.set_index("image_id")

    assert list(results) == ["keep"]
    np.testing.assert_array_equal(np.asarray(results["keep"]), photo)
    assert report.loc["keep", "status"] == "unchanged"
    assert report.loc["black", "status"] == "skipped"
    assert "mask black.png" in report.loc["black", "message"]
    assert "no valid pixel" in report.loc["black", "message"]
