"""The tiny random-weight Mask R-CNN that tests build when they need a whole model quickly, not detectron2's numbers.

ResNet-18, FPN 32 and small heads: a forward pass on a 128 px image takes milliseconds on a CPU. It is defined once
here so that a change to ``MaskRCNNConfig``'s fields is made in one place; a test names only what it needs to be
different (``tiny_arch(num_classes=2)``). It is a plain module, not a fixture, because tests use it at import time
(module constants, module-scoped fixtures, other test modules importing them). pytest puts ``tests/`` on
``sys.path`` when it loads ``tests/conftest.py`` (``tests/`` is no package), so ``from tiny_model import tiny_arch``
works from every test folder.
"""

from __future__ import annotations

from typing import Any

from segmentation.model.config import MaskRCNNConfig

_TINY_ARCH: dict[str, Any] = {
    "num_classes": 1,
    "depth": 18,
    "res2_out_channels": 64,
    "norm": "BN",
    "freeze_at": 0,
    "fpn_out_channels": 32,
    "box_head_fc_dim": 64,
    "mask_head_conv_dim": 16,
    "rpn_pre_nms_topk_test": 200,
    "rpn_post_nms_topk_test": 50,
    "detections_per_image": 5,
}


def tiny_arch(**overrides: Any) -> dict[str, Any]:
    """The tiny architecture as the ``model.arch`` mapping a config file or a checkpoint's hyper-parameters hold."""
    return {**_TINY_ARCH, **overrides}


def tiny_config(**overrides: Any) -> MaskRCNNConfig:
    """The tiny architecture as the ``MaskRCNNConfig`` that ``build_mask_rcnn`` takes."""
    return MaskRCNNConfig(**tiny_arch(**overrides))
