"""The ``evaluate`` pipeline: trained model and classical baselines on the fixed test masks.

``kedro run --pipelines=evaluate`` uses the latest trained model; pick another one with
``--load-versions=model:<version>``.
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from .nodes import (
    compute_metrics,
    plot_evaluation,
    plot_evaluation_examples,
    predict_test_images,
    prepare_evaluation_set,
    record_model_score,
    report_headline,
    summarise_evaluation,
)

TAG = "evaluate"


LARGE_HOLES = "large_holes"


def _scoring(split: str, masks: str, mask_index: str) -> Pipeline:
    """Prepare -> predict -> score -> summarise, on (part of) the test split with its masks."""
    return Pipeline(
        [
            Node(
                func=prepare_evaluation_set,
                inputs=[split, mask_index, masks],
                outputs=["evaluation_set", "evaluation_masks"],
                name="prepare_evaluation_set",
                tags=[TAG],
            ),
            Node(
                func=predict_test_images,
                inputs=["model", "images", "evaluation_set", "evaluation_masks", "params:evaluate"],
                outputs="model_outputs",
                name="predict_test_images",
                tags=[TAG],
            ),
            Node(
                func=compute_metrics,
                inputs=[
                    "images",
                    "evaluation_set",
                    "evaluation_masks",
                    "model_outputs",
                    "params:evaluate",
                ],
                outputs="evaluation_per_image",
                name="compute_metrics",
                tags=[TAG],
            ),
            Node(
                func=summarise_evaluation,
                inputs=["evaluation_per_image", "params:evaluate", "model"],
                outputs=["evaluation_summary", "evaluation_summary_markdown", "evaluation_metrics"],
                name="summarise_evaluation",
                tags=[TAG],
            ),
        ]
    )


def create_pipeline(**kwargs) -> Pipeline:
    """Prepare -> predict -> score -> summarise / plot -> headline on the test masks, and the
    same scoring, as its own rows, on the large-hole test masks (namespace ``large_holes``)."""
    large_holes = Pipeline(
        _scoring("test_split_large", "test_masks_large", "test_mask_index_large"),
        namespace=LARGE_HOLES,
        inputs={"test_split_large", "test_masks_large", "test_mask_index_large", "model", "images"},
        parameters={"params:evaluate"},
        tags=[LARGE_HOLES],
    )
    return (
        large_holes
        + _scoring("test_split", "test_masks", "test_mask_index")
        + Pipeline(
            [
                Node(
                    func=plot_evaluation,
                    inputs="evaluation_per_image",
                    outputs="metrics_vs_hole_ratio",
                    name="plot_evaluation",
                    tags=[TAG],
                ),
                Node(
                    func=plot_evaluation_examples,
                    inputs=[
                        "images",
                        "evaluation_set",
                        "evaluation_masks",
                        "model_outputs",
                        "evaluation_per_image",
                        "params:evaluate",
                    ],
                    outputs="evaluation_examples",
                    name="plot_evaluation_examples",
                    tags=[TAG],
                ),
                Node(
                    func=record_model_score,
                    inputs=[
                        "evaluation_summary",
                        "model",
                        "test_split",
                        "params:data_processing",
                    ],
                    outputs="model_scores",
                    name="record_model_score",
                    tags=[TAG],
                ),
                Node(
                    func=report_headline,
                    inputs=["evaluation_summary", "model"],
                    outputs=None,
                    name="report_headline",
                    tags=[TAG],
                ),
            ]
        )
    )
