"""The detectron2-style ResNet/ResNeXt body: stage widths, norms and which parameters FREEZE_AT freezes."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from segmentation.model.config import MaskRCNNConfig
from segmentation.model.mask_rcnn import build_backbone

SMALL = MaskRCNNConfig(depth=50, num_groups=4, width_per_group=4, res2_out_channels=64, fpn_out_channels=16)


def trainable_prefixes(cfg: MaskRCNNConfig) -> set[str]:
    body = build_backbone(cfg).body
    return {name.split(".")[0] for name, p in body.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    ("freeze_at", "trainable"),
    [
        (0, {"conv1", "layer1", "layer2", "layer3", "layer4"}),
        (1, {"layer1", "layer2", "layer3", "layer4"}),
        (2, {"layer2", "layer3", "layer4"}),
        (3, {"layer3", "layer4"}),
        (5, set()),
    ],
)
def test_freeze_at_decides_which_stages_train(freeze_at: int, trainable: set[str]) -> None:
    cfg = MaskRCNNConfig(depth=50, width_per_group=32, res2_out_channels=64, norm="GN", freeze_at=freeze_at)
    # GN has parameters, so the stem's bn1 is counted with conv1 ("bn1" joins "conv1" below).
    got = {"conv1" if p == "bn1" else p for p in trainable_prefixes(cfg)}
    assert got == trainable


def test_frozen_stages_use_frozen_batchnorm_when_norm_is_bn() -> None:
    body = build_backbone(MaskRCNNConfig(**{**SMALL.__dict__, "norm": "BN", "freeze_at": 2})).body
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert isinstance(body.layer1[0].bn1, FrozenBatchNorm2d)
    assert isinstance(body.layer2[0].bn1, nn.BatchNorm2d)
    assert "layer2.0.bn1.num_batches_tracked" in body.state_dict()
    assert "layer1.0.bn1.num_batches_tracked" not in body.state_dict()


def test_resnext_stage_widths_follow_res2_out_channels_and_groups() -> None:
    body = build_backbone(SMALL).body
    assert body.out_channels == [64, 128, 256, 512]
    block = body.layer1[0]
    assert block.conv2.groups == 4 and block.conv2.out_channels == 16 and block.conv3.out_channels == 64
    # stride_in_1x1 False: the stride sits on the 3x3 conv.
    assert body.layer2[0].conv1.stride == (1, 1) and body.layer2[0].conv2.stride == (2, 2)


def test_basic_block_depths_and_fpn_levels() -> None:
    backbone = build_backbone(MaskRCNNConfig(depth=18, res2_out_channels=64, fpn_out_channels=8)).eval()
    with torch.no_grad():
        out = backbone(torch.zeros(1, 3, 64, 96))
    assert list(out) == ["0", "1", "2", "3", "pool"]
    assert [tuple(v.shape[2:]) for v in out.values()] == [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    assert not hasattr(backbone.body.layer1[0], "conv3")


@pytest.mark.parametrize(("depth", "timm_name"), [(18, "resnet18"), (50, "resnet50")])
def test_body_publishes_timms_feature_info_for_the_same_resnet(depth: int, timm_name: str) -> None:
    import timm

    res2 = 64 if depth == 18 else 256
    body = build_backbone(MaskRCNNConfig(depth=depth, res2_out_channels=res2)).body
    reference = timm.create_model(timm_name, pretrained=False, features_only=True, out_indices=(1, 2, 3, 4))
    keys = ["num_chs", "reduction", "module"]
    assert body.feature_info.get_dicts(keys) == reference.feature_info.get_dicts(keys)


def test_fpn_feature_info_describes_its_outputs() -> None:
    backbone = build_backbone(SMALL).eval()
    with torch.no_grad():
        out = backbone(torch.zeros(1, 3, 128, 192))
    info = backbone.feature_info
    assert info.module_name() == list(out)
    assert info.reduction() == [4, 8, 16, 32, 64]
    for key, channels, stride in zip(info.module_name(), info.channels(), info.reduction(), strict=True):
        assert tuple(out[key].shape[1:]) == (channels, 128 // stride, 192 // stride)
