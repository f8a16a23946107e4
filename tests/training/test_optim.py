"""detectron2's parameter groups and per-tensor gradient clipping, for any optimizer the config names."""

import dataclasses
import json

import pytest
import torch
from parity_references import (
    TINY_LUNG,
    clipped_gradients,
    detectron2_parameter_groups,
    our_parameter_groups,
)

from segmentation.model.mask_rcnn import build_mask_rcnn
from segmentation.training.optim import parameter_groups


@pytest.fixture(scope="module")
def detectron2_groups(parity_dir):
    return json.loads((parity_dir / "solver_and_augmentation" / "param_groups.json").read_text())


@pytest.mark.parametrize("name", ["defaults_bn", "bias_factor2_bias_wd0_norm_wd0_bn", "norm_wd_1e-5_bn_fpn_bn"])
def test_every_parameter_gets_detectron2s_lr_and_weight_decay(detectron2_groups, name):
    reference = detectron2_groups[name]
    model, ours = our_parameter_groups(reference)
    expected, frozen = detectron2_parameter_groups(reference)
    assert ours == expected
    assert len(ours) == sum(p.requires_grad for p in model.parameters())
    assert frozen == {n for n, p in model.named_parameters() if not p.requires_grad}


def test_frozen_parameters_are_left_out():
    model = build_mask_rcnn(dataclasses.replace(TINY_LUNG, norm="BN", freeze_at=2))
    trained = {id(p) for group in parameter_groups(model) for p in group["params"]}
    frozen = [n for n, p in model.named_parameters() if id(p) not in trained]
    stem_and_res2 = ("backbone.body.conv1", "backbone.body.bn1", "backbone.body.layer1")
    assert frozen and all(n.startswith(stem_and_res2) for n in frozen)
    assert not any(p.requires_grad for n, p in model.named_parameters() if n in frozen)


@pytest.fixture(scope="module")
def detectron2_clipping(parity_dir):
    return json.loads((parity_dir / "solver_and_augmentation" / "gradient_clipping.json").read_text())


@pytest.mark.parametrize("name", ["value_0.1", "norm_1.0", "norm_inf_0.5"])
def test_each_gradient_tensor_is_clipped_as_detectron2_clips_it(detectron2_clipping, name):
    for ours, expected in clipped_gradients(detectron2_clipping[name]):
        torch.testing.assert_close(ours, expected, rtol=1e-7, atol=0)
