"""onnxruntime and OpenVINO give PyTorch's detections at image sizes other than the one the graph was traced on."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnxruntime  # noqa: F401  the dev extra installs both runtimes: a missing one must fail, not skip
import openvino  # noqa: F401
import pytest
import torch
import yaml
from PIL import Image
from test_export import TINY_ARCH  # noqa: E402  (tests/ is on sys.path via rootdir conftest)

from segmentation import Predictor, predict
from segmentation.errors import ConfigError
from segmentation.inference import graph_cache
from segmentation.inference.runtimes import compare_detections
from segmentation.model.mask_rcnn import build_mask_rcnn

SIZES = {"min_size": 128, "max_size": 192}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    torch.save(build_mask_rcnn(TINY_ARCH).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    """Noise RGB images whose resized sizes differ (128 x 171 and 192 x 128): the graph must be size-free."""
    return [np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8) for seed, shape in
            ((1, (96, 128, 3)), (2, (150, 100, 3)))]  # fmt: skip


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SEGMENTATION_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def assert_same_detections(expected: dict, got: dict) -> None:
    agreement = compare_detections(expected, got)
    assert agreement.same() and agreement.count > 0, agreement
    assert got["masks"].shape == expected["masks"].shape and got["masks"].dtype == bool
    np.testing.assert_allclose(got["scores"], expected["scores"], atol=1e-3)
    np.testing.assert_array_equal(got["class_names"], expected["class_names"])


def test_agreement_counts_a_missing_detection_and_a_moved_box_but_not_a_swap() -> None:
    boxes = np.array([[10.0, 10.0, 50.0, 50.0], [30.0, 5.0, 60.0, 40.0]])
    masks = np.zeros((2, 64, 64), bool)
    masks[0, 10:50, 10:50] = masks[1, 5:40, 30:60] = True
    two = {"boxes": boxes, "scores": np.array([0.9, 0.9]), "labels": np.array([1, 1]), "masks": masks}
    assert compare_detections(two, two).same()
    swapped = {k: v[::-1] for k, v in two.items()}  # near-tied scores may come out in either order
    assert compare_detections(two, swapped).same()
    assert not compare_detections(two, {k: v[:1] for k, v in two.items()}).same()
    moved = {**two, "boxes": boxes + 0.5}
    assert compare_detections(two, moved).min_box_iou < 0.999 and not compare_detections(two, moved).same()
    relabelled = {**two, "labels": np.array([1, 2])}
    assert not compare_detections(two, relabelled).same()


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_runtime_detections_equal_pytorch_at_two_sizes(runtime, weights, images, cache) -> None:
    reference = Predictor(weights, TINY_ARCH, **SIZES)
    predictor = Predictor(weights, TINY_ARCH, runtime=runtime, **SIZES)
    for image in images:
        assert_same_detections(reference(image), predictor(image))
    (graph,) = (cache / "graphs").glob("*.onnx")  # exported once, on the first image
    assert graph == graph_cache.graph_path(weights, TINY_ARCH)
    again = Predictor(graph, runtime=runtime, **SIZES)  # the graph given directly, class names from its metadata
    assert again.class_names == reference.class_names
    assert_same_detections(reference(images[1]), again(images[1]))


def test_predict_cli_with_a_runtime_writes_pytorch_s_predictions(weights, images, tmp_path) -> None:
    config = tmp_path / "tiny.yaml"
    arch = json.loads(json.dumps(dataclasses.asdict(TINY_ARCH)))
    config.write_text(yaml.safe_dump({"model": {"arch": arch}, "data": {"min_size_test": 128, "max_size_test": 192}}))
    Image.fromarray(images[1]).save(tmp_path / "a.png")
    results = {}
    for runtime in ("torch", "onnxruntime"):
        predict.main(["--config", str(config), "--model.weights", str(weights), "--input", str(tmp_path / "a.png"),
                      "--output_dir", str(tmp_path / runtime), "--runtime", runtime, "--score_threshold", "0.0",
                      "--device", "cpu"])  # fmt: skip
        results[runtime] = json.loads((tmp_path / runtime / "predictions.json").read_text())
    assert len(results["onnxruntime"]) == len(results["torch"]) > 0
    for a, b in zip(results["torch"], results["onnxruntime"], strict=True):
        assert a["category_id"] == b["category_id"]
        np.testing.assert_allclose(a["bbox"], b["bbox"], atol=0.05)


def test_unknown_runtime_names_the_choices(weights) -> None:
    with pytest.raises(ConfigError, match="onnxruntime, openvino"):
        Predictor(weights, TINY_ARCH, runtime="tensorrt")
