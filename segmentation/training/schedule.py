"""detectron2's learning-rate schedules, as the multiplier of the base rate at each iteration.

detectron2 builds them from fvcore's parameter schedulers (``build_lr_scheduler``): ``WarmupMultiStepLR`` (a step
function of the milestones) or ``WarmupCosineLR`` (half a cosine from 1 to ``BASE_LR_END / BASE_LR``), inside a
warmup (``linear`` from ``WARMUP_FACTOR`` times the schedule's start to the schedule's value at the end of the
warmup, or ``constant`` at ``WARMUP_FACTOR``), evaluated at ``iteration / MAX_ITER`` and stepped after every
iteration, also those whose update the fp16 grad scaler skipped. The arithmetic below is fvcore's, operation for
operation, so every learning rate is detectron2's to the last bit or nearly (``tests/training/test_schedule.py``).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from pytorch_lightning.utilities import rank_zero_warn

from segmentation.errors import ConfigError

# fvcore's ParamScheduler.WHERE_EPSILON: keeps float rounding of iteration / max_iter from landing before a boundary
_WHERE_EPSILON = 1e-6


@dataclass
class Schedule:
    """The schedule options, named after detectron2's SOLVER keys.

    Attributes:
        name: SOLVER.LR_SCHEDULER_NAME, ``WarmupMultiStepLR`` or ``WarmupCosineLR``.
        warmup_method: SOLVER.WARMUP_METHOD, ``linear`` or ``constant``.
        warmup_iters: SOLVER.WARMUP_ITERS.
        warmup_factor: SOLVER.WARMUP_FACTOR, the multiplier at iteration 0.
        milestones: SOLVER.STEPS (WarmupMultiStepLR); those beyond the last step are dropped with a warning.
        gamma: SOLVER.GAMMA, the factor at each milestone.
        base_lr_end: SOLVER.BASE_LR_END, the rate the cosine ends at (WarmupCosineLR).
    """

    name: Literal["WarmupMultiStepLR", "WarmupCosineLR"] = "WarmupMultiStepLR"
    warmup_method: Literal["linear", "constant"] = "linear"
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    base_lr_end: float = 0.0


def lr_multiplier(schedule: Schedule, *, base_lr: float, max_iter: int) -> Callable[[int], float]:
    """The multiplier of ``base_lr`` for the optimizer step taken at 0-based iteration ``i``, for ``LambdaLR``."""
    if max_iter <= 0:
        raise ConfigError("the learning-rate schedule needs --trainer.max_steps (detectron2's SOLVER.MAX_ITER)")
    main = _main_schedule(schedule, base_lr=base_lr, max_iter=max_iter)
    warmup_length = min(schedule.warmup_iters / max_iter, 1.0)
    end_value = main(warmup_length)
    start_value = schedule.warmup_factor * main(0.0)

    def warmup(where: float) -> float:
        if schedule.warmup_method == "constant":
            return start_value
        return where * end_value + (1 - where) * start_value

    def multiplier(iteration: int) -> float:
        where = iteration / max_iter
        if where + _WHERE_EPSILON > warmup_length:  # fvcore's CompositeParamScheduler: the main schedule, unscaled
            return main(where)
        return warmup(where / warmup_length)

    return multiplier


def _main_schedule(schedule: Schedule, *, base_lr: float, max_iter: int) -> Callable[[float], float]:
    if schedule.name == "WarmupCosineLR":
        end_value = schedule.base_lr_end / base_lr
        if not 0.0 <= end_value <= 1.0:
            raise ConfigError(f"base_lr_end {schedule.base_lr_end} must lie between 0 and the base lr {base_lr}")
        return lambda where: end_value + 0.5 * (1.0 - end_value) * (1 + math.cos(math.pi * where))
    if schedule.name != "WarmupMultiStepLR":
        raise ConfigError(f"unknown schedule {schedule.name!r}: WarmupMultiStepLR or WarmupCosineLR")
    milestones = sorted(m for m in schedule.milestones if m <= max_iter)
    if len(milestones) != len(schedule.milestones):
        rank_zero_warn(
            "SOLVER.STEPS contains values larger than SOLVER.MAX_ITER. These values will be ignored."
            f" (milestones {schedule.milestones}, max_steps {max_iter})"
        )
    values = [schedule.gamma**k for k in range(len(milestones) + 1)]
    return lambda where: values[bisect_right(milestones, int((where + _WHERE_EPSILON) * max_iter))]
