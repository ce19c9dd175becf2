"""Wiring of the training pipeline (one node; the loop lives in ``aerial_inpainting.pconv.train``)."""

from kedro.pipeline import Node, Pipeline

from .nodes import train_model

TAG = "training"


def create_pipeline(**kwargs) -> Pipeline:
    """images + splits + masks -> trained model, its history table and loss-curve figure."""
    return Pipeline(
        [
            Node(
                func=train_model,
                inputs=[
                    "images",
                    "train_split",
                    "val_split",
                    "train_masks",
                    "val_masks",
                    "val_mask_index",
                    "params:training",
                    "params:data_processing.masks.shapes",
                ],
                outputs=["model", "training_history", "loss_curve"],
                name="train_model",
                tags=[TAG],
            )
        ]
    )
