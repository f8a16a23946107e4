"""detectron2's RPN (``StandardRPNHead`` + ``RPN``) as a torchvision ``RegionProposalNetwork``.

It differs from torchvision where the numbers differ: anchors, deltas and decoding stay fp32 under autocast;
proposals are ranked by the raw logit, top-k per level, clipped, empty boxes dropped, NMS per level, then the
post-NMS top-k per image; the losses are BCE summed and L1 (beta 0) summed over the sampled anchors, both divided
by ``batch_size_per_image * num_images``; and the loss names and diagnostics are detectron2's. The head is
torchvision's ``RPNHead`` (normal std 0.01, zero bias, as detectron2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection._utils import _topk_min
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import box_iou, clip_boxes_to_image

from segmentation.model.anchors import D2AnchorGenerator
from segmentation.model.nms import batched_nms
from segmentation.model.sampling import subsample_labels


def rpn_losses(
    logits: Tensor, deltas: Tensor, labels: Tensor, target_deltas: Tensor, normalizer: int
) -> dict[str, Tensor]:
    """detectron2's RPN losses over all images at once.

    Args:
        logits: ``(N, A)`` objectness logits; deltas: ``(N, A, 4)`` predicted anchor deltas.
        labels: ``(N, A)`` 1 sampled positive, 0 sampled negative, -1 ignored.
        target_deltas: ``(P, 4)`` regression targets of the positives, in ``labels == 1`` order.
        normalizer: ``batch_size_per_image * num_images``.
    """
    valid = labels >= 0
    loss_cls = F.binary_cross_entropy_with_logits(logits[valid], labels[valid].to(logits.dtype), reduction="sum")
    loss_loc = (deltas[labels == 1] - target_deltas).abs().sum()
    return {"loss_rpn_cls": loss_cls / normalizer, "loss_rpn_loc": loss_loc / normalizer}


class D2RPN(RegionProposalNetwork):
    """RPN with detectron2's proposal filtering, fp32 box maths, losses and ``rpn/*`` diagnostics.

    ``forward`` returns ``(proposals, losses)`` like torchvision; ``losses`` also holds the detached
    ``rpn/num_pos_anchors`` and ``rpn/num_neg_anchors`` (per-image averages) in training.
    """

    anchor_generator: D2AnchorGenerator

    def __init__(
        self,
        anchor_generator: D2AnchorGenerator,
        head: RPNHead,
        *,
        iou_thresholds: tuple[float, float],
        batch_size_per_image: int,
        positive_fraction: float,
        pre_nms_top_n: dict[str, int],
        post_nms_top_n: dict[str, int],
        nms_thresh: float,
    ) -> None:
        bg_iou, fg_iou = iou_thresholds
        super().__init__(
            anchor_generator,
            head,
            fg_iou,
            bg_iou,
            batch_size_per_image,
            positive_fraction,
            pre_nms_top_n,
            post_nms_top_n,
            nms_thresh,
        )
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def head_outputs(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: logits ``(N, H*W*A)`` and deltas ``(N, H*W*A, 4)`` in fp32, anchor order (y, x, a)."""
        logits, deltas = self.head(features)
        flat_logits = [x.permute(0, 2, 3, 1).flatten(1).float() for x in logits]
        flat_deltas = []
        for x in deltas:
            n, _, h, w = x.shape
            flat_deltas.append(x.view(n, -1, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4).float())
        return flat_logits, flat_deltas

    def filter_proposals(  # type: ignore[override]
        self, proposals: list[Tensor], logits: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """detectron2's ``find_top_rpn_proposals`` on per-level ``(N, A_l, 4)`` boxes and ``(N, A_l)`` logits.

        Returns per image the kept boxes and their logits, best first.
        """
        top_boxes, top_logits, top_levels = [], [], []
        for level, (boxes_l, logits_l) in enumerate(zip(proposals, logits, strict=True)):
            k = _topk_min(logits_l, self.pre_nms_top_n(), 1)  # min(), but a graph op under the ONNX tracer
            scores, idx = logits_l.topk(k, dim=1)
            top_logits.append(scores)
            top_boxes.append(torch.gather(boxes_l, 1, idx[..., None].expand(-1, -1, 4)))
            top_levels.append(torch.full_like(scores[0], level, dtype=torch.int64))
        all_boxes, all_logits, levels = torch.cat(top_boxes, 1), torch.cat(top_logits, 1), torch.cat(top_levels)
        out_boxes, out_logits = [], []
        for boxes, scores, image_size in zip(all_boxes, all_logits, image_sizes, strict=True):
            keep = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
            boxes = clip_boxes_to_image(boxes, image_size)
            keep &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, scores, lvl = boxes[keep], scores[keep], levels[keep]
            keep = batched_nms(boxes, scores, lvl, self.nms_thresh)[: self.post_nms_top_n()]
            out_boxes.append(boxes[keep])
            out_logits.append(scores[keep])
        return out_boxes, out_logits

    def propose(
        self, images: ImageList, features: dict[str, Tensor]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """Head outputs, anchors and proposals: ``(boxes, logits, level_logits, level_deltas, level_anchors)``."""
        feats = list(features.values())
        level_logits, level_deltas = self.head_outputs(feats)
        level_anchors = self.anchor_generator.level_anchors(feats)
        with torch.no_grad():
            decoded = []
            for deltas, anchors in zip(level_deltas, level_anchors, strict=True):
                n = deltas.shape[0]
                boxes = self.box_coder.decode_single(deltas.detach().reshape(-1, 4), anchors.repeat(n, 1))
                decoded.append(boxes.view(n, -1, 4))
            boxes, logits = self.filter_proposals(decoded, [x.detach() for x in level_logits], images.image_sizes)
        return boxes, logits, level_logits, level_deltas, level_anchors

    def forward(  # type: ignore[override]
        self, images: ImageList, features: dict[str, Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        boxes, _, level_logits, level_deltas, level_anchors = self.propose(images, features)
        if not self.training:
            return boxes, {}
        if targets is None:
            raise ValueError("targets are required in training mode")
        logits, deltas, anchors = torch.cat(level_logits, 1), torch.cat(level_deltas, 1), torch.cat(level_anchors)
        return boxes, self.losses(logits, deltas, anchors, targets)

    def losses(
        self, logits: Tensor, deltas: Tensor, anchors: Tensor, targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """Match and sample anchors per image as detectron2, then :func:`rpn_losses` and the ``rpn/*`` counts."""
        labels, target_deltas = [], []
        for target in targets:
            gt_boxes = target["boxes"].float()
            if gt_boxes.numel() == 0:
                matched = torch.full((anchors.shape[0],), -1, dtype=torch.int64, device=anchors.device)
            else:
                matched = self.proposal_matcher(box_iou(gt_boxes, anchors))
            # torchvision's Matcher: >= 0 matched (foreground), -1 below 0.3 (background), -2 in between.
            pos, neg = subsample_labels(matched >= 0, matched == -1, self.batch_size_per_image, self.positive_fraction)
            label = torch.full_like(matched, -1)
            label[pos] = 1
            label[neg] = 0
            labels.append(label)
            pos_sorted = torch.nonzero(label == 1).squeeze(1)
            target_deltas.append(self.box_coder.encode_single(gt_boxes[matched[pos_sorted]], anchors[pos_sorted]))
        num_images = len(targets)
        label_mat = torch.stack(labels)
        losses = rpn_losses(logits, deltas, label_mat, torch.cat(target_deltas), self.batch_size_per_image * num_images)
        losses["rpn/num_pos_anchors"] = ((label_mat == 1).sum() / num_images).detach().float()
        losses["rpn/num_neg_anchors"] = ((label_mat == 0).sum() / num_images).detach().float()
        return losses
