"""detectron2's optimizer parameter groups, for whichever ``torch.optim`` class the config names.

detectron2's ``get_default_optimizer_params`` gives every trainable parameter the base learning rate and weight
decay, except that parameters of normalisation layers take ``WEIGHT_DECAY_NORM`` and biases take
``BIAS_LR_FACTOR`` x the base rate and ``WEIGHT_DECAY_BIAS``; frozen parameters are left out. The base rate and
decay are the optimizer's own ``lr`` and ``weight_decay`` (``--model.optimizer.lr``), so there is one place to set
them; the rules derive the groups from them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

# detectron2's norm_module_types; FrozenBatchNorm2d holds buffers, not parameters, so it needs no entry.
NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def parameter_groups(
    model: nn.Module,
    *,
    bias_lr_factor: float = 1.0,
    weight_decay_bias: float | None = None,
    weight_decay_norm: float | None = 0.0,
) -> list[dict]:
    """One group per distinct (learning-rate factor, weight decay) of the trainable parameters, in module order.

    A group's ``lr_factor`` multiplies the optimizer's base ``lr``; ``weight_decay`` is present only where a rule
    overrides the optimizer's own.
    """
    groups: dict[tuple[float, float | None], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad or id(parameter) in seen:
                continue
            seen.add(id(parameter))
            decay = weight_decay_norm if isinstance(module, NORM_TYPES) else None
            factor = 1.0
            if name == "bias":
                factor = bias_lr_factor
                decay = weight_decay_bias if weight_decay_bias is not None else decay
            groups.setdefault((factor, decay), []).append(parameter)
    return [
        {"params": params, "lr_factor": factor, **({} if decay is None else {"weight_decay": decay})}
        for (factor, decay), params in groups.items()
    ]


def build_optimizer(
    optimizer: Callable[[Iterable], torch.optim.Optimizer], groups: list[dict]
) -> torch.optim.Optimizer:
    """The configured optimizer over ``groups``, each group's rate set to its factor x the optimizer's ``lr``."""
    built = optimizer(groups)
    for group in built.param_groups:
        group["lr"] = built.defaults["lr"] * group["lr_factor"]
    return built
