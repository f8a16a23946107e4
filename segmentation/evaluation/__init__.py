"""Exact COCO evaluation (detectron2's numbers through torchmetrics), detectron2's results files and printed tables."""

from segmentation.evaluation.coco_evaluator import CocoEvaluation, CocoEvaluator, evaluate_results_file
from segmentation.evaluation.results import detections_to_coco_results
from segmentation.evaluation.tables import copypaste_lines, format_results_table, format_task_report

__all__ = [
    "CocoEvaluation",
    "CocoEvaluator",
    "copypaste_lines",
    "detections_to_coco_results",
    "evaluate_results_file",
    "format_results_table",
    "format_task_report",
]
