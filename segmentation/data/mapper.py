"""detectron2's ``DatasetMapper`` for this recipe: one image record in, the model's input (and targets) out.

Why this exists: the model sees exactly what detectron2's model sees only if the image is decoded, resized and
annotated the same way. Each step below copies detectron2 (``detectron2/data/dataset_mapper.py``,
``detection_utils.py``, ``transforms/``), including its arithmetic: PIL decoding with the EXIF orientation applied,
RGB flipped to BGR uint8, ``ResizeShortestEdge`` sizes rounded with ``int(x + 0.5)``, PIL bilinear resizing on
uint8, boxes converted and scaled in detectron2's dtypes, polygons rasterised after scaling, RLE masks resized with
PIL nearest, and ``filter_empty_instances``. torchvision's own resize is then a no-op (see the parity spec).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_util

from segmentation.data.coco import Category, ImageRecord, decode_mask
from segmentation.data.images import LUNG_CT, CtWindow, read_image_bgr
from segmentation.errors import UserError


class SizeMismatchError(UserError, ValueError):
    """The decoded image (after EXIF orientation) does not have the size its json record declares."""


def check_image_size(record: ImageRecord, image: np.ndarray) -> None:
    """Raise ``SizeMismatchError`` naming the file when the decoded ``(H, W, ...)`` image differs from the json size."""
    got_h, got_w = image.shape[:2]
    if (got_h, got_w) != (record.height, record.width):
        raise SizeMismatchError(
            f"{record.file_name} (image id {record.image_id}) decodes to width x height {got_w}x{got_h} "
            f"(after EXIF orientation), but its json says {record.width}x{record.height}; fix 'width'/'height' "
            "in the json or the image file"
        )


def resized_shape(h: int, w: int, min_size: int, max_size: int) -> tuple[int, int]:
    """detectron2's ``ResizeShortestEdge.get_output_shape``: short side to ``min_size``, long side at most ``max_size``.

    Sizes are rounded with ``int(x + 0.5)`` (torchvision floors), so 310x400 (h x w) becomes 397x512.
    """
    size = min_size * 1.0
    scale = size / min(h, w)
    if h < w:
        new_h, new_w = size, scale * w
    else:
        new_h, new_w = scale * h, size
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h = new_h * scale
        new_w = new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def _resize_uint8(array: np.ndarray, new_h: int, new_w: int, resample: Image.Resampling) -> np.ndarray:
    """PIL resize of a uint8 ``(H, W)`` or ``(H, W, 3)`` array, as detectron2's ``ResizeTransform.apply_image``."""
    if array.shape[:2] == (new_h, new_w):
        return array
    return np.asarray(Image.fromarray(array).resize((new_w, new_h), resample))


def resize_shortest_edge(image: np.ndarray, min_size: int, max_size: int) -> np.ndarray:
    """detectron2's ``ResizeShortestEdge`` of a uint8 ``(H, W, 3)`` image: its size rule, PIL bilinear on uint8."""
    new_h, new_w = resized_shape(image.shape[0], image.shape[1], min_size, max_size)
    return _resize_uint8(image, new_h, new_w, Image.Resampling.BILINEAR)


def _load_resized(record: ImageRecord, min_size: int, max_size: int, window: CtWindow) -> np.ndarray:
    image = read_image_bgr(record.file_name, window)
    check_image_size(record, image)
    return resize_shortest_edge(image, min_size, max_size)


