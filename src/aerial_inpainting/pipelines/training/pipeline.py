"""Wiring of the training pipeline (one node; the loop lives in ``aerial_inpainting.pconv.train``)."""

from kedro.pipeline import Node, Pipeline

from .nodes import train_model


def create_pipeline(**kwargs) -> Pipeline:
    """images + splits + masks -> trained model, its history table and loss-curve figure."""
    return Pipeline(
        [
            Node(
                func=train_model,
                inputs=[
                    "images",
                    "train_split",
                    "test_split",
                    "train_masks",
                    "test_masks",
                    "test_mask_index",
                    "params:training",
                ],
                outputs=["model", "training_history", "loss_curve"],
                name="train_model",
                tags=["training"],
            )
        ]
    )
