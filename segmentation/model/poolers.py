"""detectron2's ``ROIPooler`` with ``ROIAlignV2`` as a torchvision ``MultiScaleRoIAlign``.

torchvision's pooler hard-codes ``aligned=False`` (a half-pixel shift of every sampling grid), samples 2x2 points
per bin and infers the level scales from the image size. detectron2 pools with ``aligned=True`` and an adaptive
sampling ratio (0), uses the backbone's fixed strides of P2..P5 (its ``feature_info``) and assigns a box of size
``s`` to level ``floor(4 + log2(s / 224 + 1e-8))`` clamped to [2, 5]. It must stay a ``MultiScaleRoIAlign``
subclass because torchvision's detection classes type-check their poolers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign, roi_align


def assign_levels(
    boxes: Tensor, min_level: int, max_level: int, canonical_size: int = 224, canonical_level: int = 4
) -> Tensor:
    """detectron2's ``assign_boxes_to_levels``: the 0-based pyramid index of each xyxy box."""
    sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    levels = torch.floor(canonical_level + torch.log2(sizes / canonical_size + 1e-8))
    return torch.clamp(levels, min=min_level, max=max_level).to(torch.int64) - min_level


def rois_with_batch_index(boxes: Sequence[Tensor]) -> Tensor:
    """``(M, 5)`` rois ``(image_index, x0, y0, x1, y1)`` from one box tensor per image.

    Each image's index column is shaped from its own boxes (torchvision's ``_convert_to_roi_format``), not from
    Python box counts, so an exported graph holds for any number of boxes without a tracing branch.
    """
    return torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])


def _pooling_inputs(feature: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
    """detectron2 casts the ROI coordinates to the feature dtype: fine in fp16 (0.25 px steps at 256-512 px) and
    fp32, but bf16 has 2 px steps at 256-512 px, a precision detectron2 never runs, which would misalign the pooled
    features with the mask targets. Under bf16 the coordinates stay fp32 and the pooling runs in fp32, which is what
    torchvision's roi_align does under autocast anyway."""
    if feature.dtype == torch.bfloat16:
        return feature.float(), rois.float()
    return feature, rois.to(feature.dtype)


class D2MultiScaleRoIAlign(MultiScaleRoIAlign):
    """ROIAlignV2 (``aligned=True``, ``sampling_ratio=0``) over the named levels, each with its stride."""

    def __init__(self, featmap_names: list[str], output_size: int, strides: Sequence[int]) -> None:
        super().__init__(featmap_names, output_size, sampling_ratio=0)
        self.strides = list(strides)
        self.min_level = int(math.log2(self.strides[0]))
        self.max_level = int(math.log2(self.strides[-1]))

    def forward(  # type: ignore[override]
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]] | None = None
    ) -> Tensor:
        features = [x[name] for name in self.featmap_names]
        rois = rois_with_batch_index(boxes)
        levels = assign_levels(rois[:, 1:], self.min_level, self.max_level)
        first = features[0]
        out = first.new_zeros((rois.shape[0], first.shape[1], *self.output_size))
        for level, (feature, stride) in enumerate(zip(features, self.strides, strict=True)):
            idx = torch.nonzero(levels == level).squeeze(1)
            pooled = roi_align(
                *_pooling_inputs(feature, rois[idx]), self.output_size, 1.0 / stride, sampling_ratio=0, aligned=True
            )
            out.index_put_((idx,), pooled.to(out.dtype))
        return out
