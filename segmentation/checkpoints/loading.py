"""Load weights into our Mask R-CNN strictly, and build a trained model from a checkpoint for every command.

``load_weights`` only lets the class-dependent predictor tensors differ (as detectron2 skips them when NUM_CLASSES
changes); any other difference is an error listing every offending key. ``load_trained`` is the one way commands
and the Python API get a trained network: our Lightning ``.ckpt`` records its architecture and class names, so it
needs no config; a detectron2 ``.pkl``/``.pth`` does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from segmentation.checkpoints.files import CheckpointError, read_checkpoint, read_lightning_record, resolve
from segmentation.checkpoints.names import BODY_PREFIX, naming, to_our_names
from segmentation.errors import ConfigError

if TYPE_CHECKING:
    from segmentation.model.config import MaskRCNNConfig
    from segmentation.model.mask_rcnn import MaskRCNN

logger = logging.getLogger(__name__)

# The tensors whose first dimension is the number of classes; the only ones allowed to differ in shape.
PREDICTOR_KEYS = frozenset(
    f"roi_heads.{name}.{kind}"
    for name in ("box_predictor.cls_score", "box_predictor.bbox_pred", "mask_predictor.mask_fcn_logits")
    for kind in ("weight", "bias")
)


@dataclass(frozen=True)
class LoadReport:
    """What ``load_weights`` did.

    Attributes:
        source: the source as given (path or URL).
        path: the local file that was read.
        kind: the file's container: ``detectron2-pkl`` (model zoo), ``detectron2-pth`` (detectron2 training
            output), ``lightning`` (our ``.ckpt``), ``state_dict`` (a bare torch state dict) or ``pickle``
            (a Caffe2 / plain pickle of arrays).
        names: the parameter naming found inside: ``detectron2``, ``torchvision`` (ours), ``resnet``
            (torchvision/timm ImageNet classifier) or ``caffe2``.
        loaded: model keys that received a tensor from the file.
        skipped: model keys whose tensor differs only by the number of classes; they keep their initialisation.
        ignored: file entries deliberately not used (detectron2's pixel mean/std and anchors, a classifier's
            ``fc``, everything outside the body when ``backbone_only``).
    """

    source: str
    path: Path
    kind: str
    names: str
    loaded: list[str]
    skipped: list[str]
    ignored: list[str]


def _differs_only_in_classes(key: str, in_file: torch.Size, in_model: torch.Size) -> bool:
    return key in PREDICTOR_KEYS and len(in_file) == len(in_model) and in_file[1:] == in_model[1:]


def _compare(state: Mapping[str, torch.Tensor], wanted: Mapping[str, torch.Tensor], what: str) -> list[str]:
    """The predictor keys to skip (class count differs); raise listing every other difference."""
    unexpected = sorted(set(state) - set(wanted))
    missing = sorted(k for k in wanted if k not in state and not k.endswith("num_batches_tracked"))
    skipped, mismatched = [], []
    for key in sorted(set(state) & set(wanted)):
        in_file, in_model = state[key].shape, wanted[key].shape
        if in_file == in_model:
            continue
        if _differs_only_in_classes(key, in_file, in_model):
            logger.warning(
                "Skip loading parameter '%s' to the model due to incompatible shapes: %s in the checkpoint but %s "
                "in the model (a different number of classes); it keeps its initialisation.",
                key,
                tuple(in_file),
                tuple(in_model),
            )
            skipped.append(key)
        else:
            mismatched.append(f"{key}: {tuple(in_file)} in the file, {tuple(in_model)} in the model")
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing from the file: {', '.join(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} not in the model: {', '.join(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} with other shapes: {'; '.join(mismatched)}")
    if problems:
        raise CheckpointError(f"cannot load {what} into the model; " + " | ".join(problems))

    return skipped


def load_weights(model: torch.nn.Module, source: str | Path, *, backbone_only: bool = False) -> LoadReport:
    """Load a weights file into ``model`` (torchvision ``MaskRCNN`` names), strictly.

    Args:
        model: the network; its ``state_dict()`` names are the target.
        source: anything ``resolve`` accepts: a detectron2 model-zoo ``.pkl`` or training ``.pth``, our Lightning
            ``.ckpt`` or exported state dict, or (with ``backbone_only``) an ImageNet ResNet/ResNeXt from
            torchvision, timm or Caffe2/detectron2 ``ImageNetPretrained``.
        backbone_only: load only ``backbone.body.*`` (ImageNet initialisation) and leave the rest of the model
            as it is; entries of a full detector checkpoint outside the body are ignored.

    Returns:
        A ``LoadReport``. Predictor tensors whose shape differs only in the number of classes are skipped, logged
        like detectron2 does, and keep the model's initialisation.

    Raises:
        CheckpointError: listing every missing key (``num_batches_tracked`` excepted), every unexpected key and
            every other shape mismatch; nothing is loaded then.
    """
    path = resolve(source)
    raw, kind = read_checkpoint(path)
    names = naming(list(raw))
    if names in ("resnet", "caffe2") and not backbone_only:
        raise CheckpointError(
            f"{path} holds only an ImageNet {names} backbone, not a detector; load it with backbone_only=True"
        )
    state, ignored = to_our_names(raw, names)

    model_state = model.state_dict()
    wanted = {k: v for k, v in model_state.items() if not backbone_only or k.startswith(BODY_PREFIX)}
    if backbone_only:
        ignored += sorted(k for k in state if not k.startswith(BODY_PREFIX))
        state = {k: v for k, v in state.items() if k.startswith(BODY_PREFIX)}
    ignored += sorted(k for k in state if k.endswith("num_batches_tracked") and k not in wanted)
    state = {k: v for k, v in state.items() if k in wanted or not k.endswith("num_batches_tracked")}
    if names == "caffe2":
        _fill_frozen_bn_statistics(state, wanted)

    skipped = _compare(state, wanted, f"{path} ({kind}, {names} names)")
    to_load = {k: v for k, v in state.items() if k not in skipped}
    model.load_state_dict(to_load, strict=False)
    logger.info("Loaded %d tensors from %s (%s, %s names)", len(to_load), path, kind, names)
    return LoadReport(
        source=str(source),
        path=path,
        kind=kind,
        names=names,
        loaded=sorted(to_load),
        skipped=skipped,
        ignored=ignored,
    )


def _fill_frozen_bn_statistics(state: dict[str, torch.Tensor], wanted: Mapping[str, torch.Tensor]) -> None:
    """Caffe2 ImageNet models store BN as an affine scale/bias only.

    detectron2's FrozenBatchNorm2d loads such (version-less) checkpoints with running_mean 0 and running_var 1,
    so the layer computes ``x * weight / sqrt(1 + eps) + bias``; we fill the same values.
    """
    for key, target in wanted.items():
        prefix, _, stat = key.rpartition(".")
        if stat in ("running_mean", "running_var") and key not in state and f"{prefix}.weight" in state:
            state[key] = torch.zeros_like(target) if stat == "running_mean" else torch.ones_like(target)


def load_trained(weights: str | Path, config: MaskRCNNConfig | None = None) -> tuple[MaskRCNN, list[str], LoadReport]:
    """Build the network and load trained weights into it.

    Args:
        weights: anything ``resolve`` accepts: our Lightning ``.ckpt``, a detectron2 ``.pkl``/``.pth``, a state dict.
        config: the architecture. Without it the one recorded in our ``.ckpt`` (its hyper-parameters) is used;
            other files record none and need it.

    Returns:
        The model (eval mode, CPU), one class name per foreground class (those the ``.ckpt`` saved, else
        ``class_1`` ... ``class_K``) and the ``LoadReport``.
    """
    from segmentation.model.config import MaskRCNNConfig
    from segmentation.model.mask_rcnn import build_mask_rcnn

    path = resolve(weights)
    record = read_lightning_record(path)
    if config is None:
        if record is None or not isinstance(record.get("arch"), Mapping):
            raise CheckpointError(
                f"{path} records no architecture (not one of our Lightning checkpoints); pass its --config"
            )
        config = MaskRCNNConfig(**record["arch"])
    model = build_mask_rcnn(config)
    report = load_weights(model, path)
    names = list((record or {}).get("category_names") or [])
    if len(names) != config.num_classes:
        names = [f"class_{k}" for k in range(1, config.num_classes + 1)]
    return model.eval(), [str(n) for n in names], report


def load_for_command(command: str, weights: str | None, config: MaskRCNNConfig | None) -> tuple[MaskRCNN, list[str]]:
    """``load_trained`` for ``segmentation.<command>``: ``--model.weights`` is required; ``config`` None when the
    user gave no ``--config`` (our ``.ckpt`` then supplies the architecture)."""
    if weights is None:
        raise ConfigError(f"segmentation.{command}: --model.weights is required (the config has none)")
    model, names, _ = load_trained(weights, config)
    return model, names
