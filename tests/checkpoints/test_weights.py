"""Weights loading: detectron2/Caffe2/torchvision/timm renaming, strict loading, backbone-only, the zoo model."""

from __future__ import annotations

import dataclasses
import logging
import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from segmentation.checkpoints import loading
from segmentation.checkpoints.files import (
    CheckpointError,
    read_checkpoint,
)
from segmentation.checkpoints.loading import PREDICTOR_KEYS, load_weights
from segmentation.checkpoints.names import BODY_PREFIX, caffe2_to_resnet, detectron2_to_torchvision
from segmentation.model.config import MaskRCNNConfig

WB = ("weight", "bias")
MARK = 7.0  # the value every stand-in model tensor starts with, to see which ones a load left alone


def stand_in_model(shapes: Mapping[str, tuple[int, ...]]) -> nn.Module:
    """A module whose state dict has exactly ``shapes`` (all tensors = MARK); BN statistics are buffers."""
    root = nn.Module()
    for name, shape in shapes.items():
        *path, leaf = name.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, nn.Module())
            module = getattr(module, part)
        value = torch.full(shape, MARK)
        if leaf in ("running_mean", "running_var", "num_batches_tracked"):
            module.register_buffer(leaf, value)
        else:
            module.register_parameter(leaf, nn.Parameter(value))
    return root


def shapes_of(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


@pytest.fixture(scope="module")
def tiny_mapped(parity_dir: Path) -> dict[str, torch.Tensor]:
    state, _ = read_checkpoint(parity_dir / "tiny_lung" / "model_final.pkl")
    return detectron2_to_torchvision(state)


# ------------------------------------------------------------------------------------------------- renaming


def test_tiny_pkl_and_pth_map_to_the_same_302_tensors(parity_dir: Path, tiny_mapped: dict, mask_rcnn_names) -> None:
    pth, kind = read_checkpoint(parity_dir / "tiny_lung" / "model_final.pth")
    assert kind == "detectron2-pth"
    from_pth = detectron2_to_torchvision(pth)
    assert len(tiny_mapped) == 302
    # res2 keeps the stem's 64 channels, so detectron2 builds no shortcut for res2.0 (302 tensors, not 307)
    assert set(tiny_mapped) == mask_rcnn_names([3, 4, 6, 3], res2_shortcut=False)
    assert set(from_pth) == set(tiny_mapped)
    for key, value in tiny_mapped.items():
        assert torch.equal(value, from_pth[key]), key


def test_class_layout_moves_background_first_with_equal_probabilities() -> None:
    torch.manual_seed(0)
    classes, dim = 80, 16
    d2 = {
        "roi_heads.box_predictor.cls_score.weight": torch.randn(classes + 1, dim),
        "roi_heads.box_predictor.cls_score.bias": torch.randn(classes + 1),
        "roi_heads.box_predictor.bbox_pred.weight": torch.randn(4 * classes, dim),
        "roi_heads.box_predictor.bbox_pred.bias": torch.randn(4 * classes),
        "roi_heads.mask_head.predictor.weight": torch.randn(classes, 8, 1, 1),
        "roi_heads.mask_head.predictor.bias": torch.randn(classes),
        "pixel_mean": torch.zeros(3, 1, 1),
        "proposal_generator.anchor_generator.cell_anchors.0": torch.zeros(3, 4),
    }
    tv = detectron2_to_torchvision(d2)
    assert set(tv) == PREDICTOR_KEYS
    x = torch.randn(10, dim)
    p_d2 = torch.softmax(
        x @ d2["roi_heads.box_predictor.cls_score.weight"].T + d2["roi_heads.box_predictor.cls_score.bias"], dim=1
    )
    p_tv = torch.softmax(
        x @ tv["roi_heads.box_predictor.cls_score.weight"].T + tv["roi_heads.box_predictor.cls_score.bias"], dim=1
    )
    # absolute tolerance: the two products may be blocked differently by BLAS, and most probabilities are tiny
    torch.testing.assert_close(p_tv[:, 0], p_d2[:, classes], rtol=1e-5, atol=1e-7)  # background
    torch.testing.assert_close(p_tv[:, 1:], p_d2[:, :classes], rtol=1e-5, atol=1e-7)  # class c is label c + 1
    for key, rows in (("roi_heads.box_predictor.bbox_pred", 4), ("roi_heads.mask_predictor.mask_fcn_logits", 1)):
        source = "roi_heads.mask_head.predictor" if "mask" in key else key
        for s in WB:
            assert tv[f"{key}.{s}"].shape[0] == d2[f"{source}.{s}"].shape[0] + rows
            assert not tv[f"{key}.{s}"][:rows].any()
            assert torch.equal(tv[f"{key}.{s}"][rows:], d2[f"{source}.{s}"])


def test_unknown_detectron2_keys_are_all_listed() -> None:
    state = {
        "backbone.bottom_up.stem.conv1.weight": torch.zeros(1),
        "backbone.bottom_up.res6.0.conv1.weight": torch.zeros(1),
        "roi_heads.keypoint_head.conv_fcn1.weight": torch.zeros(1),
        "pixel_std": torch.zeros(1),
    }
    with pytest.raises(CheckpointError, match="2 detectron2 key") as err:
        detectron2_to_torchvision(state)
    assert "res6.0.conv1.weight" in str(err.value) and "keypoint_head" in str(err.value)
    assert "pixel_std" not in str(err.value)


# ------------------------------------------------------------------------------------------------- strict loading


def test_same_class_count_loads_all_302(parity_dir: Path, tiny_mapped: dict) -> None:
    shapes = shapes_of(tiny_mapped)
    shapes["backbone.body.bn1.num_batches_tracked"] = ()  # trainable-BN buffers are never in checkpoints
    model = stand_in_model(shapes)
    report = load_weights(model, parity_dir / "tiny_lung" / "model_final.pkl")
    assert (report.kind, report.names) == ("detectron2-pkl", "detectron2")
    assert report.loaded == sorted(tiny_mapped) and report.skipped == []
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in tiny_mapped.items())


