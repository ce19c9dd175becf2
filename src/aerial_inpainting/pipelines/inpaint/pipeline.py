"""Wiring of the ``inpaint`` pipeline (run with ``kedro run --pipelines=inpaint``)."""

from kedro.pipeline import Node, Pipeline

from .nodes import inpaint_images


def create_pipeline(**kwargs) -> Pipeline:
    """model + the user's images and masks -> inpainted images, previews and a report."""
    return Pipeline(
        [
            Node(
                func=inpaint_images,
                inputs=["model", "inpaint_images", "inpaint_masks", "params:inpaint"],
                outputs=["inpainted_images", "inpaint_previews", "inpaint_report"],
                name="inpaint_user_images",
                tags=["inpaint"],
            )
        ]
    )
