"""Operating-point precision/recall/F1 at mask IoU 0.5 and foreground Dice/IoU, on hand-checked cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch

from segmentation.evaluation.coco_evaluator import CocoEvaluator
from segmentation.evaluation.operating_point import OperatingPointAccumulator


def _rle(mask: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def _box(y0: int, y1: int, x0: int, x1: int, shape=(20, 20)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_greedy_matching_by_score_per_class():
    acc = OperatingPointAccumulator(score_threshold=0.5)
    gt = [_box(0, 10, 0, 10), _box(10, 20, 10, 20)]
    dets = [
        _box(0, 10, 0, 9),  # IoU 0.9 with gt 0, score 0.6
        _box(0, 10, 0, 10),  # IoU 1.0 with gt 0, score 0.9: matched first, so the 0.6 one is a duplicate (FP)
        _box(10, 20, 10, 20),  # perfect, but wrong class: FP, and gt 1 stays a FN
        _box(10, 20, 10, 20),  # below the threshold: not counted
    ]
    acc.add_image(
        [_rle(m) for m in dets],
        np.array([0.6, 0.9, 0.8, 0.4]),
        np.array([1, 1, 2, 1]),
        [_rle(m) for m in gt],
        np.array([1, 1]),
        np.array([0, 0]),
    )
    s = acc.summary()
    assert (s["true_positives"], s["false_positives"], s["false_negatives"]) == (1, 2, 1)
    assert s["precision"] == pytest.approx(1 / 3) and s["recall"] == 0.5 and s["f1"] == pytest.approx(0.4)
    # foreground: kept masks cover both squares exactly as the ground truth does
    assert s["dice"] == 1.0 and s["iou"] == 1.0


def test_iou_below_half_is_a_miss_and_crowd_regions_are_ignored():
    acc = OperatingPointAccumulator()
    gt = [_box(0, 10, 0, 10), _box(10, 20, 0, 20)]
    dets = [_box(0, 10, 0, 4), _box(12, 20, 0, 20)]  # IoU 0.4 with the object; inside the crowd region
    acc.add_image(
        [_rle(m) for m in dets],
        np.array([0.9, 0.9]),
        np.array([1, 1]),
        [_rle(m) for m in gt],
        np.array([1, 1]),
        np.array([0, 1]),
    )
    s = acc.summary()
    assert (s["true_positives"], s["false_positives"], s["false_negatives"]) == (0, 1, 1)
    inter, pred, gt_area = 40 + 160, 40 + 160, 100 + 200
    assert s["dice"] == pytest.approx(2 * inter / (pred + gt_area))
    assert s["iou"] == pytest.approx(inter / (pred + gt_area - inter))


def test_empty_prediction_on_empty_image_scores_one_and_empty_gt_masks_are_not_objects():
    acc = OperatingPointAccumulator()
    empty_gt = _rle(np.zeros((20, 20), dtype=bool))  # tiny_lung's area-0 annotation of an empty slice
    acc.add_image([], np.zeros(0), np.zeros(0, dtype=np.int64), [empty_gt], np.array([1]), np.array([0]))
    acc.add_image([], np.zeros(0), np.zeros(0, dtype=np.int64), [], np.zeros(0), np.zeros(0))
    s = acc.summary()
    assert s["dice"] == 1.0 and s["iou"] == 1.0 and s["images"] == 2
    assert s["false_negatives"] == 0
    assert math.isnan(s["precision"]) and math.isnan(s["recall"]) and math.isnan(s["f1"])


def test_prediction_on_empty_image_scores_zero():
    acc = OperatingPointAccumulator()
    acc.add_image([_rle(_box(0, 5, 0, 5))], np.array([0.7]), np.array([1]), [], np.zeros(0), np.zeros(0))
    s = acc.summary()
    assert s["dice"] == 0.0 and s["false_positives"] == 1 and s["precision"] == 0.0


def test_evaluator_reports_operating_point_over_every_json_image(tmp_path):
    gt = {
        "images": [{"id": 1, "height": 20, "width": 20}, {"id": 2, "height": 20, "width": 20}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 5,
                "iscrowd": 0,
                "area": 100.0,
                "bbox": [0, 0, 10, 10],
                "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]],
            },
        ],
        "categories": [{"id": 5, "name": "lung"}],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    evaluator = CocoEvaluator(path, score_threshold=0.5)
    polygon = mask_utils.frPyObjects(gt["annotations"][0]["segmentation"], 20, 20)
    mask = torch.from_numpy(mask_utils.decode(polygon)[..., 0].astype(bool))
    evaluator.update(
        1,
        {
            "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]),
            "scores": torch.tensor([0.8]),
            "labels": torch.tensor([1]),
            "masks": mask[None],
        },
    )
    op = evaluator.compute()["operating_point"]  # image 2 was never updated: empty prediction, empty GT -> 1.0
    assert op["images"] == 2 and op["precision"] == 1.0 and op["recall"] == 1.0
    assert op["dice"] == 1.0 and op["iou"] == 1.0 and op["score_threshold"] == 0.5
