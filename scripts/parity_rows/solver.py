"""Rows about the solver: the learning rate of every iteration, parameter groups and gradient clipping."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from parity_references import (
    clipped_gradients,
    detectron2_parameter_groups,
    our_parameter_groups,
    schedule_from_overrides,
)

from segmentation.training.schedule import lr_multiplier

from .table import CLIP_RTOL, Row, exact_row, fmt

SCHEDULES = ("seed_recipe_multistep", "multistep_constant_warmup", "cosine_linear_warmup", "cosine_base_lr_end")
PARAM_GROUP_CONFIGS = ("defaults_bn", "bias_factor2_bias_wd0_norm_wd0_bn", "norm_wd_1e-5_bn_fpn_bn")
CLIPPINGS = ("value_0.1", "norm_1.0", "norm_inf_0.5")


def _references(parity_dir: Path, name: str) -> dict:
    return json.loads((parity_dir / "solver_and_augmentation" / name).read_text())


def lr_schedules(parity_dir: Path) -> Row:
    """The learning rate of every iteration of detectron2's 4 recorded schedules (tests/training/test_schedule.py)."""
    references = _references(parity_dir, "lr_schedules.json")
    worst = 0.0
    for name in SCHEDULES:
        schedule, base_lr, max_iter = schedule_from_overrides(references[name]["config_overrides"])
        multiplier = lr_multiplier(schedule, base_lr=base_lr, max_iter=max_iter)
        expected = references[name]["lr_at_iteration"]
        if len(expected) != max_iter:
            worst = math.inf
            continue
        worst = max(worst, max(abs(base_lr * multiplier(i) - lr) for i, lr in enumerate(expected)))
    comparison = f"learning rate of every iteration, {len(SCHEDULES)} schedules (`solver_and_augmentation/`)"
    text = "identical" if worst == 0 else f"max {fmt(worst)} off"
    return exact_row("lr_schedules", comparison, "max_abs_diff", worst, text)


def param_groups(parity_dir: Path) -> Row:
    """lr and weight decay of every trainable parameter, 3 configs (tests/training/test_optim.py)."""
    references = _references(parity_dir, "param_groups.json")
    mismatches = 0
    for name in PARAM_GROUP_CONFIGS:
        model, ours = our_parameter_groups(references[name])
        expected, frozen = detectron2_parameter_groups(references[name])
        mismatches += sum(ours.get(n) != hyper for n, hyper in expected.items()) + len(set(ours) - set(expected))
        mismatches += len(frozen ^ {n for n, p in model.named_parameters() if not p.requires_grad})
        mismatches += abs(len(ours) - sum(p.requires_grad for p in model.parameters()))
    comparison = f"parameter groups (lr, weight decay per parameter), {len(PARAM_GROUP_CONFIGS)} configs"
    text = "identical" if mismatches == 0 else f"{mismatches} parameters differ"
    return exact_row("param_groups", comparison, "mismatches", float(mismatches), text)


def gradient_clipping(parity_dir: Path) -> Row:
    """Per-tensor clipping by value, L2 norm and inf norm, as the largest relative difference per element."""
    references = _references(parity_dir, "gradient_clipping.json")
    worst = 0.0
    for name in CLIPPINGS:
        for ours, expected in clipped_gradients(references[name]):
            diff = (ours - expected).abs()
            # torch.testing.assert_close(rtol, atol=0) accepts |diff| <= rtol * |expected|
            ratio = torch.where(diff == 0, 0.0, diff / expected.abs())
            worst = max(worst, float(ratio.max()))
    return Row(
        "gradient_clipping",
        "per-tensor gradient clipping (value, L2 norm, inf norm)",
        {"relative": worst},
        {"relative": CLIP_RTOL},
        "identical" if worst == 0 else f"within {fmt(worst)} relative",
        f"{fmt(CLIP_RTOL)} relative",
    )
