"""Rows about what the model is fed: the mapped validation images and the training augmentation."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch
from parity_references import SIZE, tiny_lung_split

from segmentation.data.augmentation import ImageTransform, resized_shape
from segmentation.data.images import read_image_bgr
from segmentation.data.mapper import map_for_inference, map_for_training

from .table import Row


def mapped_inputs(parity_dir: Path) -> Row:
    """Decoded BGR bytes (md5) and resized sizes of the 24 val slices, and the 3 recorded mapped images in full."""
    root = parity_dir / "tiny_lung"
    expected = json.loads((root / "expected" / "inputs.json").read_text())["val_images_in_detectron2_order"]
    split = tiny_lung_split(parity_dir)
    mismatches = int([r.image_id for r in split.images] != [e["id"] for e in expected])
    for record, exp in zip(split.images, expected, strict=True):
        decoded = read_image_bgr(record.file_name)
        mismatches += hashlib.md5(decoded.tobytes()).hexdigest() != exp["md5_decoded_bgr_uint8"]
        image, info = map_for_inference(record, SIZE, SIZE)
        mismatches += list(image.shape[1:]) != exp["resized_hw"]
        mismatches += (info["height"], info["width"]) != (exp["height"], exp["width"])
    mapped = np.load(root / "expected" / "mapped_inputs.npz")
    by_name = {Path(r.file_name).name: r for r in split.images}
    for i in range(3):
        image, _ = map_for_inference(by_name[str(mapped[f"file_name_{i}"])], SIZE, SIZE)
        mismatches += sum(not np.array_equal(image[c].numpy(), mapped[f"image_{i}"]) for c in range(3))
    return Row(
        "mapped_inputs",
        f"mapped input images ({len(expected)} val slices, incl. non-square)",
        {"mismatches": float(mismatches)},
        {"mismatches": 0.0},
        "identical bytes" if mismatches == 0 else f"{mismatches} mismatches",
        "identical",
    )


def augmentation(parity_dir: Path) -> Row:
    """Mapped image, masks and boxes under fixed resizes x flips, crops and a binding MAX_SIZE
    (tests/data/test_augmentation.py)."""
    split = tiny_lung_split(parity_dir)
    by_name = {Path(r.file_name).name: r for r in split.images}
    folder = parity_dir / "solver_and_augmentation"
    cases = [*json.loads((folder / "augmentation.json").read_text()).values()]
    cases += json.loads((folder / "augmentation_crop_maxsize_empty.json").read_text()).values()
    differing, worst_box = 0, 0.0
    for case in cases:
        record = by_name[case["file_name"]]
        crop = tuple(case["crop_xywh"]) if case.get("crop_xywh") else None
        h, w = (crop[3], crop[2]) if crop else (record.height, record.width)
        size = resized_shape(h, w, case["min_size"], case["max_size"])
        transform = ImageTransform(record.height, record.width, crop, *size, flip=case["flip"])
        image, target = map_for_training(record, transform, split.categories)
        image_md5 = hashlib.md5(np.ascontiguousarray(image.numpy()).tobytes()).hexdigest()
        mask_md5 = hashlib.md5(np.ascontiguousarray(target["masks"].numpy()).tobytes()).hexdigest()
        differing += (image_md5 != case["image_md5"]) + (mask_md5 != case["mask_md5"])
        expected = torch.tensor(case["gt_boxes"], dtype=torch.float32).reshape(-1, 4)
        if expected.shape != target["boxes"].shape:
            worst_box = math.inf
        elif len(expected):
            worst_box = max(worst_box, float((target["boxes"] - expected).abs().max()))
    return Row(
        "augmentation",
        f"training augmentation ({len(cases)} cases: resizes x flips, crops, MAX_SIZE, an empty slice)",
        {"differing_md5": float(differing), "box_px": worst_box},
        {"differing_md5": 0.0, "box_px": 1e-4},
        f"images and masks identical, boxes {worst_box:.1g} px" if differing == 0 else f"{differing} md5 differ",
        "identical / boxes 1e-4 px",
    )
