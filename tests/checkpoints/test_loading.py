"""load_trained: our .ckpt needs no config (it records arch and class names); other files need one.
SafeCheckpointIO: Lightning's --ckpt_path goes through the same safe reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_model import tiny_arch

from segmentation import predict
from segmentation.checkpoints.files import CheckpointError, UnsafeCheckpointError
from segmentation.checkpoints.io import SafeCheckpointIO
from segmentation.checkpoints.loading import load_trained
from segmentation.model.config import MaskRCNNConfig
from segmentation.model.mask_rcnn import build_mask_rcnn

TINY_ARCH = tiny_arch(num_classes=2)


def lightning_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """What MaskRCNNModule saves: the network under ``model.``, ``arch`` in the hyper-parameters, class names."""
    torch.manual_seed(0)
    state = build_mask_rcnn(MaskRCNNConfig(**TINY_ARCH)).state_dict()
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in state.items()},
            "hyper_parameters": {"arch": TINY_ARCH, "weights": None},
            "category_names": ["left lung", "right lung"],
            "global_step": 3,
        },
        path,
    )
    return state


def test_our_checkpoint_builds_its_own_model_without_a_config(tmp_path: Path) -> None:
    state = lightning_checkpoint(tmp_path / "last.ckpt")
    model, names, report = load_trained(tmp_path / "last.ckpt")
    assert names == ["left lung", "right lung"]
    assert report.kind == "lightning" and not report.skipped
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_a_file_that_records_no_architecture_needs_a_config(tmp_path: Path) -> None:
    torch.save(build_mask_rcnn(MaskRCNNConfig(**TINY_ARCH)).state_dict(), tmp_path / "model_final.pth")
    with pytest.raises(CheckpointError, match="records no architecture.*--config"):
        load_trained(tmp_path / "model_final.pth")
    _, names, _ = load_trained(tmp_path / "model_final.pth", MaskRCNNConfig(**TINY_ARCH))
    assert names == ["class_1", "class_2"]


def test_predict_without_config_on_our_checkpoint_uses_its_architecture(tmp_path: Path, capfd) -> None:
    lightning_checkpoint(tmp_path / "last.ckpt")
    Image.fromarray(np.full((64, 80), 100, np.uint8)).save(tmp_path / "slice.png")
    args = ["--model.weights", str(tmp_path / "last.ckpt"), "--input", str(tmp_path / "slice.png")]
    predict.main([*args, "--output_dir", str(tmp_path / "out"), "--score_threshold", "0.0"])
    assert "incompatible shapes" not in capfd.readouterr().err
    categories = json.loads((tmp_path / "out" / "images.json").read_text())["categories"]
    assert [c["name"] for c in categories] == ["left lung", "right lung"]


def test_ckpt_path_truncated_is_one_line_naming_the_file(tmp_path: Path) -> None:
    lightning_checkpoint(tmp_path / "last.ckpt")
    data = (tmp_path / "last.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.ckpt: not a readable torch checkpoint") as e:
        SafeCheckpointIO().load_checkpoint(tmp_path / "cut.ckpt")
    assert "\n" not in str(e.value)


def test_ckpt_path_url_is_downloaded_and_read_with_weights_only(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SEGMENTATION_CACHE", str(tmp_path / "cache"))
    lightning_checkpoint(tmp_path / "last.ckpt")
    loaded = SafeCheckpointIO().load_checkpoint((tmp_path / "last.ckpt").as_uri())
    assert loaded["global_step"] == 3
    assert any((tmp_path / "cache").rglob("last.ckpt"))

    torch.save({"state_dict": {}, "payload": Exploit(tmp_path / "pwned")}, tmp_path / "evil.ckpt")
    with pytest.raises(UnsafeCheckpointError, match="evil.ckpt"):
        SafeCheckpointIO().load_checkpoint((tmp_path / "evil.ckpt").as_uri())
    assert not (tmp_path / "pwned").exists()


class Exploit:
    """An object whose unpickling would run code (create a file) if the reader allowed it."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))
