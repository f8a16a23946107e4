"""The assembled model: torchvision state-dict names, detectron2's loss/diagnostic names, empty targets, outputs."""

from __future__ import annotations

import pytest
import torch

from segmentation.model.config import MaskRCNNConfig
from segmentation.model.mask_rcnn import build_mask_rcnn

TINY = MaskRCNNConfig(
    num_classes=2,
    depth=50,
    num_groups=1,
    width_per_group=4,
    stem_out_channels=8,
    res2_out_channels=16,
    freeze_at=0,
    fpn_out_channels=16,
    box_head_fc_dim=32,
    mask_head_conv_dim=8,
    roi_batch_size_per_image=32,
    rpn_pre_nms_topk_train=200,
    rpn_post_nms_topk_train=100,
    rpn_pre_nms_topk_test=200,
    rpn_post_nms_topk_test=100,
)
LOSSES = {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"}
DIAGNOSTICS = {
    "fast_rcnn/cls_accuracy",
    "fast_rcnn/fg_cls_accuracy",
    "fast_rcnn/false_negative",
    "mask_rcnn/accuracy",
    "mask_rcnn/false_positive",
    "mask_rcnn/false_negative",
    "roi_head/num_fg_samples",
    "roi_head/num_bg_samples",
    "rpn/num_pos_anchors",
    "rpn/num_neg_anchors",
}


def sample(h: int, w: int, boxes: list[list[float]], labels: list[int]) -> tuple[torch.Tensor, dict]:
    masks = torch.zeros(len(boxes), h, w, dtype=torch.uint8)
    for m, (x0, y0, x1, y1) in zip(masks, boxes, strict=True):
        m[int(y0) : int(y1), int(x0) : int(x1)] = 1
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "masks": masks,
    }
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8), target


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_state_dict_names_are_torchvision_mask_rcnn_names(mask_rcnn_names) -> None:
    model = build_mask_rcnn(TINY)
    assert set(model.state_dict()) == mask_rcnn_names([3, 4, 6, 3], res2_shortcut=True)
    assert model.roi_heads.box_predictor.cls_score.out_features == 3  # background first, then 2 classes
    assert model.roi_heads.box_predictor.bbox_pred.out_features == 12
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 3


def test_anchor_and_pooler_strides_come_from_the_backbone() -> None:
    model = build_mask_rcnn(TINY)
    assert model.backbone.feature_info.reduction() == [4, 8, 16, 32, 64]
    assert model.rpn.anchor_generator.strides == [4, 8, 16, 32, 64]
    for pooler in (model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool):
        assert pooler.featmap_names == ["0", "1", "2", "3"]  # P2..P5, not P6 ("pool")
        assert pooler.strides == [4, 8, 16, 32]


def test_new_layers_get_detectron2_init() -> None:
    model = build_mask_rcnn(MaskRCNNConfig(num_classes=1, box_head_fc_dim=1024, fpn_out_channels=256))
    heads = model.roi_heads
    assert heads.box_predictor.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert heads.box_predictor.bbox_pred.weight.std().item() == pytest.approx(0.001, rel=0.1)
    assert heads.mask_predictor.mask_fcn_logits.weight.std().item() == pytest.approx(0.001, rel=0.1)
    assert model.rpn.head.cls_logits.weight.std().item() == pytest.approx(0.01, rel=0.1)
    for module in (heads.box_predictor.cls_score, heads.mask_predictor.mask_fcn_logits, model.rpn.head.conv[0][0]):
        assert not module.bias.any()


