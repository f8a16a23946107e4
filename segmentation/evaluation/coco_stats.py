"""The 12 COCO stats in one table: what each is, how COCOeval summarizes it, and how detectron2 reports it.

The evaluator computes the stats from torchmetrics' float64 precision/recall arrays, and the printed summary names
them; both read the rows below, so the numbers and their labels cannot drift apart.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, round((0.95 - 0.5) / 0.05) + 1).tolist()  # float64, as COCOeval's
REC_THRESHOLDS = np.linspace(0.0, 1.00, round((1.00 - 0.0) / 0.01) + 1).tolist()
MAX_DETECTIONS = [1, 10, 100]
AREA_RANGES = ("all", "small", "medium", "large")


class Stat(NamedTuple):
    """One of ``COCOeval.stats``: average precision or recall at one IoU (None: 0.50:0.95), area range, maxDets."""

    name: str
    precision: bool
    iou: float | None
    area: str
    max_dets: int


STATS = (
    Stat("AP", True, None, "all", 100),
    Stat("AP50", True, 0.5, "all", 100),
    Stat("AP75", True, 0.75, "all", 100),
    Stat("APs", True, None, "small", 100),
    Stat("APm", True, None, "medium", 100),
    Stat("APl", True, None, "large", 100),
    Stat("AR1", False, None, "all", 1),
    Stat("AR10", False, None, "all", 10),
    Stat("AR100", False, None, "all", 100),
    Stat("ARs", False, None, "small", 100),
    Stat("ARm", False, None, "medium", 100),
    Stat("ARl", False, None, "large", 100),
)
METRICS = tuple(stat.name for stat in STATS[:6])  # what detectron2 returns and tabulates, in percent


def summarize(precision: np.ndarray, recall: np.ndarray) -> list[float]:
    """The 12 ``COCOeval.stats`` from ``eval["precision"]`` (T, R, K, A, M) and ``eval["recall"]`` (T, K, A, M),
    with the same indexing and ``np.mean`` as ``COCOeval.summarize``, hence the same float64 values."""
    thresholds = np.array(IOU_THRESHOLDS)
    values = []
    for stat in STATS:
        s = precision if stat.precision else recall
        if stat.iou is not None:
            s = s[np.where(stat.iou == thresholds)[0]]
        a, m = [AREA_RANGES.index(stat.area)], [MAX_DETECTIONS.index(stat.max_dets)]
        s = s[:, :, :, a, m] if stat.precision else s[:, :, a, m]
        values.append(-1.0 if len(s[s > -1]) == 0 else float(np.mean(s[s > -1])))
    return values


def category_ap(precision: np.ndarray, k: int | None) -> float:
    """detectron2's per-category AP (percent): mean precision over IoUs and recalls, area all, 100 detections."""
    if k is None:
        return math.nan
    p = precision[:, :, k, 0, -1]
    p = p[p > -1]
    return float(np.mean(p) * 100) if p.size else math.nan


def percent(stat: float) -> float:
    """A stat as detectron2 reports it: percent, NaN where COCOeval has no value (-1)."""
    return float(stat * 100) if stat >= 0 else math.nan
