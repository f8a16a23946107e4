"""load_coco_json and decode_mask: detectron2's loading rules, and errors that name the file, the record and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_util

from segmentation.data.coco import CocoFormatError, decode_mask, load_coco_json

H, W = 6, 5


def _square_mask() -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[1:4, 2:5] = True
    return mask


def _uncompressed(mask: np.ndarray) -> dict:
    flat = mask.T.reshape(-1)
    counts, current, run = [], False, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": [int(c) for c in counts]}


def _write(tmp_path: Path, images: list[dict], annotations: list[dict], categories: list[dict] | None = None) -> Path:
    path = tmp_path / "ann.json"
    categories = categories if categories is not None else [{"id": 1, "name": "Lung"}]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def _image(image_id: int, name: str | None = None, h: int = H, w: int = W) -> dict:
    return {"id": image_id, "file_name": name or f"img{image_id}.jpg", "height": h, "width": w}


def _ann(ann_id: int, image_id: int, segmentation, category_id: int = 1, **extra) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [2.0, 1.0, 3.0, 3.0],
        "iscrowd": 0,
        "area": 9.0,
        "segmentation": segmentation,
        **extra,
    }


def test_every_mask_encoding_decodes_to_the_same_bitmask():
    mask = _square_mask()
    compressed = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    polygon = [[2.0, 1.0, 5.0, 1.0, 5.0, 4.0, 2.0, 4.0]]  # pixel edges of the square, as COCO polygons are drawn

    assert np.array_equal(decode_mask(_uncompressed(mask), H, W), mask)
    assert np.array_equal(decode_mask(compressed, H, W), mask)  # bytes counts
    assert np.array_equal(decode_mask({**compressed, "counts": compressed["counts"].decode()}, H, W), mask)
    assert np.array_equal(decode_mask(polygon, H, W), mask)
    assert decode_mask({"size": [H, W], "counts": [H * W]}, H, W).dtype == bool
    assert not decode_mask({"size": [H, W], "counts": [H * W]}, H, W).any()


def test_images_sorted_by_id_with_resolved_paths_and_json_values(tmp_path: Path):
    path = _write(tmp_path, [_image(7), _image(3)], [_ann(1, 7, _uncompressed(_square_mask()))])
    split = load_coco_json(path, tmp_path)

    assert [r.image_id for r in split.images] == [3, 7]
    assert split.images[1].file_name == str((tmp_path / "img7.jpg").resolve())
    assert split.images[0].annotations == ()
    ann = split.images[1].annotations[0]
    assert ann == {"id": 1, "category_id": 1, "bbox": [2.0, 1.0, 3.0, 3.0], "iscrowd": 0, "area": 9.0,
                   "segmentation": _uncompressed(_square_mask())}  # fmt: skip
    assert split.json_path == path


def test_non_contiguous_category_ids_become_labels_1_to_k_in_id_order(tmp_path: Path):
    categories = [{"id": 11, "name": "c"}, {"id": 3, "name": "a"}, {"id": 7, "name": "b"}]
    path = _write(tmp_path, [_image(1)], [_ann(1, 1, _uncompressed(_square_mask()), category_id=11)], categories)

    labels = {c.id: (c.label, c.name) for c in load_coco_json(path, tmp_path).categories}
    assert labels == {3: (1, "a"), 7: (2, "b"), 11: (3, "c")}


def test_invalid_polygons_are_dropped_and_an_instance_without_valid_polygon_is_skipped(tmp_path: Path):
    good = [2.0, 1.0, 5.0, 1.0, 5.0, 4.0]
    annotations = [
        _ann(1, 1, [good, [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]]),  # keeps only `good`
        _ann(2, 1, [[1.0, 2.0, 3.0, 4.0]]),  # two points only: skipped, as detectron2 skips it
    ]
    split = load_coco_json(_write(tmp_path, [_image(1)], annotations), tmp_path)

    (ann,) = split.images[0].annotations
    assert ann["id"] == 1
    assert ann["segmentation"] == [good]


@pytest.mark.parametrize(
    ("images", "annotations", "expected"),
    [
        ([_image(1)], [_ann(5, 2, [[0, 0, 1, 0, 1, 1]])], r"annotation id 5 .*image id 2.*not in 'images'"),
        ([_image(1)], [_ann(5, 1, [[0, 0, 1, 0, 1, 1]], category_id=9)], r"annotation id 5 .*category_id 9"),
        ([_image(1), _image(1)], [], r"image id 1 appears more than once"),
        ([_image(1)], [_ann(5, 1, [[0, 0, 1, 0, 1, 1]])] * 2, r"annotation id 5 appears more than once"),
        ([_image(1)], [_ann(5, 1, {"size": [H + 1, W], "counts": [(H + 1) * W]})], r"annotation id 5 .*RLE of size"),
        ([_image(1)], [_ann(5, 1, {"size": [H, W], "counts": [3, 4]})], r"annotation id 5 .*summing to 7"),
        ([_image(1)], [_ann(5, 1, [])], r"annotation id 5 .*no segmentation"),
        ([_image(1)], [{**_ann(5, 1, [[0, 0, 1, 0, 1, 1]]), "bbox": [1, 2]}], r"annotation id 5 .*bbox"),
        ([{"id": 1, "file_name": "a.jpg", "width": W}], [], r"image id 1 has height=None"),
    ],
)
def test_bad_records_raise_naming_the_file_and_the_id(tmp_path: Path, images, annotations, expected):
    path = _write(tmp_path, images, annotations)
    with pytest.raises(CocoFormatError, match=expected) as info:
        load_coco_json(path, tmp_path)
    assert str(path) in str(info.value)


def test_file_names_outside_the_image_root_are_refused_unless_allowed(tmp_path: Path):
    root = tmp_path / "images"
    root.mkdir()
    path = _write(tmp_path, [_image(1, "../secret.jpg")], [])

    with pytest.raises(CocoFormatError, match=r"image id 1 .*outside the image root"):
        load_coco_json(path, root)
    assert load_coco_json(path, root, allow_outside_root=True).images[0].file_name == str(tmp_path / "secret.jpg")
