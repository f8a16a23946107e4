"""The Mask R-CNN: torchvision's ``GeneralizedRCNN`` composed from the detectron2-parity parts, and its builder.

``build_mask_rcnn(cfg)`` (with ``build_backbone``) is the one place that reads ``MaskRCNNConfig``: the parts take
explicit arguments and are injected torchvision style (backbone, anchor generator, RPN, poolers, heads,
transform); the anchor and pooler strides come from the backbone's ``feature_info``. The state-dict names are
torchvision ``MaskRCNN``'s. The transform only converts, normalises (BGR 0-255, detectron2's mean/std) and pads
bottom-right to a multiple of 32: images arrive already resized by detectron2's rule in the data pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from segmentation.model.anchors import D2AnchorGenerator
from segmentation.model.backbone import ResNet, ResNetFPN
from segmentation.model.config import MaskRCNNConfig
from segmentation.model.poolers import D2MultiScaleRoIAlign
from segmentation.model.postprocess import detector_postprocess
from segmentation.model.roi_heads import BoxHead, D2RoIHeads, box_predictor, mask_head, mask_predictor
from segmentation.model.rpn import D2RPN


class D2Transform(GeneralizedRCNNTransform):
    """No resize; uint8 or float BGR 0-255 -> float32 ``(x - mean) / std``; zero pad to a multiple of 32."""

    def __init__(self, pixel_mean: Sequence[float], pixel_std: Sequence[float], size_divisible: int = 32) -> None:
        super().__init__(0, 0, list(pixel_mean), list(pixel_std), size_divisible=size_divisible)

    def normalize(self, image: Tensor) -> Tensor:
        if not image.is_floating_point():
            image = image.float()
        return super().normalize(image)

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor] | None]:
        return image, target


class MaskRCNN(GeneralizedRCNN):
    """Mask R-CNN with detectron2's numbers.

    Train mode: ``model(images, targets)`` -> the five losses (``loss_*``) and detached diagnostics.
    Eval mode: ``model(images, output_sizes=None)`` -> per image ``boxes`` (xyxy, output frame), ``scores``,
    ``labels`` (1..K) and ``masks`` (bool ``(N, h, w)``); ``output_sizes`` defaults to each input's size.
    """

    transform: D2Transform
    rpn: D2RPN
    roi_heads: D2RoIHeads

    def forward(  # type: ignore[override]
        self,
        images: list[Tensor],
        targets: list[dict[str, Tensor]] | None = None,
        output_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training and targets is None:
            raise ValueError("targets are required in training mode")
        image_list, targets = self.transform(images, targets)
        features = self.backbone(image_list.tensors)
        proposals, rpn_losses = self.rpn(image_list, features, targets)
        detections, roi_losses = self.roi_heads(features, proposals, image_list.image_sizes, targets)
        if self.training:
            return {**rpn_losses, **roi_losses}
        sizes = image_list.image_sizes if output_sizes is None else output_sizes
        return [
            detector_postprocess(det, in_hw, out_hw)
            for det, in_hw, out_hw in zip(detections, image_list.image_sizes, sizes, strict=True)
        ]


def build_backbone(cfg: MaskRCNNConfig) -> ResNetFPN:
    """The ResNet/ResNeXt + FPN backbone of ``cfg`` with detectron2's initialisation and freezing."""
    body = ResNet(
        cfg.depth,
        num_groups=cfg.num_groups,
        width_per_group=cfg.width_per_group,
        stem_out_channels=cfg.stem_out_channels,
        res2_out_channels=cfg.res2_out_channels,
        stride_in_1x1=cfg.stride_in_1x1,
        norm=cfg.norm,
        freeze_at=cfg.freeze_at,
    )
    return ResNetFPN(body, cfg.fpn_out_channels, norm=cfg.fpn_norm)


def build_mask_rcnn(cfg: MaskRCNNConfig) -> MaskRCNN:
    """Build the model described by ``cfg`` with detectron2's initialisation (no weights loaded)."""
    backbone = build_backbone(cfg)
    channels = cfg.fpn_out_channels
    levels = backbone.feature_info  # P2..P6
    anchors = D2AnchorGenerator(cfg.anchor_sizes, cfg.anchor_aspect_ratios, levels.reduction())
    rpn = D2RPN(
        anchors,
        RPNHead(channels, anchors.num_anchors_per_location()[0]),
        iou_thresholds=tuple(cfg.rpn_iou_thresholds),
        batch_size_per_image=cfg.rpn_batch_size_per_image,
        positive_fraction=cfg.rpn_positive_fraction,
        pre_nms_top_n={"training": cfg.rpn_pre_nms_topk_train, "testing": cfg.rpn_pre_nms_topk_test},
        post_nms_top_n={"training": cfg.rpn_post_nms_topk_train, "testing": cfg.rpn_post_nms_topk_test},
        nms_thresh=cfg.rpn_nms_thresh,
    )
    roi_levels = list(range(len(levels) - 1))  # P2..P5: the ROI heads pool every level but P6, as detectron2

    def pooler(resolution: int) -> D2MultiScaleRoIAlign:
        return D2MultiScaleRoIAlign(levels.module_name(roi_levels), resolution, levels.reduction(roi_levels))

    roi_heads = D2RoIHeads(
        pooler(cfg.box_pooler_resolution),
        BoxHead(channels * cfg.box_pooler_resolution**2, cfg.box_head_fc_dim, cfg.box_head_num_fc),
        box_predictor(cfg.box_head_fc_dim, cfg.num_classes),
        pooler(cfg.mask_pooler_resolution),
        mask_head(channels, cfg.mask_head_conv_dim, cfg.mask_head_num_conv),
        mask_predictor(cfg.mask_head_conv_dim, cfg.num_classes),
        iou_threshold=cfg.roi_iou_threshold,
        batch_size_per_image=cfg.roi_batch_size_per_image,
        positive_fraction=cfg.roi_positive_fraction,
        bbox_reg_weights=tuple(cfg.box_reg_weights),
        score_thresh=cfg.score_thresh_test,
        nms_thresh=cfg.nms_thresh_test,
        detections_per_img=cfg.detections_per_image,
    )
    return MaskRCNN(backbone, rpn, roi_heads, D2Transform(cfg.pixel_mean, cfg.pixel_std))
