"""Reading detectron2's reference outputs (``../shared/parity``) and running our code on the same inputs.

The parity tests (``tests/parity``, ``tests/training/test_optim.py``, ``tests/training/test_schedule.py``) assert on
what these functions return, and ``scripts/parity_report.py`` measures the same outputs to print the README's table,
so the report cannot drift from what the tests check: both build the models, inputs and settings here, and each
keeps its own comparison (the tests assert a tolerance, the report records the worst value).

Why a module under ``tests/`` rather than in the ``segmentation`` package or in ``scripts/``: it knows the layout of
detectron2's fixture folders and the names of the recorded arrays, which no user of the package needs, so the
package stays free of it; and the tests must not depend on the report, while the report is a developer script run
from a checkout, where ``tests/`` is always present. pytest puts ``tests/`` on ``sys.path`` when it loads
``tests/conftest.py``; the report adds it itself.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from segmentation.checkpoints.loading import LoadReport, load_weights
from segmentation.checkpoints.names import detectron2_names_to_ours
from segmentation.data.augmentation import ImageTransform
from segmentation.data.coco import CocoSplit, load_coco_json
from segmentation.data.mapper import map_for_training
from segmentation.model.config import MaskRCNNConfig
from segmentation.model.mask_rcnn import MaskRCNN, build_mask_rcnn
from segmentation.training.clipping import GradientClipping, clip_each_tensor
from segmentation.training.optim import build_optimizer, parameter_groups
from segmentation.training.schedule import Schedule

# The architecture of tiny_lung/config.yaml: ResNeXt-50 4x4d, FPN 64, one class.
TINY_LUNG = MaskRCNNConfig(num_classes=1, depth=50, num_groups=4, width_per_group=4, res2_out_channels=64,
                           stride_in_1x1=False, norm="FrozenBN", freeze_at=0, fpn_out_channels=64, box_head_fc_dim=256,
                           mask_head_conv_dim=64, roi_batch_size_per_image=128,
                           pixel_std=(57.375, 57.12, 58.395))  # fmt: skip
# detectron2's X101-FPN 32x8d of the model zoo, as x101/keys.json lists it.
X101 = MaskRCNNConfig(num_classes=80, depth=101, num_groups=32, width_per_group=8, pixel_std=(57.375, 57.12, 58.395))
SIZE = 512  # tiny_lung's MIN_SIZE_TEST and MAX_SIZE_TEST
# detectron2's FPN level names -> ours
FEATURE_NAMES = {"p2": "0", "p3": "1", "p4": "2", "p5": "3", "p6": "pool"}


def load_tiny_lung(parity_dir: Path, cfg: MaskRCNNConfig = TINY_LUNG) -> MaskRCNN:
    """The tiny_lung model with detectron2's trained weights (``tiny_lung/model_final.pkl``)."""
    model = build_mask_rcnn(cfg)
    load_weights(model, parity_dir / "tiny_lung" / "model_final.pkl")
    return model


def tiny_lung_split(parity_dir: Path, json_name: str = "coco_val_lung.json", folder: str = "val") -> CocoSplit:
    """One split of tiny_lung's dataset, read by our COCO loader."""
    dataset = parity_dir / "tiny_lung" / "dataset"
    return load_coco_json(dataset / json_name, dataset / folder)


def mapped_image(expected: Path, i: int) -> torch.Tensor:
    """The ``i``-th image as detectron2's mapper gave it to the model (recorded grey, repeated to 3 channels)."""
    gray = np.load(expected / "mapped_inputs.npz")[f"image_{i}"]
    return torch.from_numpy(np.stack([gray] * 3))


def fpn_features(model: MaskRCNN, image: torch.Tensor) -> dict[str, np.ndarray]:
    """p2-p6 of one image, by detectron2's level names."""
    with torch.no_grad():
        image_list, _ = model.transform([image])
        features = model.backbone(image_list.tensors)
    return {level: features[name][0].numpy() for level, name in FEATURE_NAMES.items()}


def loss_batch(parity_dir: Path, file_names: list[str]) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """The training images and targets of one of losses.json's fixed batches, mapped at tiny_lung's size."""
    split = tiny_lung_split(parity_dir, "coco_train_lossbatch_lung.json", "train")
    by_name = {Path(r.file_name).name: r for r in split.images}
    images, targets = [], []
    for name in file_names:
        record = by_name[name]
        resize = ImageTransform.resize(record.height, record.width, SIZE, SIZE)
        image, target = map_for_training(record, resize, split.categories)
        images.append(image)
        targets.append(target)
    return images, targets


