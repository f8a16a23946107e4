"""Detections -> detectron2's ``coco_instances_results.json`` records, byte for byte in the same format.

detectron2 writes its predictions with ``instances_to_coco_json`` before scoring them; users compare those files
between runs and feed them to other tools, so ours must be interchangeable with detectron2's. The two helpers that
fix the numbers (float32 XYXY -> XYWH, compressed RLE of a Fortran-ordered uint8 mask) are shared with the
evaluator, so the file and the AP are computed from the same values.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import torch
from torch import Tensor


def xyxy_to_xywh(boxes: Tensor) -> np.ndarray:
    """XYXY boxes -> XYWH float64 array, subtracting in float32 as detectron2's ``BoxMode.convert`` does."""
    xywh = boxes.detach().to(device="cpu", dtype=torch.float32).clone().reshape(-1, 4)
    xywh[:, 2:] -= xywh[:, :2]
    return xywh.numpy().astype(np.float64)


def encode_masks(masks: Tensor) -> list[dict]:
    """Bool ``(N, H, W)`` masks -> compressed RLEs ``{"size": [H, W], "counts": bytes}``, one per mask.

    Same bytes as detectron2's ``mask_util.encode(np.array(m[:, :, None], order="F", dtype="uint8"))``; the whole
    stack is encoded in one call, which is what ``(H, W, N)`` Fortran order is for.
    """
    if masks.dtype not in (torch.bool, torch.uint8):
        raise TypeError(f"masks must be bool (or uint8 0/1), got {masks.dtype}; threshold probabilities first")
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {tuple(masks.shape)}")
    if masks.shape[0] == 0:
        return []
    # (N, W, H) C-contiguous is (H, W, N) Fortran-contiguous: one copy, no further temporary of the whole stack
    # (big temporaries fragment the host heap when many images are encoded in a row)
    stack = masks.detach().transpose(1, 2).to(device="cpu", dtype=torch.uint8, memory_format=torch.contiguous_format)
    return mask_utils.encode(stack.contiguous().numpy().transpose(2, 1, 0))


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
        encode_masks(detections["masks"]),
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


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as json so that readers see the old file or the complete new one, never a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