def _to_chw_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def map_for_inference(
    record: ImageRecord,
    min_size: int,
    max_size: int,
    categories: Sequence[Category] | None = None,
    window: CtWindow = LUNG_CT,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """detectron2's test-time mapper: the resized uint8 ``(3, H, W)`` BGR image and the original-size info.

    Args:
        record: the image record.
        min_size, max_size: ResizeShortestEdge sizes.
        categories: when given, ``info["target"]`` also holds the training target of the same resized image, so an
            evaluation can report the validation loss next to AP without decoding the image twice.
        window: how 16-bit slices are windowed (8-bit images are read as they are).

    Returns:
        ``(image, info)`` with ``info = {"image_id", "height", "width", "file_name"}``; height/width are the json's
        (original) size, to which the model rescales its outputs.
    """
    image = _load_resized(record, min_size, max_size, window)
    info = {"image_id": record.image_id, "height": record.height, "width": record.width, "file_name": record.file_name}
    if categories is not None:
        info["target"] = _training_target(record, image.shape[0], image.shape[1], categories)
    return _to_chw_tensor(image), info


def map_for_training(
    record: ImageRecord,
    min_size: int,
    max_size: int,
    categories: Sequence[Category],
    window: CtWindow = LUNG_CT,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """detectron2's training mapper (``DatasetMapper(is_train=True)``, bitmask format, no flip, no crop).

    Crowd annotations are dropped; each remaining box is converted XYWH->XYXY, scaled by ``(new_w / w, new_h / h)``
    and clipped to the resized image; polygons are scaled and rasterised at the new size, RLE masks are decoded at
    the original size and resized with PIL nearest; instances with a box side <= 1e-5 or an all-zero mask are
    dropped (detectron2's ``filter_empty_instances``), so an area-0 annotation yields no target.

    Args:
        record: the image record.
        min_size, max_size: ResizeShortestEdge sizes.
        categories: the split's categories; a json category id trains as its ``label`` (contiguous index + 1).
        window: how 16-bit slices are windowed.

    Returns:
        ``(image, target)``: image uint8 ``(3, H, W)`` BGR; target ``boxes`` float32 ``(N, 4)`` xyxy in resized
        pixels, ``labels`` int64 ``(N,)``, ``masks`` uint8 ``(N, H, W)``, ``image_id`` int. ``N`` may be 0.
    """
    image = _load_resized(record, min_size, max_size, window)
    return _to_chw_tensor(image), _training_target(record, image.shape[0], image.shape[1], categories)


def _training_target(record: ImageRecord, new_h: int, new_w: int, categories: Sequence[Category]) -> dict[str, Any]:
    label_of = {c.id: c.label for c in categories}

    boxes: list[np.ndarray] = []
    labels: list[int] = []
    masks: list[np.ndarray] = []
    for ann in record.annotations:
        if ann["iscrowd"]:
            continue
        boxes.append(_transform_box(ann["bbox"], record.height, record.width, new_h, new_w))
        labels.append(label_of[ann["category_id"]])
        masks.append(_transform_mask(ann["segmentation"], record.height, record.width, new_h, new_w))

    box_array = torch.as_tensor(np.stack(boxes) if boxes else np.zeros((0, 4)), dtype=torch.float32)
    mask_array = torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, new_h, new_w), dtype=torch.bool)
    label_array = torch.tensor(labels, dtype=torch.int64)
    widths = box_array[:, 2] - box_array[:, 0]
    heights = box_array[:, 3] - box_array[:, 1]
    keep = (widths > 1e-5) & (heights > 1e-5) & mask_array.flatten(1).any(dim=1)
    return {
        "boxes": box_array[keep],
        "labels": label_array[keep],
        "masks": mask_array[keep].to(torch.uint8),
        "image_id": record.image_id,
    }


def _transform_box(bbox: Sequence[float], h: int, w: int, new_h: int, new_w: int) -> np.ndarray:
    """XYWH json box -> clipped XYXY box in the resized frame, in detectron2's dtypes.

    detectron2 converts with ``torch.tensor(bbox)`` (float32, or int64 when every value is an int), then scales
    corner coordinates in a numpy array of that Python type (float64; int64 for an all-integer json box, where
    numpy's in-place assignment truncates the scaled values — detectron2 does the same, so we do too).
    """
    all_int = all(isinstance(v, int) for v in bbox)
    xywh = torch.tensor([int(v) if all_int else float(v) for v in bbox], dtype=torch.int64 if all_int else None)
    xyxy = xywh.clone()
    xyxy[2:] += xywh[:2]
    corners = np.array([xyxy.tolist()])[:, [0, 1, 2, 1, 0, 3, 2, 3]].reshape(-1, 2)
    corners[:, 0] = corners[:, 0] * (new_w * 1.0 / w)
    corners[:, 1] = corners[:, 1] * (new_h * 1.0 / h)
    box = np.concatenate([corners.min(axis=0), corners.max(axis=0)]).clip(min=0)
    return np.minimum(box, [new_w, new_h, new_w, new_h])


def _transform_mask(segmentation: list | dict, h: int, w: int, new_h: int, new_w: int) -> np.ndarray:
    """The instance mask at the resized size, bool ``(new_h, new_w)``, as detectron2 builds its BitMasks."""
    if isinstance(segmentation, list):
        polygons = []
        for polygon in segmentation:
            coords = np.asarray(polygon, dtype=np.float64).reshape(-1, 2).copy()
            coords[:, 0] = coords[:, 0] * (new_w * 1.0 / w)
            coords[:, 1] = coords[:, 1] * (new_h * 1.0 / h)
            polygons.append(coords.reshape(-1))
        rle = mask_util.merge(mask_util.frPyObjects(polygons, new_h, new_w))
        return mask_util.decode(rle).astype(bool)
    mask = decode_mask(segmentation, h, w).astype(np.uint8)
    return _resize_uint8(mask, new_h, new_w, Image.Resampling.NEAREST).astype(bool)