def test_train_mode_returns_the_losses_and_diagnostics_and_trains_on_empty_images() -> None:
    model = build_mask_rcnn(TINY).train()
    img_a, tgt_a = sample(96, 128, [[10, 20, 60, 70], [70, 10, 120, 40]], [1, 2])
    img_b, tgt_b = sample(80, 100, [], [])
    out = model([img_a, img_b], [tgt_a, tgt_b])
    assert set(out) == LOSSES | DIAGNOSTICS
    assert all(not out[k].requires_grad and out[k].dtype == torch.float32 for k in DIAGNOSTICS)
    sum(v for k, v in out.items() if k.startswith("loss_")).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_a_batch_without_any_instance_trains() -> None:
    model = build_mask_rcnn(TINY).train()
    img, tgt = sample(64, 64, [], [])
    out = model([img], [tgt])
    assert out["loss_mask"].item() == 0.0 and out["loss_mask"].requires_grad
    assert out["loss_rpn_loc"].item() == 0.0 and out["loss_box_reg"].item() == 0.0
    sum(v for k, v in out.items() if k.startswith("loss_")).backward()
    assert torch.isnan(out["mask_rcnn/accuracy"])  # detectron2 logs nothing then


def test_transform_normalises_and_pads_without_resizing() -> None:
    model = build_mask_rcnn(TINY)
    image = torch.full((3, 50, 70), 200, dtype=torch.uint8)
    image_list, _ = model.transform([image])
    assert image_list.image_sizes == [(50, 70)]
    assert image_list.tensors.shape == (1, 3, 64, 96)
    expected = (200 - torch.tensor(TINY.pixel_mean)) / torch.tensor(TINY.pixel_std)
    assert torch.allclose(image_list.tensors[0, :, 0, 0], expected)
    assert not image_list.tensors[0, :, 50:, :].any() and not image_list.tensors[0, :, :, 70:].any()


def test_eval_mode_returns_detections_in_the_output_frame() -> None:
    model = build_mask_rcnn(TINY).eval()
    img_a, _ = sample(96, 128, [], [])
    img_b, _ = sample(80, 100, [], [])
    with torch.no_grad():
        out = model([img_a, img_b], output_sizes=[(192, 256), (80, 100)])
    assert len(out) == 2
    for result, (h, w) in zip(out, [(192, 256), (80, 100)], strict=True):
        assert set(result) == {"boxes", "scores", "labels", "masks"}
        assert result["boxes"].dtype == torch.float32 and result["labels"].dtype == torch.int64
        assert result["masks"].dtype == torch.bool and result["masks"].shape[1:] == (h, w)
        assert (result["boxes"][:, 2] <= w).all() and (result["boxes"][:, 3] <= h).all()
        assert ((result["labels"] >= 1) & (result["labels"] <= 2)).all()
        assert (result["scores"] > TINY.score_thresh_test).all() and len(result["scores"]) <= 100


def test_under_autocast_anchors_deltas_and_proposals_stay_fp32() -> None:
    model = build_mask_rcnn(TINY).train()
    img, tgt = sample(96, 128, [[10, 20, 60, 70]], [1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        image_list, _ = model.transform([img])
        features = model.backbone(image_list.tensors)
        boxes, logits, level_logits, level_deltas, level_anchors = model.rpn.propose(image_list, features)
        out = model([img], [tgt])
    assert features["0"].dtype == torch.bfloat16
    for t in (boxes[0], logits[0], level_logits[0], level_deltas[0], level_anchors[0]):
        assert t.dtype == torch.float32
    assert all(torch.isfinite(v) for k, v in out.items() if k.startswith("loss_"))


def test_an_image_without_valid_proposals_gives_empty_detections(monkeypatch):
    """detectron2 returns empty instances when every proposal is invalid; reshaping 0 boxes must not crash."""
    model = build_mask_rcnn(TINY).eval()
    monkeypatch.setattr(
        model.rpn, "forward", lambda images, features, targets=None: ([torch.zeros((0, 4))] * len(images.tensors), {})
    )
    with torch.no_grad():
        (detections,) = model([torch.zeros(3, 64, 64)], output_sizes=[(64, 64)])
    assert detections["boxes"].shape == (0, 4) and detections["scores"].shape == (0,)
    assert detections["labels"].shape == (0,) and detections["masks"].shape == (0, 64, 64)
