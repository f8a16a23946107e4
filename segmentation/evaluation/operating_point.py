"""Operating-point numbers: what a user gets when keeping the detections above one score threshold.

COCO AP averages over all thresholds; a deployed model runs at one. At that threshold we report

* **precision, recall, F1 at mask IoU 0.5**: per image and per class, detections sorted by score (stable) are matched
  greedily, each to the still-unmatched ground truth with the highest mask IoU >= 0.5 (first one on ties). An unmatched
  detection covering a crowd region (intersection / detection area >= 0.5, COCO's crowd IoU) is ignored, not a false
  positive; crowd regions are never counted as ground truths. A ground truth whose mask has no pixels (such as the
  area-0 annotations of empty slices, which COCOeval keeps) cannot be matched and is not an object: it is not counted.
* **Dice and IoU of the foreground**, per image, then averaged over every image of the json: predicted foreground =
  union of the kept masks of all classes, ground-truth foreground = union of all ground-truth masks (crowd regions
  included: they are labelled object pixels). An image where both are empty scores 1.0 (a correct "nothing here").

Precision (recall, F1) is NaN when it is undefined (no kept detection, no ground truth). Everything works on RLEs, so
no dense mask is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pycocotools.mask as mask_utils

from segmentation.data import rle

MATCH_IOU = 0.5


@dataclass
class OperatingPointAccumulator:
    """Running counts over images; ``add_image`` once per json image, ``summary`` at the end."""

    score_threshold: float = 0.5
    true_positives: int = 0
    false_positives: int = 0
    false_negatives: int = 0
    dice_sum: float = 0.0
    iou_sum: float = 0.0
    images: int = 0

    def add_image(
        self,
        dt_rles: list[dict],
        dt_scores: np.ndarray,
        dt_categories: np.ndarray,
        gt_rles: list[dict],
        gt_categories: np.ndarray,
        gt_crowd: np.ndarray,
    ) -> None:
        """Count one image: detections (RLE, score, category id) against its ground truths (RLE, category, crowd)."""
        keep = np.flatnonzero(np.asarray(dt_scores) >= self.score_threshold)
        keep = keep[np.argsort(-np.asarray(dt_scores)[keep], kind="mergesort")]
        kept_rles = [dt_rles[i] for i in keep]
        kept_categories = np.asarray(dt_categories)[keep]
        gt_categories = np.asarray(gt_categories)
        gt_crowd = np.asarray(gt_crowd, dtype=bool)
        gt_areas = rle.area(gt_rles)

        for category in np.union1d(kept_categories, gt_categories):
            dets = [kept_rles[i] for i in np.flatnonzero(kept_categories == category)]
            objects = [gt_rles[i] for i in np.flatnonzero((gt_categories == category) & ~gt_crowd & (gt_areas > 0))]
            crowds = [gt_rles[i] for i in np.flatnonzero((gt_categories == category) & gt_crowd)]
            self._match(dets, objects, crowds)

        dice, iou = _foreground_overlap(kept_rles, gt_rles)
        self.dice_sum += dice
        self.iou_sum += iou
        self.images += 1

    def _match(self, dets: list[dict], objects: list[dict], crowds: list[dict]) -> None:
        matched = np.zeros(len(objects), dtype=bool)
        ious = mask_utils.iou(dets, objects, [0] * len(objects)) if dets and objects else np.zeros((len(dets), 0))
        crowd_ious = mask_utils.iou(dets, crowds, [1] * len(crowds)) if dets and crowds else np.zeros((len(dets), 0))
        for d in range(len(dets)):
            candidates = np.where(matched, -1.0, ious[d]) if len(objects) else np.zeros(0)
            if len(candidates) and candidates.max() >= MATCH_IOU:
                matched[int(np.argmax(candidates))] = True
                self.true_positives += 1
            elif not (crowd_ious.shape[1] and crowd_ious[d].max() >= MATCH_IOU):
                self.false_positives += 1
        self.false_negatives += int((~matched).sum())

    def summary(self) -> dict[str, float]:
        """``score_threshold, precision, recall, f1, dice, iou`` (fractions) and the counts behind them."""
        tp, fp, fn = self.true_positives, self.false_positives, self.false_negatives
        precision = tp / (tp + fp) if tp + fp else math.nan
        recall = tp / (tp + fn) if tp + fn else math.nan
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan
        return {
            "score_threshold": float(self.score_threshold),
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "dice": self.dice_sum / self.images if self.images else math.nan,
            "iou": self.iou_sum / self.images if self.images else math.nan,
            "true_positives": tp,
            "false_positives": fp,
            "false_negatives": fn,
            "images": self.images,
        }


def _foreground_overlap(pred_rles: list[dict], gt_rles: list[dict]) -> tuple[float, float]:
    """Dice and IoU of the union of ``pred_rles`` against the union of ``gt_rles``; 1.0 for both when both are empty."""
    pred = mask_utils.merge(pred_rles, intersect=False) if pred_rles else None
    gt = mask_utils.merge(gt_rles, intersect=False) if gt_rles else None
    pred_area = float(rle.area(pred)) if pred is not None else 0.0
    gt_area = float(rle.area(gt)) if gt is not None else 0.0
    if pred_area + gt_area == 0:
        return 1.0, 1.0
    if pred is None or gt is None:
        inter = 0.0
    else:
        inter = float(rle.area(mask_utils.merge([pred, gt], intersect=True)))
    return 2 * inter / (pred_area + gt_area), inter / (pred_area + gt_area - inter)
