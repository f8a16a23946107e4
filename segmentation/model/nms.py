"""Per-class NMS shared by the RPN and the ROI heads, with its ONNX export branch.

Eagerly it is torchvision's ``batched_nms``, whose kept indices come in descending score order. ONNX leaves the order
of ``NonMaxSuppression``'s output open (OpenVINO's differs from onnxruntime's), and the top-k slices after NMS
depend on it, so while the model is exported the kept indices are sorted by score explicitly.
"""

from __future__ import annotations

import torch
import torchvision.ops
from torch import Tensor


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS per category ``idxs``; the kept indices in descending score order."""
    keep = torchvision.ops.batched_nms(boxes, scores, idxs, iou_threshold)
    if not torch.onnx.is_in_onnx_export():
        return keep
    return keep[torch.sort(scores[keep], descending=True).indices]
