"""Overlays, training curves and precision-recall curves (``segmentation.visualize``, ``segmentation.plot_metrics``)."""

from __future__ import annotations

import json

import matplotlib  # noqa: F401  (the plots extra, part of dev: fail, not skip, without it)
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util

from segmentation import plot_metrics, visualize


def test_outline_is_the_mask_border() -> None:
    mask = np.zeros((5, 5), dtype=bool)
    mask[1:4, 1:4] = True
    expected = mask.copy()
    expected[2, 2] = False
    assert np.array_equal(visualize.mask_outline(mask), expected)
    assert visualize.mask_outline(np.ones((3, 3), dtype=bool)).sum() == 8  # the image border counts as outside


def test_overlay_fills_outlines_boxes_and_labels() -> None:
    image = np.full((64, 96), 100, dtype=np.uint8)
    mask = np.zeros((1, 64, 96), dtype=bool)
    mask[0, 30:50, 20:60] = True
    picture = visualize.draw_overlay(
        image, np.array([[20.0, 30.0, 60.0, 50.0]]), np.array([0.87]), np.array([1]), mask, ["Lung"], alpha=0.5
    )
    pixels = np.asarray(picture)
    assert picture.mode == "RGB" and pixels.shape == (64, 96, 3)
    color = np.array(visualize.PALETTE[0])
    assert np.abs(pixels[40, 40].astype(int) - (100 + color) / 2).max() <= 1  # alpha blend inside
    assert np.array_equal(pixels[30, 40], color)  # outline / box
    assert np.array_equal(pixels[5, 5], [100, 100, 100])  # untouched outside
    assert (np.abs(pixels[18:30, 20:60].astype(int) - color).sum(axis=2) == 0).mean() > 0.3  # the label's tag


def test_overlay_without_detections_is_the_image() -> None:
    image = np.random.default_rng(0).integers(0, 255, size=(8, 9, 3), dtype=np.uint8)
    empty = np.zeros((0,))
    picture = visualize.draw_overlay(image, np.zeros((0, 4)), empty, empty, np.zeros((0, 8, 9), bool), ["Lung"])
    assert np.array_equal(np.asarray(picture), image)


def write_metrics(path) -> None:
    lines = [
        {"iteration": i, "total_loss": 1.0 / (i + 1), "loss_cls": 0.5 / (i + 1), "loss_mask": float("nan"), "lr": 1e-3}
        for i in (19, 39, 59)
    ]
    lines += [{"iteration": 60, "bbox/AP": 10.0, "segm/AP": 12.0}, {"iteration": 60, "test/segm/AP": 11.0}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_metrics_json_splits_training_and_merges_evaluations(tmp_path) -> None:
    write_metrics(tmp_path / "metrics.json")
    training, evaluations = visualize.read_metrics_json(tmp_path / "metrics.json")
    assert [r["iteration"] for r in training] == [19, 39, 59]
    assert evaluations == {60: {"iteration": 60, "bbox/AP": 10.0, "segm/AP": 12.0, "test/segm/AP": 11.0}}


def coco_pair(tmp_path) -> tuple:
    """Ground truth of two images with one square each; detections: one exact, one shifted by a quarter."""
    images, annotations, results = [], [], []
    for image_id, shift in ((1, 0), (2, 5)):
        mask = np.zeros((40, 40), dtype=np.uint8, order="F")
        mask[10:30, 10:30] = 1
        rle = mask_util.encode(np.asfortranarray(mask))
        images.append({"id": image_id, "height": 40, "width": 40, "file_name": f"{image_id}.png"})
        annotations.append(
            {"id": image_id, "image_id": image_id, "category_id": 1, "iscrowd": 0, "area": 400.0,
             "bbox": [10.0, 10.0, 20.0, 20.0], "segmentation": {"size": [40, 40], "counts": rle["counts"].decode()}}
        )  # fmt: skip
        moved = np.asfortranarray(np.roll(mask, shift, axis=1))
        moved_rle = mask_util.encode(moved)
        results.append(
            {"image_id": image_id, "category_id": 1, "score": 0.9 - 0.1 * image_id, "bbox": [10.0 + shift, 10, 20, 20],
             "segmentation": {"size": [40, 40], "counts": moved_rle["counts"].decode()}}
        )  # fmt: skip
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "x"}]}))
    predictions = tmp_path / "inference" / "predictions.json"
    predictions.parent.mkdir()
    predictions.write_text(json.dumps(results))
    return gt, predictions


def test_precision_recall_at_iou_50_and_75(tmp_path) -> None:
    gt, predictions = coco_pair(tmp_path)
    curves = visualize.precision_recall(predictions, gt)
    for task in ("bbox", "segm"):
        recall, precision = curves[task][0.5]
        assert np.allclose(precision, 1.0)  # IoU 15/25 = 0.6 still matches at 0.5
        recall, precision = curves[task][0.75]
        assert np.allclose(precision[recall <= 0.5], 1.0) and (precision[recall > 0.5] == 0).all()


def test_plot_metrics_cli_writes_both_figures(tmp_path) -> None:
    write_metrics(tmp_path / "metrics.json")
    gt, _ = coco_pair(tmp_path)
    plot_metrics.main([str(tmp_path), "--gt", str(gt)])
    for name in ("curves.png", "pr_curves.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.width > 300


def test_no_detections_is_a_clear_error(tmp_path) -> None:
    gt, predictions = coco_pair(tmp_path)
    predictions.write_text("[]")
    with pytest.raises(ValueError, match="no detections"):
        visualize.precision_recall(predictions, gt)
