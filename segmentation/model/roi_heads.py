"""detectron2's ``StandardROIHeads`` (box + mask) as a torchvision ``RoIHeads``.

The modules keep torchvision's names and class layout (background is class 0, ``bbox_pred`` has 4(K+1) rows,
the mask predictor K+1 channels) so torchvision checkpoints and the detectron2 key mapping agree; everything
numeric follows detectron2: ground truth appended to the proposals, IoU matching and fg-first random sampling,
softmax CE (mean) and class-specific L1 (beta 0) box loss over foreground divided by the number of sampled
ROIs, mask targets from ROIAlignV2 of the GT bitmasks thresholded at 0.5, BCE mean over foreground ROIs,
detectron2's initialisation and inference (softmax, clip, score threshold, per-class NMS, top-k, no small-box
removal) and the ``fast_rcnn/*``, ``mask_rcnn/*``, ``roi_head/*`` training diagnostics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import box_iou, clip_boxes_to_image, roi_align

from segmentation.model.init import c2_msra_fill, c2_xavier_fill
from segmentation.model.nms import batched_nms
from segmentation.model.poolers import D2MultiScaleRoIAlign
from segmentation.model.sampling import subsample_labels

NAN = float("nan")


class BoxHead(nn.Module):
    """detectron2's ``FastRCNNConvFCHead`` without convs: flatten, then ``fc6``, ``fc7``, ... each with ReLU."""

    def __init__(self, in_features: int, fc_dim: int, num_fc: int) -> None:
        super().__init__()
        for i in range(num_fc):
            fc = nn.Linear(in_features if i == 0 else fc_dim, fc_dim)
            c2_xavier_fill(fc)
            self.add_module(f"fc{6 + i}", fc)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(start_dim=1)
        for fc in self.children():
            x = F.relu(fc(x))
        return x


def box_predictor(fc_dim: int, num_classes: int) -> FastRCNNPredictor:
    """torchvision's predictor (K+1 scores, 4(K+1) deltas) with detectron2's init: N(0, 0.01), N(0, 0.001), bias 0."""
    predictor = FastRCNNPredictor(fc_dim, num_classes + 1)
    nn.init.normal_(predictor.cls_score.weight, std=0.01)
    nn.init.normal_(predictor.bbox_pred.weight, std=0.001)
    for layer in (predictor.cls_score, predictor.bbox_pred):
        nn.init.zeros_(layer.bias)
    return predictor


def mask_head(in_channels: int, conv_dim: int, num_conv: int) -> MaskRCNNHeads:
    """``mask_head.{i}.0``: 3x3 conv + ReLU layers, c2_msra_fill (torchvision's own init is the same)."""
    head = MaskRCNNHeads(in_channels, [conv_dim] * num_conv, dilation=1)
    for module in head.modules():
        if isinstance(module, nn.Conv2d):
            c2_msra_fill(module)
    return head


