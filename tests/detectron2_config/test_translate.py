"""A detectron2 config.yaml dump maps onto our settings key by key; what we do not implement is refused by name."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from segmentation.detectron2_config.files import is_detectron2_config
from segmentation.detectron2_config.keys import UnsupportedConfigError
from segmentation.detectron2_config.settings import from_detectron2_config
from segmentation.detectron2_config.translate import config_from_detectron2
from segmentation.model.config import MaskRCNNConfig


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def tiny(parity_dir: Path) -> dict[str, Any]:
    return load(parity_dir / "tiny_lung" / "config.yaml")


def with_value(cfg: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(cfg)
    *path, leaf = key.split(".")
    node = out
    for part in path:
        node = node[part]
    node[leaf] = value
    return out


def test_tiny_lung_config(parity_dir: Path) -> None:
    settings = from_detectron2_config(parity_dir / "tiny_lung" / "config.yaml")
    m = settings.model
    assert (m.depth, m.num_groups, m.width_per_group, m.res2_out_channels) == (50, 4, 4, 64)
    assert (m.fpn_out_channels, m.box_head_fc_dim, m.mask_head_conv_dim, m.roi_batch_size_per_image) == (
        64,
        256,
        64,
        128,
    )
    assert (m.num_classes, m.norm, m.freeze_at, m.stride_in_1x1, m.stem_out_channels) == (1, "FrozenBN", 0, False, 64)
    assert m.pixel_std == (57.375, 57.12, 58.395) and m.pixel_mean == (103.53, 116.28, 123.675)
    assert m.anchor_sizes == [[32.0], [64.0], [128.0], [256.0], [512.0]] and m.anchor_aspect_ratios == [0.5, 1.0, 2.0]
    assert (m.rpn_iou_thresholds, m.rpn_post_nms_topk_train, m.rpn_pre_nms_topk_train) == ((0.3, 0.7), 1000, 2000)
    assert (m.box_head_num_fc, m.mask_head_num_conv, m.box_pooler_resolution, m.mask_pooler_resolution) == (2, 4, 7, 14)
    assert m.box_reg_weights == (10.0, 10.0, 5.0, 5.0) and m.detections_per_image == 100
    sizes = (settings.min_size_train, settings.max_size_train, settings.min_size_test, settings.max_size_test)
    assert sizes == ([512], 512, 512, 512)
    assert (settings.input_format, settings.mask_format, settings.weights) == ("BGR", "bitmask", "model_final.pth")
    assert (settings.train_datasets, settings.test_datasets) == (("phantom_lung_train",), ("phantom_lung_val",))
    assert (settings.base_lr, settings.max_iter, settings.ims_per_batch, settings.warmup_iters) == (1e-4, 60, 2, 0)
    assert (settings.momentum, settings.weight_decay, settings.steps, settings.amp_enabled) == (0.0, 1e-4, (), False)
    assert (settings.num_workers, settings.filter_empty_annotations, settings.aspect_ratio_grouping) == (0, True, True)
    assert settings.seed == 20260601


def test_x101_reference_config(parity_dir: Path) -> None:
    path = parity_dir / "x101" / "expected" / "config_reference.yaml"
    settings = from_detectron2_config(load(path))
    m = settings.model
    assert (m.depth, m.num_groups, m.width_per_group, m.fpn_out_channels) == (101, 32, 8, 256)
    assert m.pixel_std == (57.375, 57.12, 58.395)
    assert (m.num_classes, m.res2_out_channels, m.freeze_at, m.box_head_fc_dim, m.mask_head_conv_dim) == (
        80,
        256,
        2,
        1024,
        256,
    )
    assert (settings.steps, settings.warmup_iters, settings.momentum) == ((210000, 250000), 1000, 0.9)
    # Our defaults are Base-RCNN-FPN's with a ResNet-50 body: the X101 zoo config differs in exactly these.
    defaults = MaskRCNNConfig()
    same = {f: getattr(m, f) == getattr(defaults, f) for f in vars(defaults)}
    assert [f for f, ok in same.items() if not ok] == [
        "num_classes",
        "depth",
        "num_groups",
        "width_per_group",
        "pixel_std",
    ]


def test_config_detection(parity_dir: Path, tmp_path: Path) -> None:
    assert is_detectron2_config(parity_dir / "tiny_lung" / "config.yaml")
    assert is_detectron2_config({"MODEL": {"META_ARCHITECTURE": "GeneralizedRCNN"}})
    lightning = tmp_path / "fit.yaml"
    lightning.write_text("model:\n  arch:\n    depth: 101\ntrainer:\n  max_steps: 10\n")
    assert not is_detectron2_config(lightning)
    assert not is_detectron2_config({"model": {}})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("MODEL.ROI_HEADS.NAME", "CascadeROIHeads"),
        ("MODEL.META_ARCHITECTURE", "RetinaNet"),
        ("MODEL.KEYPOINT_ON", True),
        ("MODEL.LOAD_PROPOSALS", True),
        ("MODEL.MASK_ON", False),
        ("MODEL.RESNETS.DEFORM_ON_PER_STAGE", [False, True, True, True]),
        ("MODEL.RESNETS.RES5_DILATION", 2),
        ("MODEL.FPN.NORM", "LN"),
        ("MODEL.FPN.FUSE_TYPE", "avg"),
        ("MODEL.ANCHOR_GENERATOR.NAME", "RotatedAnchorGenerator"),
        ("MODEL.ROI_BOX_HEAD.NUM_CONV", 4),
        ("MODEL.ROI_BOX_HEAD.NUM_FC", 1),
        ("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", True),
        ("MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", True),
        ("MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIAlign"),
        ("MODEL.ROI_MASK_HEAD.POOLER_TYPE", "ROIPool"),
        ("MODEL.ROI_BOX_HEAD.USE_FED_LOSS", True),
        ("MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE", True),
        ("MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", "giou"),
        ("MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA", 0.5),
        ("MODEL.RPN.SMOOTH_L1_BETA", 0.1111),
        ("INPUT.FORMAT", "L"),
        ("INPUT.RANDOM_FLIP", "both"),
        ("INPUT.MIN_SIZE_TRAIN_SAMPLING", "range_by_clipping"),
        ("DATALOADER.SAMPLER_TRAIN", "RandomSubsetTrainingSampler"),
        ("MODEL.ROI_HEADS.NUM_CLASSSES", 3),  # a typo: not a detectron2 key
        ("SOLVER.WARMUP_ITER", 100),
        ("TEST.AUG.ENABLED", True),
        ("SOLVER.LR_SCHEDULER_NAME", "WarmupPolyLR"),
        ("SOLVER.RESCALE_INTERVAL", True),
    ],
)
def test_unsupported_settings_are_refused_by_name_and_value(tiny: dict, key: str, value: Any) -> None:
    with pytest.raises(UnsupportedConfigError) as err:
        from_detectron2_config(with_value(tiny, key, value))
    assert f"{key} = {value!r}" in str(err.value)


def test_every_refusal_is_listed_at_once(tiny: dict) -> None:
    cfg = with_value(with_value(tiny, "MODEL.ROI_HEADS.NAME", "CascadeROIHeads"), "INPUT.RANDOM_FLIP", "diagonal")
    with pytest.raises(UnsupportedConfigError, match=r"(?s)ROI_HEADS\.NAME.*RANDOM_FLIP"):
        from_detectron2_config(cfg)


def test_accepted_variants(tiny: dict) -> None:
    rgb = from_detectron2_config(with_value(tiny, "INPUT.FORMAT", "RGB"))
    assert rgb.input_format == "RGB"
    assert from_detectron2_config(with_value(tiny, "MODEL.RESNETS.NORM", "GN")).model.norm == "GN"
    assert from_detectron2_config(with_value(tiny, "MODEL.ROI_MASK_HEAD.NUM_CONV", 2)).model.mask_head_num_conv == 2
    assert from_detectron2_config(with_value(tiny, "INPUT.MIN_SIZE_TRAIN", 600)).min_size_train == [600]
    assert from_detectron2_config(with_value(tiny, "MODEL.FPN.NORM", "GN")).model.fpn_norm == "GN"
    # Components a Mask R-CNN does not use are ignored, whatever they say; so are keys older dumps lack.
    other = with_value(tiny, "MODEL.RETINANET.NUM_CONVS", 8)
    del other["MODEL"]["ROI_BOX_HEAD"]["USE_FED_LOSS"]
    assert from_detectron2_config(other).model == from_detectron2_config(tiny).model


def test_solver_settings_map_onto_the_optimizer_schedule_and_clipping(tiny: dict) -> None:
    cfg = tiny
    for key, value in [
        ("SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR"), ("SOLVER.BASE_LR_END", 1e-6),
        ("SOLVER.WARMUP_METHOD", "constant"), ("SOLVER.MOMENTUM", 0.9), ("SOLVER.NESTEROV", True),
        ("SOLVER.BIAS_LR_FACTOR", 2.0), ("SOLVER.WEIGHT_DECAY_BIAS", 0.0), ("SOLVER.WEIGHT_DECAY_NORM", 1e-5),
        ("SOLVER.CLIP_GRADIENTS.ENABLED", True), ("SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm"),
        ("SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 0.5), ("SOLVER.CLIP_GRADIENTS.NORM_TYPE", float("inf")),
    ]:  # fmt: skip
        cfg = with_value(cfg, key, value)
    ours = config_from_detectron2(from_detectron2_config(cfg))
    model = ours["model"]
    assert model["optimizer"] == {
        "class_path": "torch.optim.SGD",
        "init_args": {"lr": 1e-4, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4},
    }
    assert (model["bias_lr_factor"], model["weight_decay_bias"], model["weight_decay_norm"]) == (2.0, 0.0, 1e-5)
    assert model["schedule"] == {
        "name": "WarmupCosineLR", "warmup_method": "constant", "warmup_iters": 0, "warmup_factor": 0.001,
        "milestones": [], "gamma": 0.1, "base_lr_end": 1e-6,
    }  # fmt: skip
    assert model["gradient_clipping"] == {"clip_type": "norm", "clip_value": 0.5, "norm_type": float("inf")}
    assert ours["seed_everything"] == 20260601


def test_clipping_other_than_per_tensor_is_refused(tiny: dict) -> None:
    cfg = with_value(tiny, "SOLVER.CLIP_GRADIENTS.ENABLED", True)
    cfg = with_value(cfg, "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "full_model")
    with pytest.raises(UnsupportedConfigError, match="CLIP_TYPE = 'full_model'"):
        from_detectron2_config(cfg)


def test_detectron2_training_settings_map_onto_augmentation_sampling_and_the_run(tiny: dict) -> None:
    cfg = tiny
    for key, value in [
        ("INPUT.MIN_SIZE_TRAIN", [480, 576]), ("INPUT.MIN_SIZE_TRAIN_SAMPLING", "range"),
        ("INPUT.RANDOM_FLIP", "vertical"), ("INPUT.CROP.ENABLED", True), ("INPUT.CROP.TYPE", "absolute"),
        ("INPUT.CROP.SIZE", [300, 320]), ("DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler"),
        ("DATALOADER.REPEAT_THRESHOLD", 0.3), ("DATALOADER.REPEAT_SQRT", False), ("SOLVER.IMS_PER_BATCH", 8),
        ("SOLVER.CHECKPOINT_PERIOD", 700), ("SOLVER.REFERENCE_WORLD_SIZE", 4), ("SEED", 7),
    ]:  # fmt: skip
        cfg = with_value(cfg, key, value)
    ours = config_from_detectron2(from_detectron2_config(cfg))
    data = ours["data"]
    assert (data["min_size_train"], data["min_size_train_sampling"], data["random_flip"]) == (
        [480, 576],
        "range",
        "vertical",
    )
    assert (data["crop_type"], data["crop_size"]) == ("absolute", [300.0, 320.0])
    assert (data["sampler_train"], data["repeat_threshold"], data["repeat_sqrt"]) == (
        "RepeatFactorTrainingSampler",
        0.3,
        False,
    )
    assert data["ims_per_batch"] == 8 and "batch_size" not in data  # global, divided among the processes
    assert ours["checkpoint_last"] == {"every_n_train_steps": 700} and ours["reference_world_size"] == 4
    assert ours["seed_everything"] == data["seed"] == 7
    evaluation = config_from_detectron2(from_detectron2_config(cfg), training=False)
    assert "checkpoint_last" not in evaluation and "reference_world_size" not in evaluation


def test_keys_a_config_leaves_out_take_detectron2s_defaults(tiny: dict) -> None:
    partial = copy.deepcopy(tiny)
    del partial["MODEL"]["RESNETS"]["DEPTH"], partial["INPUT"]["RANDOM_FLIP"], partial["INPUT"]["MIN_SIZE_TRAIN"]
    settings = from_detectron2_config(partial)
    assert settings.model.depth == 50 and settings.random_flip == "horizontal"
    assert settings.min_size_train == [800]


def test_base_chains_resolve_relative_to_each_file_and_a_missing_base_is_named(tmp_path: Path, tiny: dict) -> None:
    (tmp_path / "configs" / "COCO").mkdir(parents=True)
    base = copy.deepcopy(tiny)
    base["INPUT"]["MIN_SIZE_TRAIN"] = [640, 800]
    (tmp_path / "configs" / "Base.yaml").write_text(yaml.safe_dump(base))
    child = tmp_path / "configs" / "COCO" / "model.yaml"
    child.write_text(yaml.safe_dump({"_BASE_": "../Base.yaml", "MODEL": {"RESNETS": {"DEPTH": 101}}}))
    settings = from_detectron2_config(child)
    assert settings.model.depth == 101 and settings.min_size_train == [640, 800]
    assert settings.model.fpn_out_channels == tiny["MODEL"]["FPN"]["OUT_CHANNELS"]  # the rest from the base
    assert is_detectron2_config(child)
    orphan = tmp_path / "orphan.yaml"
    orphan.write_text("_BASE_: ../Base-RCNN-FPN.yaml\nMODEL:\n  MASK_ON: true\n")
    with pytest.raises(
        UnsupportedConfigError, match=r"orphan.yaml: its _BASE_ '../Base-RCNN-FPN.yaml' .* does not exist"
    ):
        from_detectron2_config(orphan)
