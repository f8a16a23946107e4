"""detectron2's ``DatasetMapper`` for this recipe: one image record in, the model's input (and targets) out.

Why this exists: the model sees exactly what detectron2's model sees only if the image is decoded, resized and
annotated the same way. Each step below copies detectron2 (``detectron2/data/dataset_mapper.py``,
``detection_utils.py``, ``transforms/``), including its arithmetic: PIL decoding with the EXIF orientation applied,
RGB flipped to BGR uint8, ``ResizeShortestEdge`` sizes rounded with ``int(x + 0.5)``, PIL bilinear resizing on
uint8, boxes converted and mapped in detectron2's dtypes, polygons rasterised after mapping, RLE masks cropped,
resized with PIL nearest and flipped with the image, and ``filter_empty_instances``. The geometry itself (crop, size,
flip) is ``augmentation.ImageTransform``. torchvision's own resize is then a no-op (see the parity spec).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_util

from segmentation.data.augmentation import ImageTransform
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


def resize_shortest_edge(image: np.ndarray, min_size: int, max_size: int) -> np.ndarray:
    """detectron2's ``ResizeShortestEdge`` of a uint8 ``(H, W, 3)`` image: its size rule, PIL bilinear on uint8."""
    return ImageTransform.resize(image.shape[0], image.shape[1], min_size, max_size).apply_image(image)


def _load_chw(record: ImageRecord, transform: ImageTransform, window: CtWindow) -> torch.Tensor:
    """The decoded, transformed image as a uint8 ``(3, H, W)`` BGR tensor.

    A grey image (every CT slice) goes through the transform as one channel and is replicated afterwards: PIL
    resamples each band of an RGB image with the same integer arithmetic as a single-band image, so the bytes are
    those of the three-channel path at a third of the resize cost, which is what multi-scale training pays per image.
    """
    image = read_image_bgr(record.file_name, window)
    check_image_size(record, image)
    if np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2]):
        # copy a flipped view once: broadcasting from a negative stride is 4x slower
        grey = np.ascontiguousarray(transform.apply_image(image[..., 0]))
        return torch.from_numpy(np.ascontiguousarray(np.broadcast_to(grey, (3, *grey.shape))))
    return torch.from_numpy(np.ascontiguousarray(transform.apply_image(image).transpose(2, 0, 1)))


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
    transform = ImageTransform.resize(record.height, record.width, min_size, max_size)
    image = _load_chw(record, transform, window)
    info = {"image_id": record.image_id, "height": record.height, "width": record.width, "file_name": record.file_name}
    if categories is not None:
        info["target"] = _training_target(record, transform, categories)
    return image, info


def map_for_training(
    record: ImageRecord,
    transform: ImageTransform,
    categories: Sequence[Category],
    window: CtWindow = LUNG_CT,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """detectron2's training mapper (``DatasetMapper(is_train=True)``, bitmask format) under one drawn transform.

    Crowd annotations are dropped; each remaining box is converted XYWH->XYXY and its corners mapped through the
    transform (crop offset, resize scale, flip), then clipped to the output image; polygons are mapped and
    rasterised at the output size, RLE masks decoded at the original size and cropped, resized with PIL nearest and
    flipped with the image. With a crop, boxes are recomputed from the masks (detectron2's ``recompute_boxes``,
    which it sets whenever cropping is on). Instances with a box side <= 1e-5 or an all-zero mask are dropped
    (``filter_empty_instances``), so an area-0 annotation yields no target.

    Args:
        record: the image record.
        transform: this image's geometry (``Augmentation.draw``, or ``ImageTransform.resize`` for one fixed size).
        categories: the split's categories; a json category id trains as its ``label`` (contiguous index + 1).
        window: how 16-bit slices are windowed.

    Returns:
        ``(image, target)``: image uint8 ``(3, H, W)`` BGR; target ``boxes`` float32 ``(N, 4)`` xyxy in output
        pixels, ``labels`` int64 ``(N,)``, ``masks`` uint8 ``(N, H, W)``, ``image_id`` int. ``N`` may be 0.
    """
    return _load_chw(record, transform, window), _training_target(record, transform, categories)


def _training_target(record: ImageRecord, transform: ImageTransform, categories: Sequence[Category]) -> dict[str, Any]:
    label_of = {c.id: c.label for c in categories}
    new_h, new_w = transform.new_height, transform.new_width

    boxes: list[np.ndarray] = []
    labels: list[int] = []
    masks: list[np.ndarray] = []
    for ann in record.annotations:
        if ann["iscrowd"]:
            continue
        boxes.append(transform.apply_box(_xyxy(ann["bbox"])))
        labels.append(label_of[ann["category_id"]])
        masks.append(_transform_mask(ann["segmentation"], record.height, record.width, transform))

    box_array = torch.as_tensor(np.stack(boxes) if boxes else np.zeros((0, 4)), dtype=torch.float32)
    mask_array = torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, new_h, new_w), dtype=torch.bool)
    if transform.crop is not None:
        box_array = mask_bounding_boxes(mask_array)
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


def _xyxy(bbox: Sequence[float]) -> np.ndarray:
    """XYWH json box -> XYXY numpy box in detectron2's dtypes.

    detectron2 converts with ``torch.tensor(bbox)`` (float32, or int64 when every value is an int), then maps the
    corners in a numpy array of that Python type (float64; int64 for an all-integer json box, where numpy's in-place
    assignment truncates the scaled values — detectron2 does the same, so we do too).
    """
    all_int = all(isinstance(v, int) for v in bbox)
    xywh = torch.tensor([int(v) if all_int else float(v) for v in bbox], dtype=torch.int64 if all_int else None)
    xyxy = xywh.clone()
    xyxy[2:] += xywh[:2]
    return np.array(xyxy.tolist())


def mask_bounding_boxes(masks: torch.Tensor) -> torch.Tensor:
    """detectron2's ``BitMasks.get_bounding_boxes``: float32 ``[x0, y0, x1 + 1, y1 + 1]``, zeros for an empty mask."""
    boxes = torch.zeros(masks.shape[0], 4, dtype=torch.float32)
    x_any, y_any = masks.any(dim=1), masks.any(dim=2)
    for i in range(masks.shape[0]):
        xs, ys = torch.where(x_any[i])[0], torch.where(y_any[i])[0]
        if len(xs) and len(ys):
            boxes[i] = torch.tensor([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=torch.float32)
    return boxes


def _transform_mask(segmentation: list | dict, h: int, w: int, transform: ImageTransform) -> np.ndarray:
    """The instance mask at the output size, bool ``(new_h, new_w)``, as detectron2 builds its BitMasks.

    Polygons are mapped point by point and rasterised at the output size; under a crop detectron2 first clips
    each polygon to the crop box (with shapely), which rasterises to the same mask up to pixels on the crop border.
    """
    if isinstance(segmentation, list):
        polygons = [transform.apply_coords(np.asarray(p, dtype=np.float64).reshape(-1, 2).copy()).reshape(-1)
                    for p in segmentation]  # fmt: skip
        rle = mask_util.merge(mask_util.frPyObjects(polygons, transform.new_height, transform.new_width))
        return mask_util.decode(rle).astype(bool)
    return transform.apply_mask(decode_mask(segmentation, h, w).astype(np.uint8))