def mask_predictor(conv_dim: int, num_classes: int) -> MaskRCNNPredictor:
    """Deconv 2x2 s2 + ReLU (c2_msra_fill) and a 1x1 conv to K+1 logit maps (N(0, 0.001), bias 0)."""
    predictor = MaskRCNNPredictor(conv_dim, conv_dim, num_classes + 1)
    c2_msra_fill(predictor.conv5_mask)
    nn.init.normal_(predictor.mask_fcn_logits.weight, std=0.001)
    nn.init.zeros_(predictor.mask_fcn_logits.bias)
    return predictor


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` as a detached float, NaN where detectron2 logs nothing (``den == 0``)."""
    den = den.float()
    return torch.where(den > 0, num.float() / den.clamp(min=1), torch.full_like(den, NAN)).detach()


def fastrcnn_loss(
    class_logits: Tensor, box_deltas: Tensor, gt_classes: Tensor, target_deltas: Tensor
) -> dict[str, Tensor]:
    """detectron2's box losses and ``fast_rcnn/*`` diagnostics.

    Args:
        class_logits: ``(R, K+1)``, background first; box_deltas: ``(R, 4(K+1))``.
        gt_classes: ``(R,)`` 0 background, 1..K foreground.
        target_deltas: ``(F, 4)`` regression targets of the foreground ROIs, in ``gt_classes > 0`` order.
    """
    class_logits, box_deltas = class_logits.float(), box_deltas.float()
    num_rois = gt_classes.numel()
    loss_cls = F.cross_entropy(class_logits, gt_classes) if num_rois else class_logits.sum() * 0.0
    fg = torch.nonzero(gt_classes > 0).squeeze(1)
    fg_deltas = box_deltas.view(num_rois, -1, 4)[fg, gt_classes[fg]]
    loss_box_reg = (fg_deltas - target_deltas).abs().sum() / max(num_rois, 1)

    pred = class_logits.argmax(dim=1)
    is_fg = gt_classes > 0
    num_fg = is_fg.sum()
    return {
        "loss_cls": loss_cls,
        "loss_box_reg": loss_box_reg,
        "fast_rcnn/cls_accuracy": _ratio((pred == gt_classes).sum(), torch.tensor(num_rois, device=pred.device)),
        "fast_rcnn/fg_cls_accuracy": _ratio((is_fg & (pred == gt_classes)).sum(), num_fg),
        "fast_rcnn/false_negative": _ratio((is_fg & (pred == 0)).sum(), num_fg),
    }


def maskrcnn_loss(mask_logits: Tensor, labels: Tensor, mask_targets: Tensor) -> dict[str, Tensor]:
    """detectron2's ``mask_rcnn_loss`` and ``mask_rcnn/*`` diagnostics.

    Args:
        mask_logits: ``(F, K+1, M, M)`` for the foreground ROIs; labels: ``(F,)`` their classes 1..K.
        mask_targets: ``(F, M, M)`` bool targets.
    """
    if labels.numel() == 0:
        nan = torch.full((), NAN, device=mask_logits.device)
        return {
            "loss_mask": mask_logits.sum() * 0.0,
            "mask_rcnn/accuracy": nan,
            "mask_rcnn/false_positive": nan,
            "mask_rcnn/false_negative": nan.clone(),
        }
    logits = mask_logits[torch.arange(labels.numel(), device=labels.device), labels].float()
    incorrect = (logits > 0.0) != mask_targets
    num_pos = mask_targets.sum()
    return {
        "loss_mask": F.binary_cross_entropy_with_logits(logits, mask_targets.float()),
        "mask_rcnn/accuracy": (1.0 - incorrect.sum() / incorrect.numel()).detach().float(),
        "mask_rcnn/false_positive": ((incorrect & ~mask_targets).sum() / (mask_targets.numel() - num_pos).clamp(min=1))
        .detach()
        .float(),
        "mask_rcnn/false_negative": ((incorrect & mask_targets).sum() / num_pos.clamp(min=1)).detach().float(),
    }


def mask_targets(gt_masks: Tensor, matched_gt: Tensor, boxes: Tensor, size: int) -> Tensor:
    """detectron2's ``BitMasks.crop_and_resize``: ROIAlignV2 of each ROI's GT bitmask, then ``>= 0.5``."""
    if boxes.numel() == 0:
        return torch.zeros((0, size, size), dtype=torch.bool, device=boxes.device)
    rois = torch.cat([matched_gt[:, None].to(boxes.dtype), boxes], dim=1)
    crops = roi_align(gt_masks[:, None].float(), rois.float(), (size, size), 1.0, sampling_ratio=0, aligned=True)
    return crops[:, 0] >= 0.5


class D2RoIHeads(RoIHeads):
    """Box and mask heads with detectron2's training targets, losses, diagnostics and inference.

    ``forward(features, proposals, image_shapes, targets)`` returns ``(detections, losses)`` like torchvision.
    In eval mode each detection dict has ``boxes`` (clipped to the input size), ``scores``, ``labels`` (1..K)
    and ``masks`` as ``(N, 1, M, M)`` probabilities, to be pasted by ``postprocess.detector_postprocess``.
    """

    def __init__(
        self,
        box_roi_pool: D2MultiScaleRoIAlign,
        box_head: BoxHead,
        box_predictor: FastRCNNPredictor,
        mask_roi_pool: D2MultiScaleRoIAlign,
        mask_head: MaskRCNNHeads,
        mask_predictor: MaskRCNNPredictor,
        *,
        iou_threshold: float,
        batch_size_per_image: int,
        positive_fraction: float,
        bbox_reg_weights: tuple[float, float, float, float],
        score_thresh: float,
        nms_thresh: float,
        detections_per_img: int,
    ) -> None:
        super().__init__(
            box_roi_pool,
            box_head,
            box_predictor,
            iou_threshold,
            iou_threshold,
            batch_size_per_image,
            positive_fraction,
            bbox_reg_weights,
            score_thresh,
            nms_thresh,
            detections_per_img,
            mask_roi_pool,
            mask_head,
            mask_predictor,
        )
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def sample_proposals(
        self, proposals: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Append the GT boxes, match (IoU >= threshold is foreground) and sample foreground first.

        Returns per image the sampled boxes, their classes (0 = background) and matched GT index (0 for none).
        """
        boxes_out, classes_out, matched_out = [], [], []
        for props, target in zip(proposals, targets, strict=True):
            gt_boxes, gt_labels = target["boxes"].to(props.dtype), target["labels"]
            props = torch.cat([props, gt_boxes])
            if gt_boxes.numel() == 0:
                matched = torch.full((props.shape[0],), -1, dtype=torch.int64, device=props.device)
                classes = torch.zeros_like(matched)
            else:
                matched = self.proposal_matcher(box_iou(gt_boxes, props))
                classes = torch.where(matched >= 0, gt_labels[matched.clamp(min=0)], 0)
            pos, neg = subsample_labels(classes > 0, classes == 0, self.batch_size_per_image, self.positive_fraction)
            keep = torch.cat([pos, neg])
            boxes_out.append(props[keep])
            classes_out.append(classes[keep])
            matched_out.append(matched[keep].clamp(min=0))
        return boxes_out, classes_out, matched_out

    def forward(  # type: ignore[override]
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            return [], self.training_losses(features, proposals, image_shapes, targets)
        return self.inference(features, proposals, image_shapes), {}

    def _box_outputs(
        self, features: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        pooled = self.box_roi_pool(features, boxes, image_shapes)
        return self.box_predictor(self.box_head(pooled))

    def _mask_logits(
        self, features: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        return self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))

    def training_losses(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """The box and mask losses of detectron2's ``StandardROIHeads`` plus its diagnostics."""
        boxes, classes, matched = self.sample_proposals(proposals, targets)
        class_logits, box_deltas = self._box_outputs(features, boxes, image_shapes)

        fg_boxes, fg_labels, fg_targets, fg_masks = [], [], [], []
        for b, c, m, target in zip(boxes, classes, matched, targets, strict=True):
            fg = torch.nonzero(c > 0).squeeze(1)
            fg_boxes.append(b[fg])
            fg_labels.append(c[fg])
            fg_targets.append(self.box_coder.encode_single(target["boxes"].float()[m[fg]], b[fg].float()))
            if fg.numel():
                fg_masks.append(mask_targets(target["masks"], m[fg], b[fg], self.mask_size))
        all_classes = torch.cat(classes)
        losses = fastrcnn_loss(class_logits, box_deltas, all_classes, torch.cat(fg_targets))
        num_fg = torch.stack([(c > 0).sum() for c in classes]).float()
        num_images = len(classes)
        losses["roi_head/num_fg_samples"] = (num_fg.sum() / num_images).detach()
        losses["roi_head/num_bg_samples"] = ((all_classes.numel() - num_fg.sum()) / num_images).detach()

        mask_logits = self._mask_logits(features, fg_boxes, image_shapes)
        labels = torch.cat(fg_labels)
        targets_bool = torch.cat(fg_masks) if fg_masks else mask_logits.new_zeros((0,) * 3, dtype=torch.bool)
        losses.update(maskrcnn_loss(mask_logits, labels, targets_bool))
        return losses

    @property
    def mask_size(self) -> int:
        """Side of the mask predictor's output (twice the mask pooler's)."""
        return 2 * self.mask_roi_pool.output_size[0]

    def inference(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """detectron2's ``fast_rcnn_inference`` then ``mask_rcnn_inference`` on the kept boxes."""
        if torch.jit.is_tracing():
            return self._traced_inference(features, proposals, image_shapes)
        class_logits, box_deltas = self._box_outputs(features, proposals, image_shapes)
        num_per_image = [len(p) for p in proposals]
        decoded = self.box_coder.decode_single(box_deltas.float(), torch.cat(proposals).float())
        all_scores = F.softmax(class_logits.float(), dim=-1)
        results = []
        for boxes, scores, image_shape in zip(
            decoded.split(num_per_image), all_scores.split(num_per_image), image_shapes, strict=True
        ):
            results.append(self._detections_of_image(boxes, scores, image_shape))
        mask_logits = self._mask_logits(features, [r["boxes"] for r in results], image_shapes)
        labels = torch.cat([r["labels"] for r in results])
        probs = mask_logits[torch.arange(labels.numel(), device=labels.device), labels][:, None].float().sigmoid()
        for result, masks in zip(results, probs.split([len(r["labels"]) for r in results]), strict=True):
            result["masks"] = masks
        return results

    def _traced_inference(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """:meth:`inference` of the one image an exported graph takes: the same numbers, without the Python counts
        (boxes per image, detections) that tracing would record as the traced image's constants."""
        (image_proposals,), (image_shape,) = proposals, image_shapes
        class_logits, box_deltas = self._box_outputs(features, proposals, image_shapes)
        boxes = self.box_coder.decode_single(box_deltas.float(), image_proposals.float())
        result = self._detections_of_image(boxes, F.softmax(class_logits.float(), dim=-1), image_shape)
        mask_logits = self._mask_logits(features, [result["boxes"]], image_shapes)
        index = result["labels"][:, None, None, None].expand(-1, 1, *mask_logits.shape[2:])
        result["masks"] = mask_logits.gather(1, index).float().sigmoid()
        return [result]

    def _detections_of_image(self, boxes: Tensor, scores: Tensor, image_shape: tuple[int, int]) -> dict[str, Tensor]:
        valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
        boxes, scores = boxes[valid], scores[valid, 1:]
        # explicit class count: an image whose proposals are all invalid has 0 boxes, and -1 cannot be inferred
        num_classes = scores.shape[1] + 1
        boxes = clip_boxes_to_image(boxes.reshape(-1, 4), image_shape).view(boxes.shape[0], num_classes, 4)[:, 1:]
        keep_mask = scores > self.score_thresh
        inds = torch.nonzero(keep_mask)
        boxes, scores = boxes[keep_mask], scores[keep_mask]
        keep = batched_nms(boxes, scores, inds[:, 1], self.nms_thresh)[: self.detections_per_img]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": inds[keep, 1] + 1}
