"""torchvision's stock Mask R-CNN, the reference ``scripts/benchmark.py`` times ours against.

Only torchvision's constructor arguments are set, so the code that runs is torchvision's; the backbone is the closest
to our architecture, and ``stock_matches`` says whether it has exactly our layer shapes (only then is the ratio a
like-for-like comparison).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN as StockMaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d

from segmentation.model.config import MaskRCNNConfig

Batch = tuple[list[Tensor], list[dict[str, Any]]]


def stock_backbone_name(arch: MaskRCNNConfig) -> str:
    """The torchvision backbone closest to ``arch`` (ResNet of the same depth, or ResNeXt-50 32x4d / 101 32x8d)."""
    if arch.num_groups == 1:
        return f"resnet{arch.depth}"
    return "resnext50_32x4d" if arch.depth <= 50 else "resnext101_32x8d"


def stock_matches(arch: MaskRCNNConfig) -> bool:
    """Whether the stock model has exactly our layer shapes, so that the speed ratio compares like with like."""
    name = stock_backbone_name(arch)
    groups, width = {"resnext50_32x4d": (32, 4), "resnext101_32x8d": (32, 8)}.get(name, (1, 64))
    depth = 101 if name == "resnext101_32x8d" else 50 if name == "resnext50_32x4d" else arch.depth
    shapes = (
        arch.depth,
        arch.num_groups,
        arch.width_per_group,
        arch.stem_out_channels,
        arch.res2_out_channels,
        arch.stride_in_1x1,
        arch.fpn_out_channels,
        arch.box_head_num_fc,
        arch.box_head_fc_dim,
        arch.mask_head_num_conv,
        arch.mask_head_conv_dim,
        arch.box_pooler_resolution,
        arch.mask_pooler_resolution,
    )
    res2 = 64 if arch.depth in (18, 34) else 256
    return shapes == (depth, groups, width, 64, res2, False, 256, 2, 1024, 4, 256, 7, 14)


def build_stock(arch: MaskRCNNConfig, min_size: int, max_size: int) -> StockMaskRCNN:
    """torchvision's ``MaskRCNN`` with the closest backbone, our image sizes and our RPN/ROI sampling sizes.

    Only constructor arguments are set, so the code that runs is torchvision's: it normalises float RGB 0-1 input
    itself (ImageNet mean/std), resizes (a no-op scale of 1 here) and pads. Sampling sizes and top-k values are
    the recipe's, so both models do the same amount of head work.
    """
    norm_layer = FrozenBatchNorm2d if arch.norm == "FrozenBN" else nn.BatchNorm2d
    backbone = resnet_fpn_backbone(
        backbone_name=stock_backbone_name(arch),
        weights=None,
        norm_layer=norm_layer,
        trainable_layers=max(0, min(5, 5 - arch.freeze_at)),
    )
    bg_iou, fg_iou = arch.rpn_iou_thresholds
    return StockMaskRCNN(
        backbone,
        num_classes=arch.num_classes + 1,
        min_size=min_size,
        max_size=max_size,
        rpn_pre_nms_top_n_train=arch.rpn_pre_nms_topk_train,
        rpn_pre_nms_top_n_test=arch.rpn_pre_nms_topk_test,
        rpn_post_nms_top_n_train=arch.rpn_post_nms_topk_train,
        rpn_post_nms_top_n_test=arch.rpn_post_nms_topk_test,
        rpn_nms_thresh=arch.rpn_nms_thresh,
        rpn_fg_iou_thresh=fg_iou,
        rpn_bg_iou_thresh=bg_iou,
        rpn_batch_size_per_image=arch.rpn_batch_size_per_image,
        rpn_positive_fraction=arch.rpn_positive_fraction,
        box_score_thresh=arch.score_thresh_test,
        box_nms_thresh=arch.nms_thresh_test,
        box_detections_per_img=arch.detections_per_image,
        box_fg_iou_thresh=arch.roi_iou_threshold,
        box_bg_iou_thresh=arch.roi_iou_threshold,
        box_batch_size_per_image=arch.roi_batch_size_per_image,
        box_positive_fraction=arch.roi_positive_fraction,
        bbox_reg_weights=arch.box_reg_weights,
    )


def to_stock_input(batch: Batch) -> Batch:
    """Our uint8 BGR images -> the float RGB 0-1 images torchvision's models expect; targets unchanged."""
    images, targets = batch
    return [image.flip(0).float().div(255.0) for image in images], targets
