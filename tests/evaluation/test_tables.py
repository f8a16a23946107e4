"""The printed evaluation output must be detectron2's, character for character."""

from __future__ import annotations

import json
import math

import pytest

from segmentation.evaluation.coco_evaluator import CocoEvaluator
from segmentation.evaluation.tables import (
    copypaste_lines,
    format_per_category_table,
    format_results_table,
    format_task_report,
)


@pytest.fixture(scope="module")
def tiny_lung(parity_dir):
    tiny = parity_dir / "tiny_lung"
    evaluator = CocoEvaluator(tiny / "dataset" / "coco_val_lung.json")
    evaluator.add_results(json.loads((tiny / "expected" / "predictions.json").read_text()))
    expected = json.loads((tiny / "expected" / "coco_eval.json").read_text())
    return evaluator.evaluate(), expected


@pytest.mark.parity
def test_summary_and_table_are_detectron2s_printed_text(tiny_lung):
    evaluation, expected = tiny_lung
    for task in ("bbox", "segm"):
        report = format_task_report(task, evaluation.stats[task], evaluation.per_category_ap.get(task))
        assert report in expected["printed"]
        assert report.splitlines()[-1].startswith("| 77.219 |" if task == "bbox" else "| 74.422 |")


@pytest.mark.parity
def test_copypaste_lines(tiny_lung):
    evaluation, _ = tiny_lung
    assert copypaste_lines(evaluation.results()) == [
        "copypaste: Task: bbox",
        "copypaste: AP,AP50,AP75,APs,APm,APl",
        "copypaste: 77.2189,83.1683,83.1683,0.0000,85.0495,93.7514",
        "copypaste: Task: segm",
        "copypaste: AP,AP50,AP75,APs,APm,APl",
        "copypaste: 74.4224,83.1683,83.1683,0.0000,70.0000,91.5017",
    ]


def test_small_table_centres_and_prints_nan():
    table = format_results_table({"AP": 5.0, "AP50": math.nan, "AP75": 100.0, "APs": 1.23456, "APm": 0.0, "APl": 0.5})
    assert table == (
        "|  AP   |  AP50  |  AP75   |  APs  |  APm  |  APl  |\n"
        "|:-----:|:------:|:-------:|:-----:|:-----:|:-----:|\n"
        "| 5.000 |  nan   | 100.000 | 1.235 | 0.000 | 0.500 |"
    )


def test_per_category_table_has_three_pairs_per_row_left_aligned():
    table = format_per_category_table({"lung": 70.5, "heart": math.nan, "a_long_name": 3.0, "x": 12.25})
    assert table == (
        "| category   | AP     | category   | AP   | category    | AP    |\n"
        "|:-----------|:-------|:-----------|:-----|:------------|:------|\n"
        "| lung       | 70.500 | heart      | nan  | a_long_name | 3.000 |\n"
        "| x          | 12.250 |            |      |             |       |"
    )


def test_per_category_table_with_two_classes_has_four_columns():
    header = format_per_category_table({"a": 1.0, "b": 2.0}).splitlines()[0]
    assert header == "| category   | AP    | category   | AP    |"


def test_report_adds_per_category_table_only_for_several_classes():
    stats = [0.5] * 6 + [0.25] * 5 + [-1.0]
    one = format_task_report("segm", stats, {})
    assert "Per-category" not in one
    assert one.splitlines()[11].endswith("] = -1.000")
    assert one.splitlines()[12] == "Evaluation results for segm: "
    several = format_task_report("segm", stats, {"a": 1.0, "b": 2.0})
    assert several.startswith(one + "\nPer-category segm AP: \n| category ")


def test_copypaste_skips_per_category_and_operating_point_entries():
    results = {"segm": {"AP": 1.0, "AP-lung": 2.0}, "operating_point": {"f1": 0.5}}
    assert copypaste_lines(results) == ["copypaste: Task: segm", "copypaste: AP", "copypaste: 1.0000"]
