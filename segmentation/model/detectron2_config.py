"""Read a detectron2 config into our settings: every key translated, a no-op by name, or refused by name.

Users arrive with a detectron2 run: the fully resolved ``config.yaml`` detectron2 writes to its OUTPUT_DIR, or one of
detectron2's own config files with its ``_BASE_`` chain. Mapping it key by key onto ``MaskRCNNConfig`` (and the
input, data and solver settings) lets them reproduce that run without transcribing numbers by hand. A key the file
does not set takes detectron2's default (``detectron2_keys.yaml``, from ``detectron2/config/defaults.py``), as
detectron2's ``get_cfg()`` would. A setting that would change the numbers and that we do not implement (cascade
heads, deformable convs, test-time augmentation, a different loss, ...) is refused by its detectron2 name and value;
keys that cannot matter for an FPN Mask R-CNN are listed with their reason in the same table; any other key (a typo,
a newer detectron2's key) is refused too: nothing is silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, get_args

import yaml

from segmentation.errors import UserError
from segmentation.model.config import FpnNorm, MaskRCNNConfig, Norm


class UnsupportedConfigError(UserError, ValueError):
    """A detectron2 config that asks for something this project does not implement; lists every such key."""


@dataclass
class Detectron2Settings:
    """Everything a detectron2 Mask R-CNN config says that our training and evaluation use.

    Attributes:
        model: the architecture (MODEL.*, TEST.DETECTIONS_PER_IMAGE).
        weights: MODEL.WEIGHTS, as written (a path, URL or ``detectron2://``); resolve with ``weights.resolve``.
        input_format: INPUT.FORMAT, ``BGR`` or ``RGB``: the channel order PIXEL_MEAN/PIXEL_STD refer to.
        min_size_train, max_size_train: INPUT.MIN_SIZE_TRAIN (the sizes) and MAX_SIZE_TRAIN.
        min_size_train_sampling, random_flip: INPUT.MIN_SIZE_TRAIN_SAMPLING and INPUT.RANDOM_FLIP.
        crop_type, crop_size: INPUT.CROP.TYPE and SIZE when INPUT.CROP.ENABLED (crop_type None otherwise).
        min_size_test, max_size_test: INPUT.MIN_SIZE_TEST (0 disables the test resize) and MAX_SIZE_TEST.
        mask_format: INPUT.MASK_FORMAT, ``bitmask`` or ``polygon``.
        train_datasets, test_datasets: DATASETS.TRAIN / DATASETS.TEST registered names.
        base_lr, max_iter, ims_per_batch, warmup_iters, warmup_factor, weight_decay, momentum, nesterov, steps,
            gamma, lr_scheduler_name, warmup_method, base_lr_end: SOLVER.* of the optimizer and the schedule.
        bias_lr_factor, weight_decay_bias, weight_decay_norm: SOLVER.* parameter-group rules.
        clip_gradients: SOLVER.CLIP_GRADIENTS as ``{clip_type, clip_value, norm_type}``, None when disabled.
        amp_enabled: SOLVER.AMP.ENABLED.
        checkpoint_period: SOLVER.CHECKPOINT_PERIOD.
        eval_period: TEST.EVAL_PERIOD (0: evaluate only after training).
        num_workers, filter_empty_annotations, aspect_ratio_grouping, sampler_train, repeat_threshold,
            repeat_sqrt: DATALOADER.*.
        reference_world_size: SOLVER.REFERENCE_WORLD_SIZE (0: no automatic scaling to the number of processes).
        seed: SEED (-1: random).
    """

    model: MaskRCNNConfig
    weights: str
    input_format: str
    min_size_train: list[int]
    max_size_train: int
    min_size_train_sampling: str
    random_flip: str
    crop_type: str | None
    crop_size: list[float]
    min_size_test: int
    max_size_test: int
    mask_format: str
    train_datasets: tuple[str, ...]
    test_datasets: tuple[str, ...]
    base_lr: float
    max_iter: int
    ims_per_batch: int
    warmup_iters: int
    warmup_factor: float
    weight_decay: float
    momentum: float
    nesterov: bool
    lr_scheduler_name: str
    warmup_method: str
    base_lr_end: float
    bias_lr_factor: float
    weight_decay_bias: float | None
    weight_decay_norm: float
    clip_gradients: dict[str, Any] | None
    steps: tuple[int, ...]
    gamma: float
    amp_enabled: bool
    checkpoint_period: int
    eval_period: int
    num_workers: int
    filter_empty_annotations: bool
    aspect_ratio_grouping: bool
    sampler_train: str
    repeat_threshold: float
    repeat_sqrt: bool
    reference_world_size: int
    seed: int


@cache
def _key_tables() -> tuple[dict[str, Any], dict[str, str]]:
    """detectron2's defaults and the no-op keys with their reasons, from ``detectron2_keys.yaml``."""
    tables = yaml.safe_load((Path(__file__).with_name("detectron2_keys.yaml")).read_text())
    return tables["defaults"], tables["no_op"]


def load_config(path: str | Path) -> dict[str, Any]:
    """A detectron2 yaml with its ``_BASE_`` chain merged in (each file over its base, lists replaced whole)."""
    path = Path(path)
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise UnsupportedConfigError(f"{path}: not a detectron2 config (a yaml mapping)")
    base = data.pop("_BASE_", None)
    if base is None:
        return data
    base_path = Path(base).expanduser()
    base_path = base_path if base_path.is_absolute() else path.parent / base_path
    if not base_path.is_file():
        raise UnsupportedConfigError(
            f"{path}: its _BASE_ {base!r} ({base_path}) does not exist; give the fully resolved config.yaml that "
            "detectron2 writes to OUTPUT_DIR, or keep the file inside a checkout of detectron2's configs/ folder"
        )
    return _merge(load_config(base_path), data)


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _leaf_keys(node: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in node.items():
        if isinstance(value, Mapping) and value:
            yield from _leaf_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def _read(path_or_dict: Mapping[str, Any] | str | Path) -> Mapping[str, Any]:
    if isinstance(path_or_dict, Mapping):
        return path_or_dict
    return load_config(path_or_dict)


def is_detectron2_config(path_or_dict: Mapping[str, Any] | str | Path) -> bool:
    """True for a detectron2 (yacs) config: a mapping with an upper-case ``MODEL`` section (or a ``_BASE_``).

    Our LightningCLI configs use lower-case ``model``; the two can be told apart by that alone.
    """
    if isinstance(path_or_dict, Mapping):
        cfg = path_or_dict
    else:
        try:
            with open(path_or_dict) as f:
                cfg = yaml.safe_load(f)
        except yaml.YAMLError:
            return False
    return isinstance(cfg, Mapping) and (isinstance(cfg.get("MODEL"), Mapping) or "_BASE_" in cfg)


class _Reader:
    """Looks up dotted keys (detectron2's default when the file does not set one), remembers which were read, and
    collects every refusal, so one error can list all of them."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = cfg
        self.problems: list[str] = []
        self.read: set[str] = set()

    def get(self, key: str) -> Any:
        self.read.add(key)
        node: Any = self.cfg
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return _key_tables()[0][key]
            node = node[part]
        return node

    def require(self, key: str, ok: Callable[[Any], bool], expected: str) -> None:
        """Refuse ``key`` (recorded, raised later with the others) unless ``ok(value)``."""
        value = self.get(key)
        if not ok(value):
            self.problems.append(f"{key} = {value!r} is not supported (expected {expected})")

    def equal(self, key: str, accepted: Any) -> None:
        self.require(key, lambda v: v == accepted, repr(accepted))

    def check_every_key_accounted_for(self) -> None:
        """Refuse keys that are neither read nor a listed no-op: a typo, or a key of another detectron2 version."""
        defaults, no_op = _key_tables()
        for key in _leaf_keys(self.cfg):
            if key in self.read or any(key == k or key.startswith(k + ".") for k in no_op):
                continue
            known = "is not translated" if key in defaults else "is not a key of detectron2's defaults.py"
            self.problems.append(f"{key} = {self.get(key)!r} {known}")


def _floats(values: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _check_model(r: _Reader) -> None:
    """Refuse the MODEL.* settings that select something other than detectron2's FPN Mask R-CNN."""
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

    r.require(m + "PIXEL_MEAN", lambda v: len(v) == 3, "3 values")
    r.require(m + "PIXEL_STD", lambda v: len(v) == 3, "3 values")


def _model(r: _Reader) -> MaskRCNNConfig:
    """Build the architecture from a config that passed ``_check_model``."""
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


def from_detectron2_config(cfg: Mapping[str, Any] | str | Path) -> Detectron2Settings:
    """Map a detectron2 Mask R-CNN config onto our settings.

    Args:
        cfg: the parsed config (its ``_BASE_`` already merged), or the path of a yaml (its ``_BASE_`` chain is
            resolved relative to it).

    Returns:
        The architecture as a ``MaskRCNNConfig`` plus the input, dataset, solver and data-loader settings.

    Raises:
        UnsupportedConfigError: naming every setting we do not implement with its value, or a ``_BASE_`` file that
            does not exist.
    """
    r = _Reader(_read(cfg))
    _check_model(r)

    inp, sol, loader = "INPUT.", "SOLVER.", "DATALOADER."
    r.require(inp + "FORMAT", lambda v: v in ("BGR", "RGB"), "'BGR' or 'RGB'")
    r.require(inp + "RANDOM_FLIP", lambda v: v in ("none", "horizontal", "vertical"), "none, horizontal or vertical")
    r.require(inp + "MIN_SIZE_TRAIN_SAMPLING", lambda v: v in ("choice", "range"), "'choice' or 'range'")
    min_train = r.get(inp + "MIN_SIZE_TRAIN")
    min_train = [int(min_train)] if isinstance(min_train, int) else [int(v) for v in min_train]
    if r.get(inp + "MIN_SIZE_TRAIN_SAMPLING") == "range" and len(min_train) != 2:
        r.problems.append(f"{inp}MIN_SIZE_TRAIN = {min_train} with 'range' sampling is not [low, high]")
    crop = bool(r.get(inp + "CROP.ENABLED"))
    if crop:
        crop_types = ("relative_range", "relative", "absolute", "absolute_range")
        r.require(inp + "CROP.TYPE", lambda v: v in crop_types, " or ".join(crop_types))
    r.require(inp + "MASK_FORMAT", lambda v: v in ("bitmask", "polygon"), "'bitmask' or 'polygon'")
    r.equal("TEST.AUG.ENABLED", False)
    r.equal("TEST.PRECISE_BN.ENABLED", False)
    r.equal("DATASETS.PROPOSAL_FILES_TRAIN", [])
    r.equal("DATASETS.PROPOSAL_FILES_TEST", [])
    samplers = ("TrainingSampler", "RepeatFactorTrainingSampler")
    r.require(loader + "SAMPLER_TRAIN", lambda v: v in samplers, " or ".join(samplers))
    repeat = r.get(loader + "SAMPLER_TRAIN") == "RepeatFactorTrainingSampler"

    r.require(
        sol + "LR_SCHEDULER_NAME",
        lambda v: v in ("WarmupMultiStepLR", "WarmupCosineLR"),
        "'WarmupMultiStepLR' or 'WarmupCosineLR'",
    )
    r.require(sol + "WARMUP_METHOD", lambda v: v in ("linear", "constant"), "'linear' or 'constant'")
    r.equal(sol + "RESCALE_INTERVAL", False)
    clipping = r.get(sol + "CLIP_GRADIENTS.ENABLED")
    if clipping:
        r.require(sol + "CLIP_GRADIENTS.CLIP_TYPE", lambda v: v in ("value", "norm"), "'value' or 'norm'")
    weight_decay_bias = r.get(sol + "WEIGHT_DECAY_BIAS")
    model = _model(r)
    settings = Detectron2Settings(
        model=model,
        weights=str(r.get("MODEL.WEIGHTS")),
        input_format=r.get(inp + "FORMAT"),
        min_size_train=min_train,
        max_size_train=int(r.get(inp + "MAX_SIZE_TRAIN")),
        min_size_train_sampling=r.get(inp + "MIN_SIZE_TRAIN_SAMPLING"),
        random_flip=r.get(inp + "RANDOM_FLIP"),
        crop_type=r.get(inp + "CROP.TYPE") if crop else None,
        crop_size=[float(v) for v in r.get(inp + "CROP.SIZE")],
        min_size_test=int(r.get(inp + "MIN_SIZE_TEST")),
        max_size_test=int(r.get(inp + "MAX_SIZE_TEST")),
        mask_format=r.get(inp + "MASK_FORMAT"),
        train_datasets=tuple(r.get("DATASETS.TRAIN")),
        test_datasets=tuple(r.get("DATASETS.TEST")),
        base_lr=float(r.get(sol + "BASE_LR")),
        max_iter=int(r.get(sol + "MAX_ITER")),
        ims_per_batch=int(r.get(sol + "IMS_PER_BATCH")),
        warmup_iters=int(r.get(sol + "WARMUP_ITERS")),
        warmup_factor=float(r.get(sol + "WARMUP_FACTOR")),
        weight_decay=float(r.get(sol + "WEIGHT_DECAY")),
        momentum=float(r.get(sol + "MOMENTUM")),
        nesterov=bool(r.get(sol + "NESTEROV")),
        lr_scheduler_name=r.get(sol + "LR_SCHEDULER_NAME"),
        warmup_method=r.get(sol + "WARMUP_METHOD"),
        base_lr_end=float(r.get(sol + "BASE_LR_END")),
        bias_lr_factor=float(r.get(sol + "BIAS_LR_FACTOR")),
        weight_decay_bias=None if weight_decay_bias is None else float(weight_decay_bias),
        weight_decay_norm=float(r.get(sol + "WEIGHT_DECAY_NORM")),
        clip_gradients=(
            {
                "clip_type": r.get(sol + "CLIP_GRADIENTS.CLIP_TYPE"),
                "clip_value": float(r.get(sol + "CLIP_GRADIENTS.CLIP_VALUE")),
                "norm_type": float(r.get(sol + "CLIP_GRADIENTS.NORM_TYPE")),
            }
            if clipping
            else None
        ),
        steps=tuple(int(s) for s in r.get(sol + "STEPS")),
        gamma=float(r.get(sol + "GAMMA")),
        amp_enabled=bool(r.get(sol + "AMP.ENABLED")),
        checkpoint_period=int(r.get(sol + "CHECKPOINT_PERIOD")),
        eval_period=int(r.get("TEST.EVAL_PERIOD")),
        num_workers=int(r.get(loader + "NUM_WORKERS")),
        filter_empty_annotations=bool(r.get(loader + "FILTER_EMPTY_ANNOTATIONS")),
        aspect_ratio_grouping=bool(r.get(loader + "ASPECT_RATIO_GROUPING")),
        sampler_train=r.get(loader + "SAMPLER_TRAIN"),
        repeat_threshold=float(r.get(loader + "REPEAT_THRESHOLD")) if repeat else 0.0,
        repeat_sqrt=bool(r.get(loader + "REPEAT_SQRT")) if repeat else True,
        reference_world_size=int(r.get(sol + "REFERENCE_WORLD_SIZE")),
        seed=int(r.get("SEED")),
    )
    r.check_every_key_accounted_for()
    if r.problems:
        raise UnsupportedConfigError(
            "detectron2 config uses settings this project does not implement:\n  " + "\n  ".join(r.problems)
        )
    return settings
