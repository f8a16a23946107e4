"""Rows about COCO evaluation: AP of our predictions and of detectron2's own predictions file."""

from __future__ import annotations

import contextlib
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from segmentation.evaluate import main as evaluate_main
from segmentation.evaluation.coco_evaluator import evaluate_results_file

from .table import Row, exact_row, fmt


def _stats_diff(evaluation: Any, expected: dict) -> float:
    """Largest |ours - detectron2| over the 12 COCOeval stats of bbox and segm, in percent."""
    return max(
        abs(100 * ours - theirs)
        for task in ("bbox", "segm")
        for ours, theirs in zip(evaluation.stats[task], expected["stats12_percent"][task], strict=True)
    )


def _returned_diff(ours: dict, theirs: dict) -> float:
    """Largest |ours - detectron2| over the AP numbers COCOEvaluator returns (both tasks)."""
    if set(ours) != set(theirs) or any(set(ours[t]) != set(theirs[t]) for t in theirs):
        return math.inf
    return max(abs(ours[t][name] - theirs[t][name]) for t in theirs for name in theirs[t])


def _evaluate(argv: list[str], output_dir: Path, predictions: Path, gt: Path, expected: dict) -> float:
    """Run ``python -m segmentation.evaluate`` and compare both what it wrote and COCOeval on ``predictions``."""
    evaluate_main([*argv, "--data.val_json", str(gt), "--output_dir", str(output_dir)])
    returned = json.loads((output_dir / "eval.json").read_text())
    return max(
        _returned_diff(returned, expected["returned_by_COCOEvaluator"]),
        _stats_diff(evaluate_results_file(predictions, gt), expected),
    )


def coco_ap(parity_dir: Path) -> tuple[Row, Row]:
    """``python -m segmentation.evaluate`` on detectron2's config dump and checkpoint, and on its predictions file."""
    tiny = parity_dir / "tiny_lung"
    gt = tiny / "dataset" / "coco_val_lung.json"
    expected = json.loads((tiny / "expected" / "coco_eval.json").read_text())
    # segmentation.evaluate prints detectron2's tables to stdout: keep stdout for the report's table.
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        ours_dir, theirs_dir = Path(tmp) / "ours", Path(tmp) / "theirs"
        model = ["--config", str(tiny / "config.yaml"), "--model.weights", str(tiny / "model_final.pkl"),
                 "--data.val_images", str(tiny / "dataset" / "val"), "--data.num_workers=0",
                 "--trainer.enable_progress_bar=false"]  # fmt: skip
        ours = _evaluate(model, ours_dir, ours_dir / "predictions.json", gt, expected)
        their_predictions = tiny / "expected" / "predictions.json"
        theirs = _evaluate(["--predictions", str(their_predictions)], theirs_dir, their_predictions, gt, expected)

    def text(diff: float) -> str:
        return "identical, all 24 numbers" if diff == 0 else f"max {fmt(diff)} AP points off"

    return (
        exact_row("coco_ap", "COCO AP on the val split (12 bbox + 12 segm)", "ap_points", ours, text(ours)),
        exact_row(
            "detectron2_predictions_ap", "AP of detectron2's own predictions file", "ap_points", theirs, text(theirs)
        ),
    )
