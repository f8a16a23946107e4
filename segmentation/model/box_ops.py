"""Box clipping and per-class NMS shared by the RPN and the ROI heads, with their export branches.

Eagerly they are torchvision's ``clip_boxes_to_image`` and ``batched_nms``. Two things change only while the model
is exported to ONNX, so that the graph computes what PyTorch computes at any image size:

- tracing records Python numbers as constants, and torchvision's own tracing branch of ``clip_boxes_to_image``
  wraps the image size in ``torch.tensor``, which records the traced image's size; here it stays a graph value;
- ONNX leaves the order of ``NonMaxSuppression``'s output open (OpenVINO's differs from onnxruntime's), and the
  top-k slices after NMS depend on it; the exported NMS sorts its kept indices by score, as PyTorch returns them.
"""

from __future__ import annotations

import torch
import torchvision.ops
from torch import Tensor


def clip_boxes_to_image(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clip ``(..., 4)`` xyxy boxes to ``size = (height, width)``."""
    if not torch.jit.is_tracing():
        return torchvision.ops.clip_boxes_to_image(boxes, size)
    height, width = (torch.as_tensor(v, dtype=boxes.dtype) for v in size)
    x = torch.minimum(boxes[..., 0::2].clamp(min=0), width)
    y = torch.minimum(boxes[..., 1::2].clamp(min=0), height)
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS per category ``idxs``; the kept indices in descending score order."""
    keep = torchvision.ops.batched_nms(boxes, scores, idxs, iou_threshold)
    if not torch.onnx.is_in_onnx_export():
        return keep
    return keep[torch.sort(scores[keep], descending=True).indices]
