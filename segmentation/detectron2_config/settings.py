"""Read a detectron2 config into our settings: every key translated, a no-op by name, or refused by name.

Users arrive with a detectron2 run: the fully resolved ``config.yaml`` detectron2 writes to its OUTPUT_DIR, or one of
detectron2's own config files with its ``_BASE_`` chain. Mapping it key by key onto ``MaskRCNNConfig`` (and the
input, data and solver settings) lets them reproduce that run without transcribing numbers by hand. A key the file
does not set takes detectron2's default (``keys.yaml``, from ``detectron2/config/defaults.py``), as detectron2's
``get_cfg()`` would. A setting that would change the numbers and that we do not implement (cascade heads,
deformable convs, test-time augmentation, a different loss, ...) is refused by its detectron2 name and value; keys
that cannot matter for an FPN Mask R-CNN are listed with their reason in the same table; any other key (a typo, a
newer detectron2's key) is refused too: nothing is silently ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segmentation.detectron2_config.architecture import architecture, check_architecture
from segmentation.detectron2_config.files import load_config
from segmentation.detectron2_config.keys import KeyReader
from segmentation.model.config import MaskRCNNConfig


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
    r = KeyReader(cfg if isinstance(cfg, Mapping) else load_config(cfg))
    check_architecture(r)
    inputs = _input(r)
    r.equal("TEST.AUG.ENABLED", False)
    r.equal("TEST.PRECISE_BN.ENABLED", False)
    r.equal("DATASETS.PROPOSAL_FILES_TRAIN", [])
    r.equal("DATASETS.PROPOSAL_FILES_TEST", [])
    loader = _dataloader(r)
    solver = _solver(r)
    settings = Detectron2Settings(
        model=architecture(r),
        weights=str(r.get("MODEL.WEIGHTS")),
        **inputs,
        train_datasets=tuple(r.get("DATASETS.TRAIN")),
        test_datasets=tuple(r.get("DATASETS.TEST")),
        **solver,
        eval_period=int(r.get("TEST.EVAL_PERIOD")),
        **loader,
        seed=int(r.get("SEED")),
    )
    r.check_every_key_accounted_for()
    r.raise_problems()
    return settings


def _input(r: KeyReader) -> dict[str, Any]:
    """INPUT.*: image format, training and test resizing, flip, crop, mask format."""
    inp = "INPUT."
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
    return {
        "input_format": r.get(inp + "FORMAT"),
        "min_size_train": min_train,
        "max_size_train": int(r.get(inp + "MAX_SIZE_TRAIN")),
        "min_size_train_sampling": r.get(inp + "MIN_SIZE_TRAIN_SAMPLING"),
        "random_flip": r.get(inp + "RANDOM_FLIP"),
        "crop_type": r.get(inp + "CROP.TYPE") if crop else None,
        "crop_size": [float(v) for v in r.get(inp + "CROP.SIZE")],
        "min_size_test": int(r.get(inp + "MIN_SIZE_TEST")),
        "max_size_test": int(r.get(inp + "MAX_SIZE_TEST")),
        "mask_format": r.get(inp + "MASK_FORMAT"),
    }


def _dataloader(r: KeyReader) -> dict[str, Any]:
    """DATALOADER.*: workers, filtering, batching and the training sampler."""
    loader = "DATALOADER."
    samplers = ("TrainingSampler", "RepeatFactorTrainingSampler")
    r.require(loader + "SAMPLER_TRAIN", lambda v: v in samplers, " or ".join(samplers))
    repeat = r.get(loader + "SAMPLER_TRAIN") == "RepeatFactorTrainingSampler"
    return {
        "num_workers": int(r.get(loader + "NUM_WORKERS")),
        "filter_empty_annotations": bool(r.get(loader + "FILTER_EMPTY_ANNOTATIONS")),
        "aspect_ratio_grouping": bool(r.get(loader + "ASPECT_RATIO_GROUPING")),
        "sampler_train": r.get(loader + "SAMPLER_TRAIN"),
        "repeat_threshold": float(r.get(loader + "REPEAT_THRESHOLD")) if repeat else 0.0,
        "repeat_sqrt": bool(r.get(loader + "REPEAT_SQRT")) if repeat else True,
    }


def _solver(r: KeyReader) -> dict[str, Any]:
    """SOLVER.*: optimizer, parameter-group rules, schedule, clipping, precision, checkpoints, world size."""
    sol = "SOLVER."
    r.require(
        sol + "LR_SCHEDULER_NAME",
        lambda v: v in ("WarmupMultiStepLR", "WarmupCosineLR"),
        "'WarmupMultiStepLR' or 'WarmupCosineLR'",
    )
    r.require(sol + "WARMUP_METHOD", lambda v: v in ("linear", "constant"), "'linear' or 'constant'")
    r.equal(sol + "RESCALE_INTERVAL", False)
    weight_decay_bias = r.get(sol + "WEIGHT_DECAY_BIAS")
    return {
        "base_lr": float(r.get(sol + "BASE_LR")),
        "max_iter": int(r.get(sol + "MAX_ITER")),
        "ims_per_batch": int(r.get(sol + "IMS_PER_BATCH")),
        "warmup_iters": int(r.get(sol + "WARMUP_ITERS")),
        "warmup_factor": float(r.get(sol + "WARMUP_FACTOR")),
        "weight_decay": float(r.get(sol + "WEIGHT_DECAY")),
        "momentum": float(r.get(sol + "MOMENTUM")),
        "nesterov": bool(r.get(sol + "NESTEROV")),
        "lr_scheduler_name": r.get(sol + "LR_SCHEDULER_NAME"),
        "warmup_method": r.get(sol + "WARMUP_METHOD"),
        "base_lr_end": float(r.get(sol + "BASE_LR_END")),
        "bias_lr_factor": float(r.get(sol + "BIAS_LR_FACTOR")),
        "weight_decay_bias": None if weight_decay_bias is None else float(weight_decay_bias),
        "weight_decay_norm": float(r.get(sol + "WEIGHT_DECAY_NORM")),
        "clip_gradients": _clip_gradients(r),
        "steps": tuple(int(s) for s in r.get(sol + "STEPS")),
        "gamma": float(r.get(sol + "GAMMA")),
        "amp_enabled": bool(r.get(sol + "AMP.ENABLED")),
        "checkpoint_period": int(r.get(sol + "CHECKPOINT_PERIOD")),
        "reference_world_size": int(r.get(sol + "REFERENCE_WORLD_SIZE")),
    }


def _clip_gradients(r: KeyReader) -> dict[str, Any] | None:
    """SOLVER.CLIP_GRADIENTS as ``{clip_type, clip_value, norm_type}``; None when disabled."""
    clip = "SOLVER.CLIP_GRADIENTS."
    if not r.get(clip + "ENABLED"):
        return None
    r.require(clip + "CLIP_TYPE", lambda v: v in ("value", "norm"), "'value' or 'norm'")
    return {
        "clip_type": r.get(clip + "CLIP_TYPE"),
        "clip_value": float(r.get(clip + "CLIP_VALUE")),
        "norm_type": float(r.get(clip + "NORM_TYPE")),
    }
