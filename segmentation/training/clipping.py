"""detectron2's gradient clipping (SOLVER.CLIP_GRADIENTS), which clips each parameter tensor on its own.

detectron2's yacs configs clip per parameter: ``value`` clamps every gradient element to ``[-v, v]``, ``norm``
rescales each tensor whose ``NORM_TYPE`` norm exceeds the limit. That is not Lightning's ``gradient_clip_val``,
which clips the global norm of all gradients together; both are available, side by side.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass
class GradientClipping:
    """SOLVER.CLIP_GRADIENTS with ENABLED true.

    Attributes:
        clip_type: CLIP_TYPE, ``value`` or ``norm``.
        clip_value: CLIP_VALUE: the element bound (value) or the norm limit (norm).
        norm_type: NORM_TYPE, the p of the p-norm (``inf`` for the largest element), for ``norm``.
    """

    clip_type: Literal["value", "norm"] = "value"
    clip_value: float = 1.0
    norm_type: float = 2.0


def clip_each_tensor(parameters: Iterable[torch.Tensor], clipping: GradientClipping) -> None:
    """Clip the gradient of every parameter separately, as detectron2's ``maybe_add_gradient_clipping`` does."""
    for parameter in parameters:
        if parameter.grad is None:
            continue
        if clipping.clip_type == "value":
            torch.nn.utils.clip_grad_value_(parameter, clipping.clip_value)
        else:
            torch.nn.utils.clip_grad_norm_(parameter, clipping.clip_value, clipping.norm_type)
