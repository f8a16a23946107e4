"""detectron2's loss definitions: L1 (beta 0) box losses, sum-normalised RPN losses, fg-only binary mask loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from segmentation.model.roi_heads import fastrcnn_loss, mask_targets, maskrcnn_loss
from segmentation.model.rpn import rpn_losses
from segmentation.model.sampling import subsample_labels


def test_rpn_losses_are_sums_over_sampled_anchors_divided_by_batch_size_times_images() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    deltas = torch.tensor([[[0.1, 0.2, 0.3, 0.4], [0.0] * 4, [0.0] * 4, [1.0, 1.0, 1.0, 1.0]]])
    labels = torch.tensor([[1, 0, -1, 1]])
    targets = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 1.0, 1.0]])
    out = rpn_losses(logits, deltas, labels, targets, normalizer=256)
    sampled, labels01 = torch.tensor([2.0, -1.0, 3.0]), torch.tensor([1.0, 0.0, 1.0])
    bce = F.binary_cross_entropy_with_logits(sampled, labels01, reduction="sum")
    assert torch.isclose(out["loss_rpn_cls"], bce / 256)
    assert torch.isclose(out["loss_rpn_loc"], torch.tensor((1.0 + 1.0) / 256))  # |0.1|+..+|0.4| + |0|+|1|+0+0


def test_box_loss_is_class_specific_l1_over_foreground_divided_by_all_rois() -> None:
    class_logits = torch.zeros(3, 3)
    box_deltas = torch.zeros(3, 12)
    box_deltas[0, 8:12] = 0.5  # ROI 0 is class 2: its deltas are columns 8..11
    gt_classes = torch.tensor([2, 0, 0])
    out = fastrcnn_loss(class_logits, box_deltas, gt_classes, torch.zeros(1, 4))
    assert torch.isclose(out["loss_box_reg"], torch.tensor(4 * 0.5 / 3))
    assert torch.isclose(out["loss_cls"], torch.log(torch.tensor(3.0)))
    assert out["fast_rcnn/fg_cls_accuracy"].item() == 0.0 and out["fast_rcnn/false_negative"].item() == 1.0


def test_mask_targets_are_binary_roi_align_v2_crops() -> None:
    gt = torch.zeros(1, 32, 32, dtype=torch.uint8)
    gt[0, 8:24, 8:16] = 1
    targets = mask_targets(gt, torch.tensor([0]), torch.tensor([[8.0, 8.0, 24.0, 24.0]]), 4)
    assert targets.dtype == torch.bool
    assert targets[0].tolist() == [[True, True, False, False]] * 4


def test_mask_loss_reads_the_gt_class_channel_and_is_zero_without_foreground() -> None:
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 1] = 10.0  # a confident channel of the wrong class
    out = maskrcnn_loss(logits, torch.tensor([2]), torch.ones(1, 2, 2, dtype=torch.bool))
    assert torch.isclose(out["loss_mask"], torch.log(torch.tensor(2.0)))
    empty = torch.zeros(0, 3, 2, 2, requires_grad=True)
    out = maskrcnn_loss(empty, torch.zeros(0, dtype=torch.int64), torch.zeros(0, 2, 2, dtype=torch.bool))
    assert out["loss_mask"].item() == 0.0 and out["loss_mask"].requires_grad


def test_sampler_takes_at_most_the_positive_fraction_and_fills_with_negatives() -> None:
    positive = torch.tensor([True] * 10 + [False] * 20)
    pos, neg = subsample_labels(positive, ~positive, num_samples=16, positive_fraction=0.25)
    assert len(pos) == 4 and len(neg) == 12
    assert positive[pos].all() and not positive[neg].any()
