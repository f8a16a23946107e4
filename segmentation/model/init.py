"""detectron2's Caffe2 weight initialisers, shared by the backbone and the ROI heads.

detectron2 initialises its convolutions and FC layers with Caffe2's fills rather than PyTorch's defaults; the
parts call them so that a model built from scratch starts from the same distributions as detectron2's.
"""

from __future__ import annotations

from torch import nn


def c2_msra_fill(module: nn.Module) -> None:
    """detectron2's ``c2_msra_fill``: He normal (fan_out, ReLU) weights, zero bias."""
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def c2_xavier_fill(module: nn.Module) -> None:
    """detectron2's ``c2_xavier_fill``: Caffe2 Xavier (uniform, a=1) weights, zero bias."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)