def test_class_count_change_skips_exactly_the_six_predictor_tensors(
    parity_dir: Path, tiny_mapped: dict, caplog: pytest.LogCaptureFixture
) -> None:
    shapes = shapes_of(tiny_mapped)
    shapes["roi_heads.box_predictor.cls_score.weight"] = (3, 256)  # 2 classes + background
    shapes["roi_heads.box_predictor.cls_score.bias"] = (3,)
    shapes["roi_heads.box_predictor.bbox_pred.weight"] = (12, 256)
    shapes["roi_heads.box_predictor.bbox_pred.bias"] = (12,)
    shapes["roi_heads.mask_predictor.mask_fcn_logits.weight"] = (3, 64, 1, 1)
    shapes["roi_heads.mask_predictor.mask_fcn_logits.bias"] = (3,)
    model = stand_in_model(shapes)
    with caplog.at_level(logging.WARNING, logger=loading.__name__):
        report = load_weights(model, parity_dir / "tiny_lung" / "model_final.pth")
    assert report.skipped == sorted(PREDICTOR_KEYS)
    assert len(report.loaded) == 296
    logged = [r.getMessage() for r in caplog.records if "incompatible shapes" in r.getMessage()]
    assert sorted(m.split("'")[1] for m in logged) == sorted(PREDICTOR_KEYS)
    state = model.state_dict()
    for key in PREDICTOR_KEYS:
        assert (state[key] == MARK).all()  # kept the model's initialisation
    assert torch.equal(state["roi_heads.box_head.fc6.weight"], tiny_mapped["roi_heads.box_head.fc6.weight"])


def test_missing_unexpected_and_misshapen_keys_are_all_listed_and_nothing_loads(tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    torch.save(
        {
            "backbone.body.conv1.weight": torch.zeros(2, 3),
            "roi_heads.box_head.fc6.weight": torch.zeros(5, 5),  # model has (4, 4): not a class-count change
            "rpn.head.extra.weight": torch.zeros(1),
            "roi_heads.box_predictor.cls_score.weight": torch.zeros(9, 4, 2),  # rank differs: not class count
        },
        path,
    )
    model = stand_in_model(
        {
            "backbone.body.conv1.weight": (2, 3),
            "roi_heads.box_head.fc6.weight": (4, 4),
            "roi_heads.box_head.fc7.weight": (4, 4),
            "roi_heads.box_predictor.cls_score.weight": (2, 4),
        }
    )
    with pytest.raises(CheckpointError) as err:
        load_weights(model, path)
    message = str(err.value)
    assert "1 missing from the file: roi_heads.box_head.fc7.weight" in message
    assert "1 not in the model: rpn.head.extra.weight" in message
    assert "2 with other shapes" in message and "fc6.weight: (5, 5)" in message and "cls_score.weight" in message
    assert all((v == MARK).all() for v in model.state_dict().values())


def test_lightning_checkpoint_and_exported_state_dict_load(tmp_path: Path) -> None:
    model = stand_in_model({"backbone.body.conv1.weight": (2, 2), "rpn.head.cls_logits.bias": (3,)})
    ours = {"backbone.body.conv1.weight": torch.ones(2, 2), "rpn.head.cls_logits.bias": torch.arange(3.0)}
    ckpt = tmp_path / "last.ckpt"
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in ours.items()},
            "hyper_parameters": {"arch": MaskRCNNConfig(num_classes=3)},
            "epoch": 0,
        },
        ckpt,
    )
    report = load_weights(model, ckpt)
    assert (report.kind, report.names, report.loaded) == ("lightning", "torchvision", sorted(ours))
    assert torch.equal(model.rpn.head.cls_logits.bias, torch.arange(3.0))

    export = tmp_path / "model_final.bin"  # the extension does not matter
    torch.save({k: v * 2 for k, v in ours.items()}, export)
    assert load_weights(model, export).kind == "state_dict"
    assert torch.equal(model.rpn.head.cls_logits.bias, torch.arange(3.0) * 2)


