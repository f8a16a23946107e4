"""The shared NMS is torchvision's batched NMS: per class, kept indices best first."""

from __future__ import annotations

import torch
import torchvision

from segmentation.model.nms import batched_nms


def test_eager_nms_is_torchvision_s_with_kept_indices_best_first() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]])
    scores, classes = torch.tensor([0.2, 0.9, 0.5, 0.7]), torch.tensor([0, 0, 1, 0])
    keep = batched_nms(boxes, scores, classes, 0.5)
    assert torch.equal(keep, torchvision.ops.batched_nms(boxes, scores, classes, 0.5))
    assert keep.tolist() == [1, 3, 2]
