"""Wiring of the ``inpaint`` pipeline (run with ``kedro run --pipelines=inpaint``)."""

from kedro.pipeline import Node, Pipeline

from .nodes import inpaint_user_geotiffs, inpaint_user_images

TAG = "inpaint"


def create_pipeline(**kwargs) -> Pipeline:
    """model + the user's images and masks -> inpainted images, previews and a report.

    GeoTIFFs among the images go through ``inpaint_user_geotiffs`` (window by window), the
    other images through ``inpaint_user_images``.
    """
    return Pipeline(
        [
            Node(
                func=inpaint_user_geotiffs,
                inputs=["model", "inpaint_raster_files", "inpaint_mask_files", "params:inpaint"],
                outputs=["inpainted_geotiffs", "inpaint_geotiff_report", "inpaint_geotiff_ids"],
                name="inpaint_user_geotiffs",
                tags=[TAG],
            ),
            Node(
                func=inpaint_user_images,
                inputs=[
                    "model",
                    "inpaint_images",
                    "inpaint_masks",
                    "params:inpaint",
                    "inpaint_geotiff_ids",
                ],
                outputs=["inpainted_images", "inpaint_previews", "inpaint_report"],
                name="inpaint_user_images",
                tags=[TAG],
            ),
        ]
    )