# ------------------------------------------------------------------------------------------------- backbone only


def resnet_body_model(resnet_state: Mapping[str, torch.Tensor]) -> nn.Module:
    """A stand-in detector: our body named like the given ResNet (FrozenBN: no num_batches_tracked), plus an RPN."""
    shapes = {
        BODY_PREFIX + k: tuple(v.shape)
        for k, v in resnet_state.items()
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    }
    shapes["rpn.head.conv.0.0.weight"] = (2, 2)
    return stand_in_model(shapes)


@pytest.mark.parametrize("library", ["torchvision", "timm"])
def test_backbone_only_from_imagenet_resnext(tmp_path: Path, library: str) -> None:
    torch.manual_seed(0)
    if library == "torchvision":
        from torchvision.models.resnet import Bottleneck, ResNet

        net = ResNet(Bottleneck, [1, 1, 1, 1], groups=2, width_per_group=4)
    else:
        from timm.models.resnet import Bottleneck, ResNet

        net = ResNet(block=Bottleneck, layers=[1, 1, 1, 1], cardinality=2, base_width=4)
    for module in net.modules():  # non-trivial statistics, to see them arrive
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2)
    path = tmp_path / "imagenet.pth"
    torch.save(net.state_dict(), path)
    model = resnet_body_model(net.state_dict())

    with pytest.raises(CheckpointError, match="backbone_only=True"):
        load_weights(model, path)
    report = load_weights(model, path, backbone_only=True)

    assert report.names == "resnet"
    assert {"fc.weight", "fc.bias", "backbone.body.bn1.num_batches_tracked"} <= set(report.ignored)
    state = model.state_dict()
    for key, value in net.state_dict().items():
        if not key.startswith("fc.") and not key.endswith("num_batches_tracked"):
            assert torch.equal(state[BODY_PREFIX + key], value), key
    assert (state["rpn.head.conv.0.0.weight"] == MARK).all()


