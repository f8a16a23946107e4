"""Shared fixtures: where detectron2's reference outputs live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """``../shared/parity`` beside the checkout (CI lays it there), or ``$SEGMENTATION_PARITY_DIR``."""
    path = Path(os.environ.get("SEGMENTATION_PARITY_DIR", REPO.parent / "shared" / "parity"))
    if not (path / "tiny_lung").is_dir():
        pytest.fail(f"detectron2 parity fixtures not found at {path}; set SEGMENTATION_PARITY_DIR")
    return path


@pytest.fixture(scope="session")
def mask_rcnn_names():
    """Our state-dict names (torchvision's MaskRCNN names) of a FrozenBN Mask R-CNN with 4 mask convs.

    Call it with the bottleneck blocks per stage and whether res2.0 has a projection shortcut (detectron2 builds none
    when the stem already has res2's output channels).
    """

    def names(blocks: list[int], *, res2_shortcut: bool) -> set[str]:
        bn = ("weight", "bias", "running_mean", "running_var")
        out = {"backbone.body.conv1.weight", *(f"backbone.body.bn1.{p}" for p in bn)}
        for layer, n in enumerate(blocks, start=1):
            for b in range(n):
                prefix = f"backbone.body.layer{layer}.{b}"
                for k in (1, 2, 3):
                    out |= {f"{prefix}.conv{k}.weight", *(f"{prefix}.bn{k}.{p}" for p in bn)}
                if b == 0 and (layer > 1 or res2_shortcut):
                    out |= {f"{prefix}.downsample.0.weight", *(f"{prefix}.downsample.1.{p}" for p in bn)}
        modules = [
            *(f"backbone.fpn.{kind}.{i}.0" for kind in ("inner_blocks", "layer_blocks") for i in range(4)),
            "rpn.head.conv.0.0",
            "rpn.head.cls_logits",
            "rpn.head.bbox_pred",
            "roi_heads.box_head.fc6",
            "roi_heads.box_head.fc7",
            "roi_heads.box_predictor.cls_score",
            "roi_heads.box_predictor.bbox_pred",
            *(f"roi_heads.mask_head.{i}.0" for i in range(4)),
            "roi_heads.mask_predictor.conv5_mask",
            "roi_heads.mask_predictor.mask_fcn_logits",
        ]
        return out | {f"{module}.{p}" for module in modules for p in ("weight", "bias")}

    return names
