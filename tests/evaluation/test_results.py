"""Our results records must be detectron2's ``instances_to_coco_json`` records and load in pycocotools."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from pycocotools.coco import COCO

from segmentation.data.rle import write_json_atomic
from segmentation.evaluation.results import detections_to_coco_results


def _detections() -> dict[str, torch.Tensor]:
    masks = torch.zeros((2, 6, 8), dtype=torch.bool)
    masks[0, 1:4, 2:5] = True
    masks[1, 0:6, 7] = True
    return {
        "boxes": torch.tensor([[2.1, 1.3, 5.7, 4.2], [6.9, 0.0, 8.0, 6.0]], dtype=torch.float32),
        "scores": torch.tensor([0.91, 0.3], dtype=torch.float32),
        "labels": torch.tensor([2, 1]),
        "masks": masks,
    }


def test_records_have_detectron2s_format_and_values():
    d = _detections()
    records = detections_to_coco_results(7, d, {1: 4, 2: 9})
    assert [list(r) for r in records] == [["image_id", "category_id", "bbox", "score", "segmentation"]] * 2
    assert [r["category_id"] for r in records] == [9, 4]
    # XYXY -> XYWH in float32, as detectron2's BoxMode.convert on the float32 boxes
    boxes = d["boxes"].numpy().copy()
    boxes[:, 2:] -= boxes[:, :2]
    assert [r["bbox"] for r in records] == boxes.tolist()
    assert [r["score"] for r in records] == d["scores"].tolist()
    for record, mask in zip(records, d["masks"].numpy(), strict=True):
        expected = mask_utils.encode(np.array(mask[:, :, None], order="F", dtype="uint8"))[0]
        assert record["segmentation"] == {"size": [6, 8], "counts": expected["counts"].decode("utf-8")}
    json.dumps(records)  # plain json types only


def test_records_load_with_pycocotools_and_round_trip(tmp_path):
    d = _detections()
    gt = {
        "images": [{"id": 7, "height": 6, "width": 8}],
        "annotations": [],
        "categories": [{"id": 4, "name": "a"}, {"id": 9, "name": "b"}],
    }
    records = detections_to_coco_results(7, d, {1: 4, 2: 9})
    path = tmp_path / "out" / "coco_instances_results.json"
    write_json_atomic(path, records)
    assert json.loads(path.read_text()) == records
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        loaded = coco.loadRes(str(path))
    for ann, mask in zip(loaded.loadAnns(loaded.getAnnIds()), d["masks"].numpy(), strict=True):
        assert np.array_equal(loaded.annToMask(ann), mask.astype(np.uint8))


def test_empty_detections_give_no_records():
    d = {k: v[:0] for k, v in _detections().items()}
    assert detections_to_coco_results(1, d, {1: 1, 2: 2}) == []


def test_write_json_atomic_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, [1])
    with pytest.raises(TypeError):
        write_json_atomic(path, [object()])
    assert json.loads(path.read_text()) == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
