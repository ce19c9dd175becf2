"""The ``inpaint`` pipeline through a KedroSession in a temporary copy of the project."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from support.images import box_mask, read_png, smooth_image, write_png

from aerial_inpainting.pconv.checkpoint import save_model

pytestmark = pytest.mark.slow

OWN_ENTRIES = (
    "model",
    "inpaint_images",
    "inpaint_masks",
    "inpainted_images",
    "inpaint_previews",
    "inpaint_report",
    "inpaint_raster_files",
    "inpaint_mask_files",
    "inpainted_geotiffs",
    "inpaint_geotiff_report",
)


def _keep_only_inpaint_catalog(project) -> None:
    """Reduce the temp project's catalog to this pipeline's entries, so that the test
    depends on nothing but them (other pipelines' datasets are never instantiated)."""
    path = project / "conf/base/catalog.yml"
    catalog = yaml.safe_load(path.read_text())
    missing = [name for name in OWN_ENTRIES if name not in catalog]
    assert not missing, f"catalog.yml lacks {missing}"
    path.write_text(yaml.safe_dump({name: catalog[name] for name in OWN_ENTRIES}))


def test_inpaint_pipeline_fills_images_and_lists_problems(kedro_project, kedro_runner, tiny_model):
    project = kedro_project
    _keep_only_inpaint_catalog(project)
    save_model(
        project
        / "data/06_models/pconv_unet.safetensors/2026-01-01T00.00.00.000Z/pconv_unet.safetensors",
        tiny_model,
    )
    images_dir = project / "data/05_model_input/images"
    masks_dir = project / "data/05_model_input/masks"
    (images_dir / ".gitkeep").parent.mkdir(parents=True, exist_ok=True)
    (images_dir / ".gitkeep").write_text("")
    (masks_dir / ".gitkeep").parent.mkdir(parents=True, exist_ok=True)
    (masks_dir / ".gitkeep").write_text("")

    field = smooth_image(37, 53, seed=1)
    field_mask = box_mask(37, 53, [(5, 5, 25, 30)])
    write_png(images_dir / "field.png", field)
    write_png(masks_dir / "field.png", field_mask * 255)

    gray = smooth_image(24, 40, seed=2)[:, :, 1]
    gray_mask = np.full((24, 40), 255, np.uint8)
    gray_mask[6:18, 10:30] = 0
    gray_mask[6:18, 30] = 100  # grey edge: thresholded at 128 -> hole
    write_png(images_dir / "gray.png", gray)
    write_png(masks_dir / "gray.png", gray_mask)

    Image.fromarray(smooth_image(16, 16, seed=3)).save(images_dir / "orphan.jpg")
    write_png(masks_dir / "lonely.png", np.full((16, 16), 255, np.uint8))
    write_png(images_dir / "mismatch.png", smooth_image(16, 16, seed=4))
    write_png(masks_dir / "mismatch.png", np.full((8, 16), 255, np.uint8))

    # A GeoTIFF without a mask: its nodata pixels are the holes.
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    ortho = np.maximum(smooth_image(40, 48, seed=7), 1).transpose(2, 0, 1).copy()
    ortho[:, 10:20, 12:30] = 0
    geo = {"crs": "EPSG:2056", "transform": from_origin(2_600_000, 1_200_000, 0.1, 0.1)}
    with rasterio.open(
        images_dir / "ortho.tif", "w", driver="GTiff", width=48, height=40, count=3,
        dtype="uint8", nodata=0, **geo,
    ) as dst:  # fmt: skip
        dst.write(ortho)

    # the project's (unscored) model, not `auto`'s choice (which would be the shipped one)
    kedro_runner(project, "inpaint", {"inpaint.progress_bar": False, "inpaint.model": "trained"})

    with rasterio.open(project / "data/07_model_output/inpainted_geotiff/ortho.tif") as src:
        assert src.crs == rasterio.crs.CRS.from_string(geo["crs"])
        assert src.transform == geo["transform"] and src.nodata == 0
        filled = src.read()
    hole = np.zeros((40, 48), bool)
    hole[10:20, 12:30] = True
    np.testing.assert_array_equal(filled[:, ~hole], ortho[:, ~hole])
    assert not (filled[:, hole] == 0).all(axis=0).any()
    geo_report = pd.read_csv(project / "data/08_reporting/inpaint_geotiff_report.csv")
    assert list(geo_report["status"]) == ["inpainted"]
    assert geo_report["hole_ratio"][0] == pytest.approx(hole.mean(), abs=1e-6)

    out_dir = project / "data/07_model_output"
    result = read_png(out_dir / "inpainted/field.png")
    assert result.shape == field.shape
    np.testing.assert_array_equal(result[field_mask == 1], field[field_mask == 1])

    gray_result = read_png(out_dir / "inpainted/gray.png")
    keep = gray_mask >= 128
    assert gray_result.shape == (24, 40, 3)
    np.testing.assert_array_equal(gray_result[keep], np.repeat(gray[:, :, None], 3, 2)[keep])

    assert sorted(p.name for p in (out_dir / "inpainted").iterdir()) == ["field.png", "gray.png"]
    preview = read_png(out_dir / "previews/field.png")
    assert preview.shape == (37, 3 * 53 + 2 * 2, 3)  # input | gap | mask | gap | result
    np.testing.assert_array_equal(preview[:, :53], field)
    np.testing.assert_array_equal(preview[:, -53:], result)

    report = pd.read_csv(project / "data/08_reporting/inpaint_report.csv").set_index("image_id")
    assert report.loc["field", "status"] == "inpainted"
    assert report.loc["field", "hole_ratio"] == pytest.approx((field_mask == 0).mean(), abs=1e-6)
    assert (
        report.loc["gray", "status"] == "inpainted"
        and "thresholded" in report.loc["gray", "message"]
    )
    assert (
        report.loc["orphan", "status"] == "skipped" and "no mask" in report.loc["orphan", "message"]
    )
    assert "ortho" not in report.index  # handled by the GeoTIFF node
    assert report.loc["lonely", "status"] == "skipped"
    assert report.loc["mismatch", "status"] == "skipped"
    assert "same size" in report.loc["mismatch", "message"]


def test_pipeline_is_registered_but_not_part_of_the_default_run():
    from aerial_inpainting.pipeline_registry import register_pipelines
    from aerial_inpainting.pipelines.inpaint import create_pipeline

    nodes = create_pipeline().nodes
    assert sorted(n.name for n in nodes) == ["inpaint_user_geotiffs", "inpaint_user_images"]
    assert all("inpaint" in n.tags for n in nodes)
    pipelines = register_pipelines()
    assert "inpaint" in pipelines
    default_nodes = {n.name for n in pipelines["__default__"].nodes}
    assert "inpaint_user_images" not in default_nodes


def test_without_a_trained_model_the_pipeline_uses_the_pretrained_one(kedro_project, kedro_runner):
    """`inpaint.model: auto` (the default) falls back to the shipped model; `trained` insists."""
    from kedro.io import DatasetError

    from aerial_inpainting.inference import inpaint_image
    from aerial_inpainting.pretrained_model import load_pretrained

    project = kedro_project
    image, mask = smooth_image(40, 48, seed=5), box_mask(40, 48, [(8, 10, 30, 36)])
    write_png(project / "data/05_model_input/images/scene.png", image)
    write_png(project / "data/05_model_input/masks/scene.png", mask * 255)

    kedro_runner(project, "inpaint", {"inpaint.progress_bar": False})
    result = read_png(project / "data/07_model_output/inpainted/scene.png")
    np.testing.assert_array_equal(result, inpaint_image(load_pretrained(), image, mask * 255))
    assert not (project / "data/06_models/pconv_unet.safetensors").exists()

    with pytest.raises(DatasetError, match="No trained model found"):
        kedro_runner(
            project, "inpaint", {"inpaint.progress_bar": False, "inpaint.model": "trained"}
        )
