"""The mapper feeds the model exactly what detectron2's DatasetMapper feeds it: pixels, sizes and targets."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

from segmentation.data.augmentation import ImageTransform, resized_shape
from segmentation.data.coco import Category, ImageRecord, load_coco_json
from segmentation.data.images import read_image_bgr
from segmentation.data.mapper import (
    SizeMismatchError,
    check_image_size,
    map_for_inference,
    map_for_training,
)

RNG = np.random.default_rng(0)


def _rle(mask: np.ndarray) -> dict:
    flat = mask.T.reshape(-1).astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    return {"size": list(mask.shape), "counts": [0, *counts] if flat[0] else counts}


def _record(path: Path, h: int, w: int, annotations: list[dict], image_id: int = 1) -> ImageRecord:
    return ImageRecord(image_id=image_id, file_name=str(path), height=h, width=w, annotations=tuple(annotations))


def _resize(record: ImageRecord, min_size: int, max_size: int) -> ImageTransform:
    return ImageTransform.resize(record.height, record.width, min_size, max_size)


def _ann(ann_id: int, category_id: int, bbox: list, segmentation, iscrowd: int = 0) -> dict:
    return {"id": ann_id, "category_id": category_id, "bbox": bbox, "iscrowd": iscrowd, "area": None,
            "segmentation": segmentation}  # fmt: skip


@pytest.mark.parametrize(
    ("hw", "expected"),
    [((310, 400), (397, 512)), ((384, 512), (384, 512)), ((427, 640), (342, 512)), ((512, 512), (512, 512)),
     ((100, 50), (512, 256)), ((256, 256), (512, 512))],
)  # fmt: skip
def test_resized_shape_is_detectron2_resize_shortest_edge(hw, expected):
    assert resized_shape(*hw, 512, 512) == expected


def test_grayscale_palette_and_rgba_images_load_as_detectron2_bgr(tmp_path: Path):
    gray = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    rgba = RNG.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    palette = Image.fromarray(RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)).convert("P")
    palette.save(tmp_path / "palette.png")

    assert np.array_equal(read_image_bgr(str(tmp_path / "gray.png")), np.repeat(gray[:, :, None], 3, axis=2))
    assert np.array_equal(read_image_bgr(str(tmp_path / "rgba.png")), rgba[:, :, 2::-1])  # alpha dropped, BGR
    expected = np.asarray(palette.convert("RGB"))[:, :, ::-1]
    assert np.array_equal(read_image_bgr(str(tmp_path / "palette.png")), expected)
    for name in ("gray", "rgba", "palette"):
        image = read_image_bgr(str(tmp_path / f"{name}.png"))
        assert image.dtype == np.uint8 and image.shape == (5, 7, 3) and image.flags.c_contiguous


def test_exif_orientation_is_applied_before_the_size_check(tmp_path: Path):
    pixels = RNG.integers(0, 256, (4, 6, 3), dtype=np.uint8)  # h=4, w=6 as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    Image.fromarray(pixels).save(tmp_path / "rotated.png", exif=exif)

    image = read_image_bgr(str(tmp_path / "rotated.png"))
    assert np.array_equal(image, np.rot90(pixels, k=-1)[:, :, ::-1])
    check_image_size(_record(tmp_path / "rotated.png", h=6, w=4, annotations=[]), image)  # displayed size passes
    with pytest.raises(SizeMismatchError, match="rotated.png"):
        check_image_size(_record(tmp_path / "rotated.png", h=4, w=6, annotations=[]), image)


def test_a_size_mismatch_names_the_file(tmp_path: Path):
    Image.fromarray(np.zeros((8, 10), dtype=np.uint8)).save(tmp_path / "slice_042.jpg")
    record = _record(tmp_path / "slice_042.jpg", h=10, w=8, annotations=[], image_id=42)
    with pytest.raises(SizeMismatchError, match=r"slice_042\.jpg \(image id 42\) decodes to width x height 10x8"):
        map_for_inference(record, 16, 16)


def test_training_targets_drop_crowd_empty_and_degenerate_instances_and_map_labels(tmp_path: Path):
    h, w = 16, 20
    Image.fromarray(RNG.integers(0, 256, (h, w), dtype=np.uint8)).save(tmp_path / "img.png")
    mask = np.zeros((h, w), dtype=bool)
    mask[3:9, 5:12] = True
    categories = [
        Category(id=3, name="a", label=1),
        Category(id=7, name="b", label=2),
        Category(id=11, name="c", label=3),
    ]
    annotations = [
        _ann(1, 7, [5.0, 3.0, 7.0, 6.0], _rle(mask)),
        _ann(2, 3, [0, 0, 0, 0], {"size": [h, w], "counts": [h * w]}),  # empty slice: area 0
        _ann(3, 3, [5.0, 3.0, 7.0, 6.0], _rle(mask), iscrowd=1),
        _ann(4, 3, [5.0, 3.0, 0.0, 6.0], _rle(mask)),  # zero-width box
        _ann(5, 11, [15.0, 10.0, 10.0, 10.0], [[2.0, 1.0, 5.0, 1.0, 5.0, 4.0, 2.0, 4.0]]),  # box past the border
    ]
    record = _record(tmp_path / "img.png", h, w, annotations, 9)
    image, target = map_for_training(record, _resize(record, 32, 40), categories)

    assert image.dtype == torch.uint8 and image.shape == (3, 32, 40)
    assert target["image_id"] == 9
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [2, 3]
    assert target["boxes"].dtype == torch.float32
    assert target["boxes"].tolist() == [[10.0, 6.0, 24.0, 18.0], [30.0, 20.0, 40.0, 32.0]]  # x2, then clipped
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (2, 32, 40)
    rle_resized = np.kron(mask, np.ones((2, 2), dtype=bool))  # PIL nearest at exactly 2x
    assert np.array_equal(target["masks"][0].numpy().astype(bool), rle_resized)
    polygon_resized = np.zeros((32, 40), dtype=bool)
    polygon_resized[2:8, 4:10] = True  # the polygon is scaled, then rasterised at the new size
    assert np.array_equal(target["masks"][1].numpy().astype(bool), polygon_resized)


def test_integer_json_boxes_are_scaled_in_integer_arithmetic_as_detectron2_does(tmp_path: Path):
    # detectron2 keeps an all-int json bbox as int64 through apply_box, so scaled corners are truncated.
    Image.fromarray(np.zeros((16, 20), dtype=np.uint8)).save(tmp_path / "img.png")
    mask = np.zeros((16, 20), dtype=bool)
    mask[1:4, 1:4] = True
    lung = [Category(id=1, name="Lung", label=1)]
    as_int = _record(tmp_path / "img.png", 16, 20, [_ann(1, 1, [1, 1, 3, 3], _rle(mask))])
    as_float = _record(tmp_path / "img.png", 16, 20, [_ann(1, 1, [1.0, 1.0, 3.0, 3.0], _rle(mask))])

    assert map_for_training(as_int, _resize(as_int, 24, 30), lung)[1]["boxes"].tolist() == [[1.0, 1.0, 6.0, 6.0]]
    assert map_for_training(as_float, _resize(as_float, 24, 30), lung)[1]["boxes"].tolist() == [[1.5, 1.5, 6.0, 6.0]]


def test_an_image_whose_only_annotation_is_empty_trains_with_zero_targets(tmp_path: Path):
    Image.fromarray(np.zeros((16, 20), dtype=np.uint8)).save(tmp_path / "img.png")
    record = _record(tmp_path / "img.png", 16, 20, [_ann(1, 1, [0, 0, 0, 0], {"size": [16, 20], "counts": [320]})])
    image, target = map_for_training(record, _resize(record, 16, 20), [Category(id=1, name="Lung", label=1)])

    assert image.shape == (3, 16, 20)
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64
    assert target["masks"].shape == (0, 16, 20) and target["masks"].dtype == torch.uint8


def test_inference_info_keeps_the_original_size(tmp_path: Path):
    Image.fromarray(np.zeros((310, 400), dtype=np.uint8)).save(tmp_path / "img.png")
    image, info = map_for_inference(_record(tmp_path / "img.png", 310, 400, [], image_id=5), 512, 512)
    assert image.shape == (3, 397, 512)
    assert info == {"image_id": 5, "height": 310, "width": 400, "file_name": str(tmp_path / "img.png")}


def test_inference_sample_can_carry_the_training_target_of_the_same_image(tmp_path: Path):
    Image.fromarray(np.full((40, 60), 200, dtype=np.uint8)).save(tmp_path / "img.png")
    mask = np.zeros((40, 60), dtype=np.uint8)
    mask[5:25, 10:40] = 1
    rle = mask_util.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode()
    record = _record(tmp_path / "img.png", 40, 60, [_ann(1, 7, [10.0, 5.0, 30.0, 20.0], rle)])
    categories = [Category(id=7, name="Lung", label=1)]

    image, info = map_for_inference(record, 80, 120, categories)
    train_image, target = map_for_training(record, _resize(record, 80, 120), categories)

    assert torch.equal(image, train_image)
    assert set(info["target"]) == set(target)
    assert all(torch.equal(info["target"][k], target[k]) for k in ("boxes", "labels", "masks"))


@pytest.mark.parity
def test_decoded_and_resized_val_images_equal_detectron2s(parity_dir: Path):
    root = parity_dir / "tiny_lung"
    expected = json.loads((root / "expected" / "inputs.json").read_text())["val_images_in_detectron2_order"]
    split = load_coco_json(root / "dataset" / "coco_val_lung.json", root / "dataset" / "val")

    assert [r.image_id for r in split.images] == [e["id"] for e in expected]
    assert len(expected) == 24
    for record, exp in zip(split.images, expected, strict=True):
        decoded = read_image_bgr(record.file_name)
        assert hashlib.md5(decoded.tobytes()).hexdigest() == exp["md5_decoded_bgr_uint8"], record.file_name
        image, info = map_for_inference(record, 512, 512)
        assert list(image.shape[1:]) == exp["resized_hw"], record.file_name
        assert (info["height"], info["width"]) == (exp["height"], exp["width"])
    assert {tuple(e["resized_hw"]) for e in expected if (e["height"], e["width"]) == (310, 400)} == {(397, 512)}

    mapped = np.load(root / "expected" / "mapped_inputs.npz")
    by_name = {Path(r.file_name).name: r for r in split.images}
    for i in range(3):
        image, _ = map_for_inference(by_name[str(mapped[f"file_name_{i}"])], 512, 512)
        assert bool(mapped[f"channels_identical_{i}"])
        for channel in range(3):
            assert np.array_equal(image[channel].numpy(), mapped[f"image_{i}"])


@pytest.mark.parity
def test_detectron2_loss_batch_b_image_with_only_an_empty_annotation_has_no_instances(parity_dir: Path):
    root = parity_dir / "tiny_lung" / "dataset"
    split = load_coco_json(root / "coco_train_lossbatch_lung.json", root / "train")
    counts = {Path(r.file_name).name: len(map_for_training(r, _resize(r, 512, 512), split.categories)[1]["labels"])
              for r in split.images}  # fmt: skip
    assert counts == {"PHANTOM_01_2.jpg": 1, "PHANTOM_01_12.jpg": 1, "PHANTOM_02_0.jpg": 0, "PHANTOM_02_7.jpg": 1}
