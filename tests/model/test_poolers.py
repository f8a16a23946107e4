"""The ROI pooler is ROIAlignV2: aligned=True, sampling_ratio=0, detectron2's level mapper on P2..P5."""

from __future__ import annotations

import torch
from torchvision.ops import roi_align

from segmentation.model.poolers import D2MultiScaleRoIAlign, assign_levels


def test_level_mapper_uses_canonical_box_224_at_level_4() -> None:
    boxes = torch.tensor([[0, 0, 224, 224], [0, 0, 112, 112], [0, 0, 111.9, 112], [0, 0, 8, 8], [0, 0, 2000, 2000.0]])
    assert assign_levels(boxes, 2, 5).tolist() == [2, 1, 0, 0, 3]  # P4, P3, P2, P2 (clamped), P5 (clamped)


def test_pooler_is_aligned_with_adaptive_sampling() -> None:
    torch.manual_seed(0)
    features = {name: torch.randn(2, 3, 64 // 2**i, 64 // 2**i) for i, name in enumerate(["0", "1", "2", "3"])}
    boxes = [torch.tensor([[4.3, 5.1, 60.2, 50.7]]), torch.tensor([[1.0, 2.0, 9.5, 7.25]])]
    pooled = D2MultiScaleRoIAlign(["0", "1", "2", "3"], 7, (4, 8, 16, 32))(features, boxes, [(256, 256)] * 2)
    assert pooled.shape == (2, 3, 7, 7)
    # Box 0 (size ~50) lands on P2 (stride 4), box 1 on P2 as well; compare with a direct ROIAlignV2 call.
    rois = torch.tensor([[0, 4.3, 5.1, 60.2, 50.7], [1, 1.0, 2.0, 9.5, 7.25]])
    expected = roi_align(features["0"], rois, (7, 7), 0.25, sampling_ratio=0, aligned=True)
    assert torch.allclose(pooled, expected)
    unaligned = roi_align(features["0"], rois, (7, 7), 0.25, sampling_ratio=2, aligned=False)
    assert not torch.allclose(pooled, unaligned)


def test_bf16_keeps_box_coordinates_in_fp32() -> None:
    """A 400 px box at fractional coordinates pools the same bf16 features as with fp32 coordinates; bf16
    coordinates (2 px steps at 256-512 px) would pool different ones."""
    torch.manual_seed(0)
    names = ["0", "1", "2", "3"]
    features = {name: torch.randn(1, 4, 256 // 2**i, 256 // 2**i).bfloat16() for i, name in enumerate(names)}
    box = torch.tensor([[101.3, 57.7, 501.1, 457.9]])  # sqrt(area) 400: level P4 (stride 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pooled = D2MultiScaleRoIAlign(names, 7, (4, 8, 16, 32))(features, [box], [(1024, 1024)])
    rois = torch.cat([torch.zeros(1, 1), box], dim=1)
    fp32_coordinates = roi_align(features["2"].float(), rois, (7, 7), 1 / 16, sampling_ratio=0, aligned=True)
    torch.testing.assert_close(pooled.float(), fp32_coordinates.bfloat16().float(), rtol=0, atol=0)
    bf16_coordinates = roi_align(
        features["2"].float(), rois.bfloat16().float(), (7, 7), 1 / 16, sampling_ratio=0, aligned=True
    )
    assert not torch.equal(fp32_coordinates.bfloat16(), bf16_coordinates.bfloat16())