def load_x101(parity_dir: Path) -> tuple[MaskRCNN, LoadReport]:
    """The X101 in eval mode with the fixture's seeded weights, made by its own ``make_weights.py`` (431 MB, written
    to a temporary file and removed)."""
    x101_dir = parity_dir / "x101"
    spec = importlib.util.spec_from_file_location("x101_make_weights", x101_dir / "make_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = build_mask_rcnn(X101).eval()
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "x101_random.pkl"
        with weights.open("wb") as f:
            state = module.make(json.loads((x101_dir / "keys.json").read_text()))
            pickle.dump({"model": state, "__author__": "x101 parity fixture"}, f, protocol=4)
        report = load_weights(model, weights)
    return model, report


def x101_outputs(model: MaskRCNN, parity_dir: Path) -> dict[str, np.ndarray]:
    """p2-p6 and the RPN head's objectness and deltas of each level for x101/input.png, by the fixture's names."""
    rgb = np.asarray(Image.open(parity_dir / "x101" / "input.png").convert("RGB"))
    image = torch.from_numpy(np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1)))
    names = list(FEATURE_NAMES.values())
    with torch.no_grad():
        image_list, _ = model.transform([image])
        features = model.backbone(image_list.tensors)
        logits, deltas = model.rpn.head([features[name] for name in names])
    outputs = {}
    for level, name in enumerate(names, start=2):
        outputs[f"p{level}"] = features[name][0].numpy()
        outputs[f"objectness_p{level}"] = logits[level - 2][0].numpy()
        outputs[f"deltas_p{level}"] = deltas[level - 2][0].numpy()
    return outputs


# detectron2's SOLVER keys -> our Schedule fields
_SCHEDULE_KEYS = {
    "SOLVER.LR_SCHEDULER_NAME": "name",
    "SOLVER.WARMUP_METHOD": "warmup_method",
    "SOLVER.WARMUP_ITERS": "warmup_iters",
    "SOLVER.WARMUP_FACTOR": "warmup_factor",
    "SOLVER.STEPS": "milestones",
    "SOLVER.GAMMA": "gamma",
    "SOLVER.BASE_LR_END": "base_lr_end",
}


def schedule_from_overrides(overrides: list) -> tuple[Schedule, float, int]:
    """Our schedule, base lr and iteration count for the ``config_overrides`` of one of lr_schedules.json's cases."""
    settings = dict(zip(overrides[::2], overrides[1::2], strict=True))
    fields = {_SCHEDULE_KEYS[k]: v for k, v in settings.items() if k in _SCHEDULE_KEYS}
    if isinstance(fields.get("milestones"), str):  # detectron2's fixture records the tuple as text
        fields["milestones"] = [int(v) for v in fields["milestones"].strip("()").split(",")]
    return Schedule(**fields), settings["SOLVER.BASE_LR"], settings["SOLVER.MAX_ITER"]


def _solver(overrides: list) -> dict[str, Any]:
    """A case's ``config_overrides`` by their last names (``SOLVER.BIAS_LR_FACTOR`` -> ``BIAS_LR_FACTOR``)."""
    settings = dict(zip(overrides[::2], overrides[1::2], strict=True))
    return {re.sub(r"^(SOLVER|MODEL\.(RESNETS|BACKBONE))\.|^MODEL\.", "", k): v for k, v in settings.items()}


def our_parameter_groups(reference: dict) -> tuple[MaskRCNN, dict[str, dict[str, float]]]:
    """The tiny_lung architecture under one of param_groups.json's configs, and the lr and weight decay our SGD
    gives each of its parameters (by our names)."""
    settings = _solver(reference["config_overrides"])
    arch = dataclasses.replace(
        TINY_LUNG, norm=settings["NORM"], freeze_at=settings["FREEZE_AT"], fpn_norm=settings.get("FPN.NORM", "")
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
    names = {id(p): n for n, p in model.named_parameters()}
    ours = {
        names[id(p)]: {"lr": group["lr"], "weight_decay": group["weight_decay"]}
        for group in build_optimizer(sgd, groups).param_groups
        for p in group["params"]
    }
    return model, ours


def detectron2_parameter_groups(reference: dict) -> tuple[dict[str, dict[str, float]], set[str]]:
    """detectron2's lr and weight decay per trainable parameter, and its frozen parameters, by our names."""
    to_ours = detectron2_names_to_ours(list(reference["trainable"]))
    trainable = {to_ours[name]: hyper for name, hyper in reference["trainable"].items()}
    frozen = set(detectron2_names_to_ours(reference["frozen"]).values()) if reference["frozen"] else set()
    return trainable, frozen


def clipped_gradients(reference: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each gradient of one of gradient_clipping.json's cases clipped by us, beside detectron2's clipped one."""
    clip_type, clip_value, norm_type = reference["clip"]
    parameters = []
    for key, values in reference["grad_in"].items():
        parameter = torch.nn.Parameter(torch.zeros(reference["grad_shape"][key]))
        parameter.grad = torch.tensor(values).reshape(parameter.shape)
        parameters.append(parameter)
    clip_each_tensor(parameters, GradientClipping(clip_type, clip_value, float(norm_type)))
    return [
        (parameter.grad, torch.tensor(reference["grad_out"][key]).reshape(parameter.shape))
        for key, parameter in zip(reference["grad_in"], parameters, strict=True)
    ]
