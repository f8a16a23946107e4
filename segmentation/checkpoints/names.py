"""Map detectron2, Caffe2 and torchvision/timm ImageNet parameter names onto our (torchvision ``MaskRCNN``) names.

The rules are data tables (regex -> new name); the background class moves from detectron2's last position to
torchvision's first.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from segmentation.checkpoints.files import CheckpointError

BODY_PREFIX = "backbone.body."


_NORM = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_D2_RULES: list[tuple[re.Pattern[str], Any]] = [
    (re.compile(r"backbone\.bottom_up\.stem\.conv1\.weight"), lambda m: "backbone.body.conv1.weight"),
    (re.compile(rf"backbone\.bottom_up\.stem\.conv1\.norm\.{_NORM}"), lambda m: f"backbone.body.bn1.{m[1]}"),
    (
        re.compile(r"backbone\.bottom_up\.res([2-5])\.(\d+)\.conv([123])\.weight"),
        lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.conv{m[3]}.weight",
    ),
    (
        re.compile(rf"backbone\.bottom_up\.res([2-5])\.(\d+)\.conv([123])\.norm\.{_NORM}"),
        lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.bn{m[3]}.{m[4]}",
    ),
    (
        re.compile(r"backbone\.bottom_up\.res([2-5])\.(\d+)\.shortcut\.weight"),
        lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.downsample.0.weight",
    ),
    (
        re.compile(rf"backbone\.bottom_up\.res([2-5])\.(\d+)\.shortcut\.norm\.{_NORM}"),
        lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.downsample.1.{m[3]}",
    ),
    (
        re.compile(r"backbone\.fpn_lateral([2-5])\.(weight|bias)"),
        lambda m: f"backbone.fpn.inner_blocks.{int(m[1]) - 2}.0.{m[2]}",
    ),
    (
        re.compile(r"backbone\.fpn_output([2-5])\.(weight|bias)"),
        lambda m: f"backbone.fpn.layer_blocks.{int(m[1]) - 2}.0.{m[2]}",
    ),
    (
        re.compile(rf"backbone\.fpn_(lateral|output)([2-5])\.norm\.{_NORM}"),
        lambda m: f"backbone.fpn.{'inner' if m[1] == 'lateral' else 'layer'}_blocks.{int(m[2]) - 2}.1.{m[3]}",
    ),
    (re.compile(r"proposal_generator\.rpn_head\.conv\.(weight|bias)"), lambda m: f"rpn.head.conv.0.0.{m[1]}"),
    (
        re.compile(r"proposal_generator\.rpn_head\.objectness_logits\.(weight|bias)"),
        lambda m: f"rpn.head.cls_logits.{m[1]}",
    ),
    (
        re.compile(r"proposal_generator\.rpn_head\.anchor_deltas\.(weight|bias)"),
        lambda m: f"rpn.head.bbox_pred.{m[1]}",
    ),
    (re.compile(r"roi_heads\.box_head\.fc1\.(weight|bias)"), lambda m: f"roi_heads.box_head.fc6.{m[1]}"),
    (re.compile(r"roi_heads\.box_head\.fc2\.(weight|bias)"), lambda m: f"roi_heads.box_head.fc7.{m[1]}"),
    (
        re.compile(r"roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(weight|bias)"),
        lambda m: f"roi_heads.box_predictor.{m[1]}.{m[2]}",
    ),
    (
        re.compile(r"roi_heads\.mask_head\.mask_fcn([1-9]\d*)\.(weight|bias)"),
        lambda m: f"roi_heads.mask_head.{int(m[1]) - 1}.0.{m[2]}",
    ),
    (
        re.compile(r"roi_heads\.mask_head\.deconv\.(weight|bias)"),
        lambda m: f"roi_heads.mask_predictor.conv5_mask.{m[1]}",
    ),
    (
        re.compile(r"roi_heads\.mask_head\.predictor\.(weight|bias)"),
        lambda m: f"roi_heads.mask_predictor.mask_fcn_logits.{m[1]}",
    ),
]
# detectron2 stores these buffers but ignores them when loading (detection_checkpoint.py); so do we.
_D2_IGNORED = re.compile(r"pixel_mean|pixel_std|(.*\.)?anchor_generator\.cell_anchors\.\d+")


def _rename(state: Mapping[str, torch.Tensor], rules: list[tuple[re.Pattern[str], Any]], what: str) -> dict:
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        for pattern, target in rules:
            m = pattern.fullmatch(key)
            if m:
                out[target(m)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{len(unknown)} {what} key(s) with no known mapping: {', '.join(sorted(unknown))}")
    return out


def _detectron2_relayout(name: str, value: torch.Tensor) -> torch.Tensor:
    """detectron2 puts background last and has no background box/mask outputs; torchvision puts it first."""
    if name.startswith("roi_heads.box_predictor.cls_score."):
        return torch.cat([value[-1:], value[:-1]])
    if name.startswith("roi_heads.box_predictor.bbox_pred."):
        return torch.cat([value.new_zeros((4, *value.shape[1:])), value])
    if name.startswith("roi_heads.mask_predictor.mask_fcn_logits."):
        return torch.cat([value.new_zeros((1, *value.shape[1:])), value])
    return value


def _map_detectron2(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    ignored = sorted(k for k in state if _D2_IGNORED.fullmatch(k))
    kept = {k: v for k, v in state.items() if not _D2_IGNORED.fullmatch(k)}
    renamed = _rename(kept, _D2_RULES, "detectron2")
    return {k: _detectron2_relayout(k, v) for k, v in renamed.items()}, ignored


def detectron2_to_torchvision(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a detectron2 Mask R-CNN state dict to torchvision ``MaskRCNN`` names and class layout.

    The class-dependent tensors are re-laid-out: ``cls_score`` rows move the background from last to first,
    ``bbox_pred`` gains 4 zero rows and the mask predictor one zero channel for the background in front.
    detectron2's ``pixel_mean``, ``pixel_std`` and ``anchor_generator.cell_anchors.*`` are dropped.

    Raises:
        CheckpointError: listing every key that is not part of a detectron2 FPN Mask R-CNN.
    """
    return _map_detectron2(state)[0]


