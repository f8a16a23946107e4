"""scripts/benchmark_evaluation.py on a tiny split: every row gives COCOeval's numbers, in one json line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_row_of_the_evaluation_benchmark_gives_cocoevals_numbers() -> None:
    command = [sys.executable, str(REPO / "scripts/benchmark_evaluation.py"), "--images", "4", "--detections", "20"]
    command += ["--size", "96"]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=300).stdout
    rows = json.loads(out.strip().splitlines()[-1])["rows"]
    assert set(rows) == {
        "detectron2's way, pycocotools COCOeval",
        "detectron2's way, faster-coco-eval COCOeval_faster",
        "ours, torchmetrics backend pycocotools",
        "ours, torchmetrics backend faster_coco_eval",
    }
    assert rows["ours, torchmetrics backend pycocotools"]["max_abs_stat_diff"] == 0.0
    assert all(row["total_s"] == row["update_s"] + row["compute_s"] for row in rows.values())
    assert "| ours, torchmetrics backend pycocotools |" in out
