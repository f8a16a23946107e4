"""ONNX export: the graph gives the PyTorch model's detections on images other than the one it was traced on."""

from __future__ import annotations

import numpy as np
import onnxruntime  # the dev extra installs it: a missing runtime must fail, not skip
import pytest
import torch
from tiny_model import tiny_config

from segmentation import export
from segmentation.model.mask_rcnn import build_mask_rcnn

TINY_ARCH = tiny_config(num_classes=2, detections_per_image=8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = build_mask_rcnn(TINY_ARCH).eval()
    images = [torch.from_numpy(np.random.default_rng(s).integers(0, 255, (3, 128, 128))).float() for s in range(3)]
    path = export.export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny.onnx", images[0])
    return model, path, images


def test_onnx_detections_match_pytorch_on_other_images(exported) -> None:
    model, path, images = exported
    comparisons = export.compare_with_onnxruntime(model, path, images)
    assert all(c.same for c in comparisons), comparisons
    assert all(c.torch_count > 0 for c in comparisons)


def _top_score(model, image: torch.Tensor) -> float:
    with torch.no_grad():
        (out,) = model([image])
    return float(out["scores"].max()) if len(out["scores"]) else 0.0


def test_an_image_without_detections_gives_empty_outputs(exported, tmp_path) -> None:
    # The graph records the score threshold as a constant when traced, so setting it on the PyTorch model afterwards
    # does not reach the graph: export a second graph with a threshold between the best score on images[0] and on
    # images[2], trace it on images[2] (it detects there) and run the graph itself on images[0], where nothing passes.
    model, _, images = exported
    low, high = _top_score(model, images[0]), _top_score(model, images[2])
    assert low < high, "the fixture's images no longer separate by top score"
    model.roi_heads.score_thresh = (low + high) / 2
    try:
        path = export.export_onnx(model, tmp_path / "high_threshold.onnx", images[2])
        with torch.no_grad():
            (pytorch_out,) = model([images[0]])
        comparisons = export.compare_with_onnxruntime(model, path, [images[2], images[0]])
    finally:
        model.roi_heads.score_thresh = TINY_ARCH.score_thresh_test
    assert len(pytorch_out["boxes"]) == 0
    assert all(c.same for c in comparisons), comparisons
    assert comparisons[0].onnx_count > 0

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, labels, scores, masks = session.run(export.OUTPUT_NAMES, {"image": images[0].numpy()})
    assert boxes.shape == (0, 4) and boxes.dtype == np.float32
    assert labels.shape == (0,) and labels.dtype == np.int64
    assert scores.shape == (0,) and scores.dtype == np.float32
    assert masks.shape == (0, 128, 128) and masks.dtype == np.uint8


def test_export_leaves_the_model_as_it_was(exported, tmp_path) -> None:
    model, _, images = exported
    with torch.no_grad():
        before = model([images[1]])[0]
        export.export_onnx(model, tmp_path / "again.onnx", images[0])
        after = model([images[1]])[0]
    assert not model.training
    assert before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)


def test_a_sample_without_detections_is_refused(tmp_path) -> None:
    model = build_mask_rcnn(TINY_ARCH).eval()
    model.roi_heads.score_thresh = 1.0
    with pytest.raises(ValueError, match="detects nothing"):
        export.export_onnx(model, tmp_path / "x.onnx", torch.zeros(3, 64, 64))
