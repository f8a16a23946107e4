"""detectron2's parameter groups and per-tensor gradient clipping, for any optimizer the config names."""

import functools
import json
import re

import pytest
import torch

from segmentation.checkpoints.names import detectron2_names_to_ours
from segmentation.model.config import MaskRCNNConfig
from segmentation.model.mask_rcnn import build_mask_rcnn
from segmentation.training.clipping import GradientClipping, clip_each_tensor
from segmentation.training.optim import build_optimizer, parameter_groups

# the tiny_lung architecture of ../shared/parity (ResNeXt-50 4x4d, FPN 64)
TINY_LUNG = dict(depth=50, num_groups=4, width_per_group=4, res2_out_channels=64, fpn_out_channels=64,
                 box_head_fc_dim=256, mask_head_conv_dim=64)  # fmt: skip


@pytest.fixture(scope="module")
def detectron2_groups(parity_dir):
    return json.loads((parity_dir / "solver_and_augmentation" / "param_groups.json").read_text())


def _solver(overrides: list) -> dict:
    settings = dict(zip(overrides[::2], overrides[1::2], strict=True))
    return {re.sub(r"^(SOLVER|MODEL\.(RESNETS|BACKBONE))\.|^MODEL\.", "", k): v for k, v in settings.items()}


@pytest.mark.parametrize("name", ["defaults_bn", "bias_factor2_bias_wd0_norm_wd0_bn", "norm_wd_1e-5_bn_fpn_bn"])
def test_every_parameter_gets_detectron2s_lr_and_weight_decay(detectron2_groups, name):
    reference = detectron2_groups[name]
    settings = _solver(reference["config_overrides"])
    arch = MaskRCNNConfig(
        **TINY_LUNG, norm=settings["NORM"], freeze_at=settings["FREEZE_AT"], fpn_norm=settings.get("FPN.NORM", "")
    )
    model = build_mask_rcnn(arch)
    defaults = reference["defaults"]
    sgd = functools.partial(
        torch.optim.SGD, lr=defaults["lr"], momentum=defaults["momentum"], weight_decay=defaults["weight_decay"]
    )
    groups = parameter_groups(
        model,
        bias_lr_factor=settings.get("BIAS_LR_FACTOR", 1.0),
        weight_decay_bias=settings.get("WEIGHT_DECAY_BIAS"),
        weight_decay_norm=settings.get("WEIGHT_DECAY_NORM", 0.0),
    )
    optimizer = build_optimizer(sgd, groups)
    names = {id(p): n for n, p in model.named_parameters()}
    ours = {
        names[id(p)]: {"lr": group["lr"], "weight_decay": group["weight_decay"]}
        for group in optimizer.param_groups
        for p in group["params"]
    }
    to_ours = detectron2_names_to_ours(list(reference["trainable"]))
    expected = {to_ours[name]: hyper for name, hyper in reference["trainable"].items()}
    assert ours == expected
    assert len(ours) == sum(p.requires_grad for p in model.parameters())
    frozen = detectron2_names_to_ours(reference["frozen"]) if reference["frozen"] else {}
    assert set(frozen.values()) == {n for n, p in model.named_parameters() if not p.requires_grad}


def test_frozen_parameters_are_left_out():
    model = build_mask_rcnn(MaskRCNNConfig(**TINY_LUNG, norm="BN", freeze_at=2))
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
    reference = detectron2_clipping[name]
    clip_type, clip_value, norm_type = reference["clip"]
    parameters = []
    for key, values in reference["grad_in"].items():
        parameter = torch.nn.Parameter(torch.zeros(reference["grad_shape"][key]))
        parameter.grad = torch.tensor(values).reshape(parameter.shape)
        parameters.append(parameter)
    clip_each_tensor(parameters, GradientClipping(clip_type, clip_value, float(norm_type)))
    for key, parameter in zip(reference["grad_in"], parameters, strict=True):
        expected = torch.tensor(reference["grad_out"][key]).reshape(parameter.shape)
        torch.testing.assert_close(parameter.grad, expected, rtol=1e-7, atol=0)
