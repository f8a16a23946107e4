"""The full-size ResNeXt-101 32x8d FPN and RPN head against detectron2 on seeded random weights."""

from __future__ import annotations

import importlib.util
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segmentation.checkpoints.loading import load_weights
from segmentation.model.config import MaskRCNNConfig
from segmentation.model.mask_rcnn import build_mask_rcnn

pytestmark = pytest.mark.parity

X101 = MaskRCNNConfig(num_classes=80, depth=101, num_groups=32, width_per_group=8, pixel_std=(57.375, 57.12, 58.395))
FEATURE_NAMES = ["0", "1", "2", "3", "pool"]
# detectron2 against itself, 1 vs 2 threads, agrees to 6.3e-6 of each level's std (../shared/parity/tolerances.json).
FEATURE_TOL = 1e-5


def _make_weights(x101_dir: Path, out: Path) -> None:
    spec = importlib.util.spec_from_file_location("x101_make_weights", x101_dir / "make_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    weights = module.make(json.loads((x101_dir / "keys.json").read_text()))
    with out.open("wb") as f:
        pickle.dump({"model": weights, "__author__": "x101 parity fixture"}, f, protocol=4)


def _close(name: str, ours: np.ndarray, ref: np.lib.npyio.NpzFile) -> None:
    std = float(ref[f"{name}_std"])
    assert list(ours.shape) == list(ref[f"{name}_shape"]), name
    c, y, x = ref[f"{name}_pos"].T
    assert np.abs(ours[c, y, x] - ref[f"{name}_vals"]).max() <= FEATURE_TOL * std, name
    assert abs(float(ours.mean(dtype=np.float64)) - float(ref[f"{name}_mean"])) <= FEATURE_TOL * std, name
    assert abs(float(ours.std(dtype=np.float64)) - std) <= FEATURE_TOL * std, name


def test_x101_fpn_and_rpn_head_match_detectron2(parity_dir: Path, tmp_path: Path) -> None:
    x101_dir = parity_dir / "x101"
    weights = tmp_path / "x101_random.pkl"
    _make_weights(x101_dir, weights)
    model = build_mask_rcnn(X101).eval()
    report = load_weights(model, weights)
    weights.unlink()
    assert not report.skipped
    rgb = np.asarray(Image.open(x101_dir / "input.png").convert("RGB"))
    image = torch.from_numpy(np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1)))
    ref = np.load(x101_dir / "expected" / "x101_outputs.npz")
    with torch.no_grad():
        image_list, _ = model.transform([image])
        features = model.backbone(image_list.tensors)
        logits, deltas = model.rpn.head([features[name] for name in FEATURE_NAMES])
    for level, name in enumerate(FEATURE_NAMES, start=2):
        _close(f"p{level}", features[name][0].numpy(), ref)
        _close(f"objectness_p{level}", logits[level - 2][0].numpy(), ref)
        _close(f"deltas_p{level}", deltas[level - 2][0].numpy(), ref)