def caffe2_blobs(rng: np.random.Generator, norm: str = "bn") -> dict[str, np.ndarray]:
    """A one-block ResNet in Caffe2 naming: stem, res2_0 with a projection shortcut, ImageNet classifier."""

    def arr(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    blobs = {"conv1_w": arr(4, 3, 7, 7), f"res_conv1_{norm}_s": arr(4), f"res_conv1_{norm}_b": arr(4)}
    for branch, shape in (("branch2a", (2, 4, 1, 1)), ("branch2b", (2, 1, 3, 3)), ("branch2c", (8, 2, 1, 1))):
        blobs[f"res2_0_{branch}_w"] = arr(*shape)
        blobs[f"res2_0_{branch}_{norm}_s"] = arr(shape[0])
        blobs[f"res2_0_{branch}_{norm}_b"] = arr(shape[0])
    blobs |= {
        "res2_0_branch1_w": arr(8, 4, 1, 1),
        f"res2_0_branch1_{norm}_s": arr(8),
        f"res2_0_branch1_{norm}_b": arr(8),
    }
    blobs |= {"fc1000_w": arr(10, 8), "fc1000_b": arr(10), "conv1_w_momentum": arr(4, 3, 7, 7)}
    return blobs


# Our body names for caffe2_blobs(), as detectron2's convert_basic_c2_names + our table give them.
C2_TO_OURS = {
    "conv1_w": "conv1.weight",
    "res_conv1_bn_s": "bn1.weight",
    "res_conv1_bn_b": "bn1.bias",
    "res2_0_branch2a_w": "layer1.0.conv1.weight",
    "res2_0_branch2a_bn_s": "layer1.0.bn1.weight",
    "res2_0_branch2a_bn_b": "layer1.0.bn1.bias",
    "res2_0_branch2b_w": "layer1.0.conv2.weight",
    "res2_0_branch2b_bn_s": "layer1.0.bn2.weight",
    "res2_0_branch2b_bn_b": "layer1.0.bn2.bias",
    "res2_0_branch2c_w": "layer1.0.conv3.weight",
    "res2_0_branch2c_bn_s": "layer1.0.bn3.weight",
    "res2_0_branch2c_bn_b": "layer1.0.bn3.bias",
    "res2_0_branch1_w": "layer1.0.downsample.0.weight",
    "res2_0_branch1_bn_s": "layer1.0.downsample.1.weight",
    "res2_0_branch1_bn_b": "layer1.0.downsample.1.bias",
}


@pytest.mark.parametrize("wrapped", [False, True], ids=["imagenet-pkl", "blobs-pkl"])
def test_backbone_only_from_caffe2_pickle_fills_frozen_bn_statistics(tmp_path: Path, wrapped: bool) -> None:
    blobs = caffe2_blobs(np.random.default_rng(0))
    path = tmp_path / "X-101-32x8d.pkl"
    path.write_bytes(pickle.dumps({"blobs": blobs} if wrapped else blobs, protocol=2))
    shapes = {BODY_PREFIX + ours: blobs[c2].shape for c2, ours in C2_TO_OURS.items()}
    for bn in ("bn1", "layer1.0.bn1", "layer1.0.bn2", "layer1.0.bn3", "layer1.0.downsample.1"):
        channels = shapes[f"{BODY_PREFIX}{bn}.weight"]
        shapes |= {
            f"{BODY_PREFIX}{bn}.running_mean": channels,
            f"{BODY_PREFIX}{bn}.running_var": channels,
        }
    shapes["roi_heads.box_head.fc6.weight"] = (3, 3)
    model = stand_in_model(shapes)

    report = load_weights(model, path, backbone_only=True)

    assert (report.kind, report.names) == ("pickle", "caffe2")
    assert report.ignored == ["fc1000_b", "fc1000_w"]
    state = model.state_dict()
    for c2, ours in C2_TO_OURS.items():
        assert torch.equal(state[BODY_PREFIX + ours], torch.from_numpy(blobs[c2])), c2
    for key, value in state.items():
        if key.endswith("running_mean"):
            assert not value.any(), key
        if key.endswith("running_var"):
            assert (value == 1).all(), key
    assert (state["roi_heads.box_head.fc6.weight"] == MARK).all()


def test_caffe2_names_rename_like_detectron2_and_reject_unknown_blobs() -> None:
    blobs = {k: torch.from_numpy(v) for k, v in caffe2_blobs(np.random.default_rng(0), norm="gn").items()}
    del blobs["conv1_w_momentum"]  # read_checkpoint drops optimizer momenta before renaming
    renamed = caffe2_to_resnet(blobs)
    assert set(renamed) == set(C2_TO_OURS.values())
    with pytest.raises(CheckpointError, match="fpn_inner_res2_2_sum_lateral_w"):
        caffe2_to_resnet(blobs | {"fpn_inner_res2_2_sum_lateral_w": torch.zeros(1)})


def test_backbone_only_from_a_detector_checkpoint_takes_only_the_body(parity_dir: Path, tiny_mapped: dict) -> None:
    body = {k: v for k, v in tiny_mapped.items() if k.startswith(BODY_PREFIX)}
    model = stand_in_model(shapes_of(body) | {"roi_heads.box_head.fc6.weight": (1, 1)})
    report = load_weights(model, parity_dir / "tiny_lung" / "model_final.pkl", backbone_only=True)
    assert report.loaded == sorted(body)
    assert len(report.ignored) == 302 - len(body)
    assert (model.state_dict()["roi_heads.box_head.fc6.weight"] == MARK).all()


# ------------------------------------------------------------------------------------------------- the real model


@pytest.mark.parametrize("norm", ["FrozenBN", "BN"])
def test_tiny_zoo_pickle_loads_into_our_model(parity_dir: Path, tiny_mapped: dict, norm: str) -> None:
    from segmentation.detectron2_config.settings import from_detectron2_config
    from segmentation.model.mask_rcnn import build_mask_rcnn

    cfg = dataclasses.replace(from_detectron2_config(parity_dir / "tiny_lung" / "config.yaml").model, norm=norm)
    model = build_mask_rcnn(cfg)
    report = load_weights(model, parity_dir / "tiny_lung" / "model_final.pkl")
    assert report.loaded == sorted(tiny_mapped) and report.skipped == []
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in tiny_mapped.items())

    two_classes = build_mask_rcnn(dataclasses.replace(cfg, num_classes=2))
    initial = {k: v.clone() for k, v in two_classes.state_dict().items() if k in PREDICTOR_KEYS}
    report = load_weights(two_classes, parity_dir / "tiny_lung" / "model_final.pkl")
    assert report.skipped == sorted(PREDICTOR_KEYS) and len(report.loaded) == 296
    state = two_classes.state_dict()
    assert all(torch.equal(state[k], v) for k, v in initial.items())
