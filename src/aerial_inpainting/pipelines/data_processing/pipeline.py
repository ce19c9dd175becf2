"""Wiring of the data_processing pipeline (dataset names as in conf/base/catalog.yml)."""

from kedro.pipeline import Node, Pipeline

from aerial_inpainting.pipelines.data_processing.nodes import (
    generate_large_test_masks,
    generate_test_masks,
    generate_train_masks,
    generate_val_masks,
    ingest_images,
    plot_mask_examples,
    split_train_test,
    split_train_validation,
)

TAG = "data_processing"


def create_pipeline(**kwargs) -> Pipeline:
    """ingest -> split (train+val / test, then train / val) -> fixed test and validation masks
    (+ figure); the training-mask pool is independent."""
    return Pipeline(
        [
            Node(
                func=ingest_images,
                inputs=["raw_aerial_landscapes", "params:data_processing"],
                outputs=["images", "image_index", "data_quality_report"],
                name="ingest_images",
                tags=[TAG, "ingest"],
            ),
            Node(
                func=split_train_test,
                inputs=["image_index", "params:data_processing"],
                outputs=["train_val_split", "test_split"],
                name="split_train_test",
                tags=[TAG, "split"],
            ),
            Node(
                func=split_train_validation,
                inputs=["train_val_split", "params:data_processing"],
                outputs=["train_split", "val_split"],
                name="split_train_validation",
                tags=[TAG, "split"],
            ),
            Node(
                func=generate_val_masks,
                inputs=["val_split", "params:data_processing"],
                outputs=["val_masks", "val_mask_index"],
                name="generate_val_masks",
                tags=[TAG, "masks"],
            ),
            Node(
                func=generate_test_masks,
                inputs=["test_split", "params:data_processing"],
                outputs=["test_masks", "test_mask_index"],
                name="generate_test_masks",
                tags=[TAG, "masks"],
            ),
            Node(
                func=generate_large_test_masks,
                inputs=["test_split", "params:data_processing.image_size", "params:large_holes"],
                outputs=["test_masks_large", "test_mask_index_large", "test_split_large"],
                name="generate_large_test_masks",
                tags=[TAG, "masks"],
            ),
            Node(
                func=generate_train_masks,
                inputs="params:data_processing",
                outputs=["train_masks", "train_mask_index"],
                name="generate_train_masks",
                tags=[TAG, "masks"],
            ),
            Node(
                func=plot_mask_examples,
                inputs=["test_masks", "test_mask_index"],
                outputs="mask_examples",
                name="plot_mask_examples",
                tags=[TAG, "masks", "reporting"],
            ),
        ]
    )
