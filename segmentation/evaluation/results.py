"""Detections -> detectron2's ``coco_instances_results.json`` records, byte for byte in the same format.

detectron2 writes its predictions with ``instances_to_coco_json`` before scoring them; users compare those files
between runs and feed them to other tools, so ours must be interchangeable with detectron2's. The two helpers that
fix the numbers (float32 XYXY -> XYWH, compressed RLE of a Fortran-ordered uint8 mask) are shared with the
evaluator, so the file and the AP are computed from the same values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from segmentation.data import rle


def xyxy_to_xywh(boxes: Tensor) -> np.ndarray:
    """XYXY boxes -> XYWH float64 array, subtracting in float32 as detectron2's ``BoxMode.convert`` does."""
    xywh = boxes.detach().to(device="cpu", dtype=torch.float32).clone().reshape(-1, 4)
    xywh[:, 2:] -= xywh[:, :2]
    return xywh.numpy().astype(np.float64)


def detections_to_coco_results(
    image_id: int, detections: Mapping[str, Tensor], label_to_category_id: Mapping[int, int]
) -> list[dict[str, Any]]:
    """One image's detections -> detectron2 result records (``instances_to_coco_json``).

    Args:
        image_id: the json image id.
        detections: ``boxes`` float32 ``(N, 4)`` xyxy, ``scores`` ``(N,)``, ``labels`` int64 ``(N,)`` model labels
            1..K and ``masks`` bool ``(N, H, W)``, all at the original image size.
        label_to_category_id: model label -> json category id (``{c.label: c.id for c in contiguous_categories(...)}``).

    Returns:
        ``{"image_id", "category_id", "bbox" (XYWH floats), "score", "segmentation" ({"size": [H, W], "counts": str})}``
        per detection, in the detections' order.
    """
    labels = detections["labels"].detach().cpu().tolist()
    return coco_results(
        image_id,
        xyxy_to_xywh(detections["boxes"]),
        detections["scores"].detach().cpu().numpy(),
        [label_to_category_id[int(label)] for label in labels],
        rle.encode(detections["masks"]),
    )


def coco_results(
    image_id: int, boxes_xywh: np.ndarray, scores: Sequence[float], category_ids: Sequence[int], rles: Sequence[dict]
) -> list[dict[str, Any]]:
    """Result records from arrays already in the file's units (XYWH, json category ids, compressed RLE)."""
    return [
        {
            "image_id": int(image_id),
            "category_id": int(category_id),
            "bbox": [float(v) for v in box],
            "score": float(score),
            "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("utf-8")},
        }
        for box, score, category_id, rle in zip(boxes_xywh, scores, category_ids, rles, strict=True)
    ]
