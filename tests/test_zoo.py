"""Every FPN Mask R-CNN of detectron2's model zoo has a config here that builds detectron2's exact architecture."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

from segmentation.checkpoints.names import detectron2_to_torchvision
from segmentation.detectron2_config.keys import UnsupportedConfigError
from segmentation.detectron2_config.settings import from_detectron2_config
from segmentation.model.config import MaskRCNNConfig
from segmentation.model.mask_rcnn import build_mask_rcnn

pytestmark = pytest.mark.parity
ROOT = Path(__file__).resolve().parents[1]
ZOO = [
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x",
    "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x",
    "COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x",
    "LVISv0.5-InstanceSegmentation/mask_rcnn_R_50_FPN_1x",
    "LVISv0.5-InstanceSegmentation/mask_rcnn_R_101_FPN_1x",
    "LVISv0.5-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_1x",
    "Cityscapes/mask_rcnn_R_50_FPN",
]


def _make_zoo_configs():
    spec = importlib.util.spec_from_file_location("make_zoo_configs", ROOT / "scripts" / "make_zoo_configs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_zoo_folder_holds_every_fpn_mask_rcnn_of_detectron2s_zoo(parity_dir: Path) -> None:
    assert sorted(_make_zoo_configs().zoo_names(parity_dir / "zoo")) == sorted(ZOO)
    assert sorted(
        str(p.relative_to(ROOT / "configs" / "zoo"))[:-5] for p in (ROOT / "configs" / "zoo").rglob("*.yaml")
    ) == sorted(ZOO)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_config_is_the_translation_of_detectron2s_resolved_config(parity_dir: Path, name: str) -> None:
    written = (ROOT / "configs" / "zoo" / f"{name}.yaml").read_text()
    assert written == _make_zoo_configs().zoo_config(parity_dir / "zoo", name), "rerun scripts/make_zoo_configs.py"
    config = yaml.safe_load(written)
    index = json.loads((parity_dir / "zoo" / "index.json").read_text())
    assert config["model"]["weights"] == index[name]["weights_url"]  # the trained zoo model, not ImageNet


@pytest.mark.parametrize("name", ZOO)
def test_zoo_architecture_takes_every_detectron2_state_dict_name_and_shape(parity_dir: Path, name: str) -> None:
    arch = yaml.safe_load((ROOT / "configs" / "zoo" / f"{name}.yaml").read_text())["model"]["arch"]
    model = build_mask_rcnn(MaskRCNNConfig(**arch))
    shapes = json.loads((parity_dir / "zoo" / name / "state_dict_shapes.json").read_text())
    index = json.loads((parity_dir / "zoo" / "index.json").read_text())
    assert len(shapes) == index[name]["state_dict_entries"]
    seeded = {k: torch.zeros(v) for k, v in shapes.items()}
    ours = {k: list(v.shape) for k, v in detectron2_to_torchvision(seeded).items()}
    wanted = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == wanted


@pytest.mark.parametrize(
    ("key", "value"), [("MODEL.ROI_HEADS.NAME", "Res5ROIHeads"), ("MODEL.RESNETS.RES5_DILATION", 2)]
)
def test_c4_and_dc5_models_are_refused_by_name(parity_dir: Path, key: str, value: object) -> None:
    cfg = yaml.safe_load((parity_dir / "zoo" / ZOO[0] / "config.yaml").read_text())
    section = cfg
    *path, last = key.split(".")
    for part in path:
        section = section[part]
    section[last] = value
    with pytest.raises(UnsupportedConfigError, match=f"{key} = {value!r}"):
        from_detectron2_config(cfg)
