"""MODEL.* (and TEST.DETECTIONS_PER_IMAGE) of a detectron2 config -> ``MaskRCNNConfig``, or refusals by name.

Anything that selects another network than detectron2's FPN Mask R-CNN (C4 or DC5 backbones, cascade heads,
deformable convs, other losses, ...) is refused by its detectron2 name and value rather than silently approximated.
"""

from __future__ import annotations

from typing import Any, get_args

from segmentation.detectron2_config.keys import KeyReader
from segmentation.model.config import FpnNorm, MaskRCNNConfig, Norm


def _floats(values: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def check_architecture(r: KeyReader) -> None:
    """Refuse the MODEL.* settings that select something other than detectron2's FPN Mask R-CNN."""
    _check_backbone(r)
    _check_proposals(r)
    _check_heads(r)
    r.require("MODEL.PIXEL_MEAN", lambda v: len(v) == 3, "3 values")
    r.require("MODEL.PIXEL_STD", lambda v: len(v) == 3, "3 values")


def _check_backbone(r: KeyReader) -> None:
    """The meta-architecture and the ResNet-FPN backbone."""
    m = "MODEL."
    r.equal(m + "META_ARCHITECTURE", "GeneralizedRCNN")
    r.equal(m + "MASK_ON", True)
    r.equal(m + "KEYPOINT_ON", False)
    r.equal(m + "LOAD_PROPOSALS", False)
    r.equal(m + "BACKBONE.NAME", "build_resnet_fpn_backbone")
    r.equal(m + "PROPOSAL_GENERATOR.NAME", "RPN")
    r.equal(m + "PROPOSAL_GENERATOR.MIN_SIZE", 0)

    res = m + "RESNETS."
    r.require(res + "DEFORM_ON_PER_STAGE", lambda v: not any(v), "no deformable convs")
    r.equal(res + "RES5_DILATION", 1)
    r.equal(res + "OUT_FEATURES", ["res2", "res3", "res4", "res5"])
    r.require(res + "NORM", lambda v: v in get_args(Norm), f"one of {get_args(Norm)}")

    fpn = m + "FPN."
    r.equal(fpn + "IN_FEATURES", ["res2", "res3", "res4", "res5"])
    r.require(fpn + "NORM", lambda v: v in get_args(FpnNorm), f"one of {get_args(FpnNorm)}")
    r.equal(fpn + "FUSE_TYPE", "sum")


def _check_proposals(r: KeyReader) -> None:
    """The anchors and the RPN."""
    m = "MODEL."
    anchors = m + "ANCHOR_GENERATOR."
    r.equal(anchors + "NAME", "DefaultAnchorGenerator")
    r.equal(anchors + "OFFSET", 0.0)
    r.require(anchors + "SIZES", lambda v: len(v) == 5, "one list of sizes per level P2..P6")
    r.require(
        anchors + "ASPECT_RATIOS",
        lambda v: len(v) >= 1 and all(list(x) == list(v[0]) for x in v),
        "the same aspect ratios on every level",
    )

    rpn = m + "RPN."
    r.equal(rpn + "HEAD_NAME", "StandardRPNHead")
    r.equal(rpn + "CONV_DIMS", [-1])
    r.equal(rpn + "IN_FEATURES", ["p2", "p3", "p4", "p5", "p6"])
    r.equal(rpn + "IOU_LABELS", [0, -1, 1])
    r.equal(rpn + "BOUNDARY_THRESH", -1)
    r.equal(rpn + "BBOX_REG_WEIGHTS", [1.0, 1.0, 1.0, 1.0])
    r.equal(rpn + "BBOX_REG_LOSS_TYPE", "smooth_l1")
    r.equal(rpn + "SMOOTH_L1_BETA", 0.0)
    r.equal(rpn + "LOSS_WEIGHT", 1.0)
    r.equal(rpn + "BBOX_REG_LOSS_WEIGHT", 1.0)
    r.require(rpn + "IOU_THRESHOLDS", lambda v: len(v) == 2, "two thresholds [bg, fg]")


def _check_heads(r: KeyReader) -> None:
    """The ROI heads: box and mask."""
    m = "MODEL."
    roi = m + "ROI_HEADS."
    r.equal(roi + "NAME", "StandardROIHeads")
    r.equal(roi + "IN_FEATURES", ["p2", "p3", "p4", "p5"])
    r.equal(roi + "IOU_LABELS", [0, 1])
    r.equal(roi + "PROPOSAL_APPEND_GT", True)
    r.require(roi + "IOU_THRESHOLDS", lambda v: len(v) == 1, "one threshold")

    box = m + "ROI_BOX_HEAD."
    r.equal(box + "NAME", "FastRCNNConvFCHead")
    r.equal(box + "NUM_CONV", 0)
    r.equal(box + "NUM_FC", 2)  # the model names its two layers fc6/fc7
    r.equal(box + "POOLER_TYPE", "ROIAlignV2")
    r.equal(box + "POOLER_SAMPLING_RATIO", 0)
    r.equal(box + "CLS_AGNOSTIC_BBOX_REG", False)
    r.equal(box + "BBOX_REG_LOSS_TYPE", "smooth_l1")
    r.equal(box + "SMOOTH_L1_BETA", 0.0)  # smooth-L1 with beta 0 is the L1 loss we implement
    r.equal(box + "BBOX_REG_LOSS_WEIGHT", 1.0)
    r.equal(box + "USE_FED_LOSS", False)
    r.equal(box + "USE_SIGMOID_CE", False)
    r.equal(box + "TRAIN_ON_PRED_BOXES", False)

    mask = m + "ROI_MASK_HEAD."
    r.equal(mask + "NAME", "MaskRCNNConvUpsampleHead")
    r.equal(mask + "NORM", "")
    r.equal(mask + "CLS_AGNOSTIC_MASK", False)
    r.equal(mask + "POOLER_TYPE", "ROIAlignV2")
    r.equal(mask + "POOLER_SAMPLING_RATIO", 0)


def architecture(r: KeyReader) -> MaskRCNNConfig:
    """Build the architecture from a config that passed ``check_architecture``."""
    m, res, fpn, rpn, roi = "MODEL.", "MODEL.RESNETS.", "MODEL.FPN.", "MODEL.RPN.", "MODEL.ROI_HEADS."
    box, mask = "MODEL.ROI_BOX_HEAD.", "MODEL.ROI_MASK_HEAD."
    rpn_ious = r.get(rpn + "IOU_THRESHOLDS")
    return MaskRCNNConfig(
        num_classes=int(r.get(roi + "NUM_CLASSES")),
        depth=int(r.get(res + "DEPTH")),
        num_groups=int(r.get(res + "NUM_GROUPS")),
        width_per_group=int(r.get(res + "WIDTH_PER_GROUP")),
        stem_out_channels=int(r.get(res + "STEM_OUT_CHANNELS")),
        res2_out_channels=int(r.get(res + "RES2_OUT_CHANNELS")),
        stride_in_1x1=bool(r.get(res + "STRIDE_IN_1X1")),
        norm=r.get(res + "NORM"),
        freeze_at=int(r.get(m + "BACKBONE.FREEZE_AT")),
        fpn_out_channels=int(r.get(fpn + "OUT_CHANNELS")),
        fpn_norm=r.get(fpn + "NORM"),
        anchor_sizes=[list(_floats(level)) for level in r.get(m + "ANCHOR_GENERATOR.SIZES")],
        anchor_aspect_ratios=list(_floats(r.get(m + "ANCHOR_GENERATOR.ASPECT_RATIOS")[0])),
        rpn_iou_thresholds=(float(rpn_ious[0]), float(rpn_ious[1])),
        rpn_batch_size_per_image=int(r.get(rpn + "BATCH_SIZE_PER_IMAGE")),
        rpn_positive_fraction=float(r.get(rpn + "POSITIVE_FRACTION")),
        rpn_pre_nms_topk_train=int(r.get(rpn + "PRE_NMS_TOPK_TRAIN")),
        rpn_pre_nms_topk_test=int(r.get(rpn + "PRE_NMS_TOPK_TEST")),
        rpn_post_nms_topk_train=int(r.get(rpn + "POST_NMS_TOPK_TRAIN")),
        rpn_post_nms_topk_test=int(r.get(rpn + "POST_NMS_TOPK_TEST")),
        rpn_nms_thresh=float(r.get(rpn + "NMS_THRESH")),
        roi_iou_threshold=float(r.get(roi + "IOU_THRESHOLDS")[0]),
        roi_batch_size_per_image=int(r.get(roi + "BATCH_SIZE_PER_IMAGE")),
        roi_positive_fraction=float(r.get(roi + "POSITIVE_FRACTION")),
        box_head_num_fc=int(r.get(box + "NUM_FC")),
        box_head_fc_dim=int(r.get(box + "FC_DIM")),
        box_reg_weights=_floats(r.get(box + "BBOX_REG_WEIGHTS")),
        box_pooler_resolution=int(r.get(box + "POOLER_RESOLUTION")),
        mask_head_num_conv=int(r.get(mask + "NUM_CONV")),
        mask_head_conv_dim=int(r.get(mask + "CONV_DIM")),
        mask_pooler_resolution=int(r.get(mask + "POOLER_RESOLUTION")),
        score_thresh_test=float(r.get(roi + "SCORE_THRESH_TEST")),
        nms_thresh_test=float(r.get(roi + "NMS_THRESH_TEST")),
        detections_per_image=int(r.get("TEST.DETECTIONS_PER_IMAGE")),
        pixel_mean=_floats(r.get(m + "PIXEL_MEAN")),
        pixel_std=_floats(r.get(m + "PIXEL_STD")),
    )
