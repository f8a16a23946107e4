"""Image files as the model sees them: 8-bit as detectron2 reads them, 16-bit CT slices windowed like volumes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from segmentation.data.check import FEW_GREY_LEVELS, check_split
from segmentation.data.images import CtWindow, read_image_bgr, window_to_uint8

# HU of air, lung, fat, soft tissue, bone: what a CT slice holds, stored as HU + 1024 in a 16-bit export
HU = np.array([[-1000, -600, -100, 40], [400, 1000, -850, -300]], dtype=np.int32)


def test_a_16_bit_ct_slice_is_windowed_like_a_volume(tmp_path: Path):
    Image.fromarray((HU + 1024).astype(np.uint16)).save(tmp_path / "slice16.png")
    Image.fromarray(HU + 1024).save(tmp_path / "slice32.tif")  # PIL mode "I"
    expected = window_to_uint8(HU.astype(np.float32))  # the lung window volumes get
    assert len(np.unique(expected)) == 7  # not a black image: the value/257 mapping gave levels 0-5 only
    for name in ("slice16.png", "slice32.tif"):
        image = read_image_bgr(str(tmp_path / name))
        assert image.shape == (2, 4, 3) and image.dtype == np.uint8
        assert np.array_equal(image, np.repeat(expected[:, :, None], 3, axis=2)), name


def test_window_and_offset_are_options(tmp_path: Path):
    Image.fromarray(HU.astype(np.float32) + 0).save(tmp_path / "hu.tif")  # a float file that stores HU itself
    soft_tissue = CtWindow(center=40, width=400, intensity_offset=0)
    image = read_image_bgr(str(tmp_path / "hu.tif"), soft_tissue)
    assert np.array_equal(image[:, :, 0], window_to_uint8(HU.astype(np.float32), 40, 400))


def test_check_warns_when_a_16_bit_slice_collapses_to_a_few_grey_levels(tmp_path: Path):
    images = tmp_path / "images"
    images.mkdir()
    ramp = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16  # 0..65520: a wide range of stored values
    Image.fromarray(ramp).save(images / "wide.png")
    coco = {
        "images": [{"id": 1, "file_name": "wide.png", "height": 64, "width": 64}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 0,
             "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]}
        ],
        "categories": [{"id": 1, "name": "lung"}],
    }  # fmt: skip
    (tmp_path / "train.json").write_text(json.dumps(coco))
    lung = check_split(tmp_path / "train.json", images)
    assert lung.ok and lung.tolerated[FEW_GREY_LEVELS] == 0
    narrow = check_split(tmp_path / "train.json", images, window=CtWindow(center=70000, width=10))
    assert narrow.ok and narrow.tolerated[FEW_GREY_LEVELS] == 1
    assert "wide.png" in narrow.format()


def test_a_json_without_images_is_fatal(tmp_path: Path):
    empty = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}
    (tmp_path / "empty.json").write_text(json.dumps(empty))
    report = check_split(tmp_path / "empty.json", tmp_path)
    assert not report.ok and "no images" in report.format() and "empty.json" in report.format()
