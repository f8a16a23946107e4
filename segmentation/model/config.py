"""Architecture options of a Mask R-CNN, named and defaulted as detectron2 names and defaults them.

The dataclass is plain data: LightningCLI exposes every field as ``--model.arch.<field>``, a detectron2
``config.yaml`` maps onto it key by key, and ``build_mask_rcnn`` is the only code that reads it. Defaults are
detectron2's ``Base-RCNN-FPN`` values with a ResNet-50 body; the X101 recipe overrides depth, groups and width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Norm = Literal["FrozenBN", "BN", "SyncBN", "GN"]
FpnNorm = Literal["", "BN", "SyncBN", "GN"]


@dataclass
class MaskRCNNConfig:
    """Every architecture number of the model, with the detectron2 key it mirrors in the comment.

    Attributes:
        num_classes: foreground classes (ROI_HEADS.NUM_CLASSES); the model adds background itself.
        depth: ResNet depth, 18/34/50/101/152 (RESNETS.DEPTH).
        num_groups: grouped-convolution groups, 32 for ResNeXt-101 32x8d (RESNETS.NUM_GROUPS).
        width_per_group: channels per group in res2, 8 for 32x8d (RESNETS.WIDTH_PER_GROUP).
        stem_out_channels: stem conv channels (RESNETS.STEM_OUT_CHANNELS).
        res2_out_channels: output channels of res2; each later stage doubles it (RESNETS.RES2_OUT_CHANNELS).
        stride_in_1x1: put the stride on the 1x1 conv (MSRA/Caffe2 weights) instead of the 3x3 (RESNETS.STRIDE_IN_1X1).
        norm: backbone normalisation (RESNETS.NORM): FrozenBN for fine-tuning, BN/SyncBN/GN to train from scratch.
        freeze_at: 0 trains everything, 1 freezes the stem, 2 the stem and res2, ... (BACKBONE.FREEZE_AT).
        fpn_out_channels: FPN width (FPN.OUT_CHANNELS).
        fpn_norm: normalisation after each FPN conv (FPN.NORM); "" for none, as in every zoo model.
        anchor_sizes: one tuple of sizes per level P2..P6 (ANCHOR_GENERATOR.SIZES).
        anchor_aspect_ratios: height/width ratios (ANCHOR_GENERATOR.ASPECT_RATIOS).
        rpn_*: RPN matcher, sampler, top-k and NMS (MODEL.RPN.*).
        roi_*: ROI matcher and sampler (MODEL.ROI_HEADS.*).
        box_head_fc_dim, box_head_num_fc: box head MLP (ROI_BOX_HEAD.FC_DIM, NUM_FC).
        box_reg_weights: box-coder weights of the ROI head (ROI_BOX_HEAD.BBOX_REG_WEIGHTS).
        mask_head_conv_dim, mask_head_num_conv: mask head (ROI_MASK_HEAD.CONV_DIM, NUM_CONV).
        box_pooler_resolution, mask_pooler_resolution: ROIAlignV2 output sizes.
        score_thresh_test, nms_thresh_test, detections_per_image: inference post-processing
            (ROI_HEADS.SCORE_THRESH_TEST, ROI_HEADS.NMS_THRESH_TEST, TEST.DETECTIONS_PER_IMAGE).
        pixel_mean, pixel_std: BGR 0-255 normalisation (MODEL.PIXEL_MEAN, MODEL.PIXEL_STD).
    """

    num_classes: int = 1
    depth: int = 50
    num_groups: int = 1
    width_per_group: int = 64
    stem_out_channels: int = 64
    res2_out_channels: int = 256
    stride_in_1x1: bool = False
    norm: Norm = "FrozenBN"
    freeze_at: int = 2
    fpn_out_channels: int = 256
    fpn_norm: FpnNorm = ""
    anchor_sizes: list[list[float]] = field(default_factory=lambda: [[32], [64], [128], [256], [512]])
    anchor_aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    rpn_iou_thresholds: tuple[float, float] = (0.3, 0.7)
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_pre_nms_topk_train: int = 2000
    rpn_pre_nms_topk_test: int = 1000
    rpn_post_nms_topk_train: int = 1000
    rpn_post_nms_topk_test: int = 1000
    rpn_nms_thresh: float = 0.7
    roi_iou_threshold: float = 0.5
    roi_batch_size_per_image: int = 512
    roi_positive_fraction: float = 0.25
    box_head_num_fc: int = 2
    box_head_fc_dim: int = 1024
    box_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    box_pooler_resolution: int = 7
    mask_head_num_conv: int = 4
    mask_head_conv_dim: int = 256
    mask_pooler_resolution: int = 14
    score_thresh_test: float = 0.05
    nms_thresh_test: float = 0.5
    detections_per_image: int = 100
    pixel_mean: tuple[float, float, float] = (103.53, 116.28, 123.675)
    pixel_std: tuple[float, float, float] = (1.0, 1.0, 1.0)
