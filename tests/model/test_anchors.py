"""Anchors are detectron2's: unrounded cell anchors, fixed strides 4..64, offset 0, fp32."""

from __future__ import annotations

import math

import torch
from torchvision.models.detection.image_list import ImageList

from segmentation.model.anchors import D2AnchorGenerator, cell_anchors

SIZES = [[32], [64], [128], [256], [512]]
RATIOS = [0.5, 1.0, 2.0]
STRIDES = [4, 8, 16, 32, 64]


def d2_cell(size: float, ratio: float) -> list[float]:
    w = math.sqrt(size * size / ratio)
    h = ratio * w
    return [-w / 2, -h / 2, w / 2, h / 2]


def test_cell_anchors_are_not_rounded() -> None:
    cells = cell_anchors([32], RATIOS)
    expected = torch.tensor([d2_cell(32, r) for r in RATIOS], dtype=torch.float32)
    assert torch.equal(cells, expected)
    assert cells[0, 0].item() != round(cells[0, 0].item())  # -22.627, torchvision would round to -23


def test_anchor_grid_uses_fixed_strides_on_a_padded_size_not_multiple_of_64() -> None:
    # A 341x512 image pads to 352x512: P6 is a 6x8 grid; torchvision would use a vertical stride of 352 // 6 = 58.
    generator = D2AnchorGenerator(SIZES, RATIOS, STRIDES)
    padded_h, padded_w = 352, 512
    features = [torch.zeros(1, 4, math.ceil(padded_h / s), math.ceil(padded_w / s)) for s in STRIDES]
    (anchors,) = generator(ImageList(torch.zeros(1, 3, padded_h, padded_w), [(341, 512)]), features)

    expected = []
    for (size,), stride, f in zip(SIZES, STRIDES, features, strict=True):
        for y in range(f.shape[2]):
            for x in range(f.shape[3]):
                for ratio in RATIOS:
                    x0, y0, x1, y1 = d2_cell(size, ratio)
                    expected.append([x * stride + x0, y * stride + y0, x * stride + x1, y * stride + y1])
    assert anchors.dtype == torch.float32
    assert torch.allclose(anchors, torch.tensor(expected), atol=1e-4, rtol=0)
    p6 = generator.level_anchors(features)[4]
    centre_y = (p6[:, 1] + p6[:, 3]) / 2
    assert sorted(set(centre_y.round().tolist())) == [0, 64, 128, 192, 256, 320]


def test_anchors_stay_fp32_for_half_precision_features() -> None:
    generator = D2AnchorGenerator(SIZES, RATIOS, STRIDES)
    features = [torch.zeros(1, 4, 64 // s, 64 // s, dtype=torch.float16) for s in STRIDES]
    assert all(a.dtype == torch.float32 for a in generator.level_anchors(features))
