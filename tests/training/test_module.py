"""MaskRCNNModule: how a fine-tune starts (initial weights) and what the optimizer trains."""

import dataclasses
import functools
import json

import numpy as np
import torch
from PIL import Image

from segmentation.data.datamodule import CocoDataModule
from segmentation.model.config import MaskRCNNConfig
from segmentation.training.module import MaskRCNNModule

TINY = MaskRCNNConfig(depth=18, num_groups=1, width_per_group=64, res2_out_channels=64, stem_out_channels=64,
                      fpn_out_channels=16, box_head_fc_dim=32, mask_head_conv_dim=8, freeze_at=2)  # fmt: skip


def test_backbone_weights_initialise_only_the_backbone(tmp_path):
    donor = MaskRCNNModule(TINY)
    imagenet = {name: torch.full_like(value, 0.5) for name, value in donor.model.backbone.body.state_dict().items()}
    imagenet["fc.weight"] = torch.zeros(1000, 8)  # an ImageNet classifier head, which must be ignored
    torch.save(imagenet, tmp_path / "resnet18_imagenet.pth")

    module = MaskRCNNModule(TINY, backbone_weights=str(tmp_path / "resnet18_imagenet.pth"))
    before = {name: value.clone() for name, value in module.model.state_dict().items()}
    module.load_initial_weights()
    after = module.model.state_dict()

    for name, value in after.items():
        if name.startswith("backbone.body.") and "num_batches_tracked" not in name:
            assert torch.all(value == 0.5), name
        else:
            assert torch.equal(value, before[name]), name


def test_optimizer_trains_exactly_the_unfrozen_parameters():
    module = MaskRCNNModule(TINY, optimizer=functools.partial(torch.optim.Adam, lr=1e-4))
    trainer = type("T", (), {"max_steps": 10})()
    module.trainer = trainer  # configure_optimizers only reads max_steps
    optimizer = module.configure_optimizers()["optimizer"]
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    frozen = [n for n, p in module.model.named_parameters() if id(p) not in trained]
    assert frozen and all(
        n.startswith(("backbone.body.conv1", "backbone.body.bn1", "backbone.body.layer1")) for n in frozen
    )
    assert all(group["lr"] == 1e-4 * 0.001 for group in optimizer.param_groups)  # warmup starts at factor 0.001


def test_the_evaluators_score_against_the_json_the_datamodule_already_read(tmp_path, monkeypatch):
    """The val json is parsed once: the datamodule's pass hands its json object to the evaluator (issue 13)."""
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    gt = {
        "images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 4, 4], "area": 16, "iscrowd": 0,
                         "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]]}],
        "categories": [{"id": 7, "name": "lung"}],
    }  # fmt: skip
    (tmp_path / "val.json").write_text(json.dumps(gt))
    datamodule = CocoDataModule(val_json=str(tmp_path / "val.json"), val_images=str(tmp_path), num_workers=0)
    module = MaskRCNNModule(dataclasses.replace(TINY, num_classes=1))
    module.trainer = type("T", (), {"datamodule": datamodule})()
    parsed: list[str] = []
    json_load = json.load
    monkeypatch.setattr(json, "load", lambda file, **kw: parsed.append(file.name) or json_load(file, **kw))

    module.setup("validate")

    assert parsed == [str(tmp_path / "val.json")]
    assert module._evaluators["val"].category_names == {7: "lung"}
