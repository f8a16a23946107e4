"""detectron2's ``DefaultAnchorGenerator`` as a torchvision ``AnchorGenerator``.

torchvision rounds the cell anchors, derives each level's stride as ``padded_size // grid_size`` (64 becomes 58 on
P6 when the padded side is not a multiple of 64) and builds anchors in the feature dtype (fp16 under autocast).
detectron2 keeps the cell anchors unrounded, uses the backbone's fixed strides (4..64, from its
``feature_info``) with offset 0 and fp32. This subclass
does the latter; the anchor order (position-major, then size, then aspect ratio) is the same in both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """Zero-centred xyxy anchors of one level, detectron2's formula: ``w = sqrt(s^2 / ar)``, ``h = ar * w``."""
    anchors = []
    for size in sizes:
        for ratio in aspect_ratios:
            w = math.sqrt(size * size / ratio)
            h = ratio * w
            anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors, dtype=torch.float32)


def grid_anchors(cell: Tensor, grid_hw: tuple[int, int], stride: int) -> Tensor:
    """All anchors of one level, ``(H * W * A, 4)`` fp32, anchor centres at ``(x * stride, y * stride)``."""
    h, w = grid_hw
    shifts_x = torch.arange(0, w * stride, step=stride, dtype=torch.float32, device=cell.device)
    shifts_y = torch.arange(0, h * stride, step=stride, dtype=torch.float32, device=cell.device)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    return (shifts.view(-1, 1, 4) + cell.view(1, -1, 4)).reshape(-1, 4)


class D2AnchorGenerator(AnchorGenerator):
    """Unrounded cell anchors, fixed strides, fp32, offset 0.

    ``forward`` keeps torchvision's signature and output (one ``(sum_l H_l W_l A, 4)`` tensor per image);
    ``level_anchors`` gives the per-level tensors the detectron2 RPN works with.
    """

    def __init__(
        self, sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[float], strides: Sequence[int]
    ) -> None:
        if len(sizes) != len(strides):
            raise ValueError("one anchor-size tuple per feature level is required")
        self.strides = list(strides)
        super().__init__(tuple(tuple(s) for s in sizes), (tuple(aspect_ratios),) * len(sizes))

    def generate_anchors(  # type: ignore[override]
        self,
        scales: Sequence[float],
        aspect_ratios: Sequence[float],
        dtype: torch.dtype = torch.float32,
        device: torch.device | None = None,
    ) -> Tensor:
        return cell_anchors(scales, aspect_ratios).to(device=device)

    def level_anchors(self, feature_maps: Sequence[Tensor]) -> list[Tensor]:
        """fp32 anchors of each level, on the features' device, whatever the features' dtype."""
        device = feature_maps[0].device
        return [
            grid_anchors(cell.to(device), (f.shape[-2], f.shape[-1]), stride)
            for cell, f, stride in zip(self.cell_anchors, feature_maps, self.strides, strict=True)
        ]

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        anchors = torch.cat(self.level_anchors(feature_maps))
        return [anchors for _ in range(len(image_list.image_sizes))]