_C2_BN = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}
_C2_RULES: list[tuple[re.Pattern[str], Any]] = [
    (re.compile(r"conv1_w"), lambda m: "conv1.weight"),
    (re.compile(r"res_conv1_[bg]n_(s|b|rm|riv)"), lambda m: f"bn1.{_C2_BN[m[1]]}"),
    (
        re.compile(r"res([2-5])_(\d+)_branch2([abc])_w"),
        lambda m: f"layer{int(m[1]) - 1}.{m[2]}.conv{'abc'.index(m[3]) + 1}.weight",
    ),
    (
        re.compile(r"res([2-5])_(\d+)_branch2([abc])_[bg]n_(s|b|rm|riv)"),
        lambda m: f"layer{int(m[1]) - 1}.{m[2]}.bn{'abc'.index(m[3]) + 1}.{_C2_BN[m[4]]}",
    ),
    (re.compile(r"res([2-5])_(\d+)_branch1_w"), lambda m: f"layer{int(m[1]) - 1}.{m[2]}.downsample.0.weight"),
    (
        re.compile(r"res([2-5])_(\d+)_branch1_[bg]n_(s|b|rm|riv)"),
        lambda m: f"layer{int(m[1]) - 1}.{m[2]}.downsample.1.{_C2_BN[m[3]]}",
    ),
]
_C2_CLASSIFIER = re.compile(r"fc1000_[wb]|pred_[wb]")
_C2_KEY = re.compile(r"conv1_w|res_conv1_[bg]n_\w+|res\d_\d+_branch\w+")


def detectron2_names_to_ours(names: list[str]) -> dict[str, str]:
    """detectron2 parameter names -> ours (torchvision's), for comparing per-parameter settings with detectron2."""
    renamed = _rename({name: name for name in names}, _D2_RULES, "detectron2")
    return {original: ours for ours, original in renamed.items()}


def caffe2_to_resnet(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename Caffe2 (Detectron1 / detectron2 ``ImageNetPretrained``) ResNet blobs to torchvision ResNet names.

    The renaming is what detectron2's ``convert_basic_c2_names`` does, expressed in torchvision's names:
    ``conv1_w`` -> ``conv1.weight``, ``res_conv1_bn_{s,b}`` -> ``bn1.{weight,bias}``, ``res{s}_{b}_branch2{a,b,c}``
    -> ``layer{s-1}.{b}.conv{1,2,3}`` / ``bn{1,2,3}``, ``branch1`` -> ``downsample.{0,1}``; ``_rm``/``_riv`` are
    running mean/var; GroupNorm blobs (``_gn_``) map like BN. The ImageNet classifier (``fc1000``) is dropped.

    Raises:
        CheckpointError: listing every other key.
    """
    return _rename({k: v for k, v in state.items() if not _C2_CLASSIFIER.fullmatch(k)}, _C2_RULES, "Caffe2")


def naming(keys: list[str]) -> str:
    if any(k.startswith(("backbone.bottom_up.", "backbone.fpn_", "proposal_generator.")) for k in keys):
        return "detectron2"
    if any(k.startswith(("backbone.", "rpn.", "roi_heads.")) for k in keys):
        return "torchvision"
    if any(_C2_KEY.fullmatch(k) for k in keys):
        return "caffe2"
    return "resnet"


def to_our_names(state: dict[str, torch.Tensor], names: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map a checkpoint of any supported naming onto our names; return the mapped entries and the ignored keys."""
    if names == "detectron2":
        return _map_detectron2(state)
    if names == "torchvision":
        return state, []
    if names == "caffe2":
        ignored = sorted(k for k in state if _C2_CLASSIFIER.fullmatch(k))
        return {BODY_PREFIX + k: v for k, v in caffe2_to_resnet(state).items()}, ignored
    ignored = sorted(k for k in state if k.startswith("fc."))
    return {BODY_PREFIX + k: v for k, v in state.items() if not k.startswith("fc.")}, ignored
