"""detectron2's ``WarmupMultiStepLR`` as a plain function of the iteration.

The factor multiplies the base learning rate for the optimizer step taken at 0-based iteration ``step``. It is
stepped after every iteration, also those whose update the fp16 grad scaler skipped, exactly as detectron2 does.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence


def warmup_multistep_factor(
    step: int,
    *,
    warmup_iters: int = 1000,
    warmup_factor: float = 0.001,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
) -> float:
    """Learning-rate multiplier at ``step``: linear warmup from ``warmup_factor``, then ``gamma`` per milestone.

    detectron2 drops milestones beyond MAX_ITER before building the schedule; callers pass only those that occur.
    """
    factor = gamma ** bisect_right(sorted(milestones), step)
    if step < warmup_iters:
        alpha = step / warmup_iters
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor
