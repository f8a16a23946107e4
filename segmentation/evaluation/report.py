"""What an evaluation leaves behind: detectron2's printed report and the ``predictions.json``/``eval.json`` files.

Shared by fit's evaluations (``MaskRCNNModule``) and ``segmentation.evaluate``, so both print and write the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segmentation.data.rle import write_json_atomic
from segmentation.evaluation.coco_evaluator import TASKS, CocoEvaluation
from segmentation.evaluation.tables import copypaste_lines, format_task_report


def evaluation_report(split: str, evaluation: CocoEvaluation) -> str:
    """What detectron2 prints after COCO evaluation, plus the operating-point numbers no peer reports."""
    lines = [f"Evaluation on the {split} split:"]
    lines += [format_task_report(task, evaluation.stats[task], evaluation.per_category_ap.get(task)) for task in TASKS]
    lines += copypaste_lines(evaluation.results())
    lines.append("Operating point: " + ", ".join(f"{k} {v:.4f}" for k, v in evaluation.operating_point.items()))
    return "\n".join(lines)


def write_evaluation(
    results_dir: Path, split: str, evaluation: CocoEvaluation, predictions: list[dict[str, Any]] | None
) -> None:
    """``eval.json`` (AP per task) and, when given, detectron2's ``coco_instances_results.json`` as
    ``predictions.json``; a split other than val prefixes both names (``test_eval.json``)."""
    prefix = "" if split == "val" else f"{split}_"
    results = evaluation.results()
    if predictions is not None:
        write_json_atomic(results_dir / f"{prefix}predictions.json", predictions)
    write_json_atomic(results_dir / f"{prefix}eval.json", {task: results[task] for task in TASKS})
