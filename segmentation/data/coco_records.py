"""The records of a COCO instance json: their types, and the rule each field must meet to be used.

Why this exists: ``coco.CocoReader`` reads a json in one pass; the rules for one category, image or annotation
entry live here, each raising a ``CocoFormatError`` that names the record and what is wrong with it, so that the
pass decides only what to do with a problem (stop at it, or collect it). Import the types from ``coco``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segmentation.data.rle import rle_problem
from segmentation.errors import UserError


@dataclass(frozen=True)
class Category:
    """One dataset category: its json id, its name and the model label it trains as (1..K, 0 is background)."""

    id: int
    name: str
    label: int


def contiguous_categories(categories: Sequence[dict]) -> list[Category]:
    """Map the json's category ids, whatever they are, to model labels 1..K in sorted-id order.

    detectron2 sorts the ids and numbers them 0..K-1; torchvision reserves 0 for background, so our label is
    detectron2's contiguous id + 1. Evaluation maps labels back to json ids with the same list.
    """
    ids = [int(c["id"]) for c in categories]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate category ids in 'categories': {sorted(ids)}")
    by_id = {int(c["id"]): str(c.get("name", c["id"])) for c in categories}
    return [Category(id=i, name=by_id[i], label=k + 1) for k, i in enumerate(sorted(ids))]


class CocoFormatError(UserError, ValueError):
    """A json record that cannot be used as it is; the message names the file, the record and the problem."""


@dataclass(frozen=True)
class ImageRecord:
    """One image of a split and its annotations, as detectron2's dataset dict holds them.

    Attributes:
        image_id: the json image id.
        file_name: absolute path of the image file.
        height, width: the size the json declares (the mapper checks the decoded image against it).
        annotations: plain dicts with ``id``, ``category_id`` (json id), ``bbox`` (XYWH as in the json),
            ``iscrowd`` (0/1), ``area`` (json value, ``None`` if absent) and ``segmentation`` (polygons with the
            invalid ones removed, or an RLE dict exactly as written).
    """

    image_id: int
    file_name: str
    height: int
    width: int
    annotations: tuple[dict[str, Any], ...]


def parse_categories(data: dict[str, Any]) -> list[Category]:
    """The json's ``categories`` with their model labels; CocoFormatError when missing, empty or duplicated."""
    cats = data.get("categories")
    if not isinstance(cats, list) or not all(isinstance(c, dict) for c in cats):
        raise CocoFormatError("'categories' must be a list of objects")
    if not cats:
        raise CocoFormatError("'categories' is empty")
    for c in cats:
        int_field(c, "id", "a category")
    try:
        return contiguous_categories(cats)
    except ValueError as e:
        raise CocoFormatError(str(e)) from e


def int_field(obj: dict[str, Any], key: str, where: str) -> int:
    """``obj[key]`` as an int (a json integer, not a bool or a float); CocoFormatError naming ``where`` otherwise."""
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise CocoFormatError(f"{where} has {key}={value!r}; expected an integer")
    return int(value)


def parse_image(entry: dict[str, Any], root: Path, *, allow_outside_root: bool = False) -> ImageRecord:
    """One ``images`` entry as a record without annotations, its file name resolved against ``root``.

    Raises:
        CocoFormatError: naming the image id, for a missing or non-integer id/size, a non-positive size, no file
            name, or a file name resolving outside ``root`` unless ``allow_outside_root``.
    """
    image_id = int_field(entry, "id", "an image")
    where = f"image id {image_id}"
    height = int_field(entry, "height", where)
    width = int_field(entry, "width", where)
    if height <= 0 or width <= 0:
        raise CocoFormatError(f"{where} has size {width}x{height}; both must be positive")
    name = entry.get("file_name")
    if not isinstance(name, str) or not name:
        raise CocoFormatError(f"{where} has no 'file_name'")
    path = (root / name).resolve()
    if not allow_outside_root and not path.is_relative_to(root):
        raise CocoFormatError(
            f"{where} file_name {name!r} resolves to {path}, outside the image root {root}; "
            "fix the path or pass allow_outside_root=True"
        )
    return ImageRecord(image_id=image_id, file_name=str(path), height=height, width=width, annotations=())


def parse_annotation(
    entry: dict[str, Any], images: Mapping[int, ImageRecord], categories: Collection[int] | None
) -> tuple[int, dict[str, Any]]:
    """One ``annotations`` entry: its image id and its record, with the segmentation exactly as written.

    Args:
        entry: the json object.
        images: the split's images by id (an RLE is checked against its image's size).
        categories: the known category ids; ``None`` skips that check (when ``categories`` itself is broken).

    Raises:
        CocoFormatError: naming the annotation and image ids, for a missing or malformed field, an unknown image or
            category, a non-finite number, or an RLE whose size or counts do not fit its image.
    """
    ann_id = int_field(entry, "id", "an annotation")
    image_id = int_field(entry, "image_id", f"annotation id {ann_id}")
    where = f"annotation id {ann_id} (image id {image_id})"
    image = images.get(image_id)
    if image is None:
        raise CocoFormatError(f"{where} refers to an image id that is not in 'images'")
    category_id = int_field(entry, "category_id", where)
    if categories is not None and category_id not in categories:
        raise CocoFormatError(
            f"{where} has category_id {category_id}, which is not in 'categories' {sorted(categories)}"
        )
    if entry.get("ignore", 0) != 0:
        raise CocoFormatError(f"{where} sets 'ignore', which detectron2 does not support; use iscrowd")
    record = {"id": ann_id, "category_id": category_id, **_box_fields(entry, where)}
    record["segmentation"] = _segmentation(entry.get("segmentation"), image, where)
    return image_id, record


def _box_fields(entry: dict[str, Any], where: str) -> dict[str, Any]:
    """``bbox`` (4 finite numbers), ``iscrowd`` (0 or 1, default 0) and ``area`` (finite, or None when absent)."""
    bbox = entry.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_real(v) for v in bbox):
        raise CocoFormatError(f"{where} has bbox={bbox!r}; expected [x, y, width, height]")
    if not all(math.isfinite(v) for v in bbox):
        raise CocoFormatError(f"{where} has a non-finite bbox {bbox!r}")
    iscrowd = entry.get("iscrowd", 0)
    if iscrowd not in (0, 1):
        raise CocoFormatError(f"{where} has iscrowd={iscrowd!r}; expected 0 or 1")
    area = entry.get("area")
    if area is not None and not (_is_real(area) and math.isfinite(area)):
        raise CocoFormatError(f"{where} has area={area!r}; expected a finite number")
    return {"bbox": list(bbox), "iscrowd": int(iscrowd), "area": None if area is None else float(area)}


def _segmentation(segm: Any, image: ImageRecord, where: str) -> list | dict:
    """The segmentation as written, once it is known to be polygons of finite numbers or an RLE that fits the image."""
    if not segm:
        raise CocoFormatError(
            f"{where} has no segmentation; Mask R-CNN needs a mask (polygons or RLE) for every instance"
        )
    if isinstance(segm, dict):
        problem = rle_problem(segm, image.height, image.width)
        if problem is not None:
            raise CocoFormatError(f"{where} {problem}")
    elif isinstance(segm, list):
        if not all(isinstance(p, list) and all(_is_real(v) for v in p) for p in segm):
            raise CocoFormatError(
                f"{where} has a malformed polygon segmentation; expected a list of [x0, y0, x1, y1, ...]"
            )
        if not all(math.isfinite(v) for p in segm for v in p):
            raise CocoFormatError(f"{where} has a polygon with a non-finite coordinate")
    else:
        raise CocoFormatError(f"{where} has a segmentation of type {type(segm).__name__}")
    return segm


def valid_polygons(polygons: list[list[float]]) -> list[list[float]]:
    """detectron2's polygon rule: keep polygons with an even number of coordinates and at least 3 points."""
    return [p for p in polygons if len(p) % 2 == 0 and len(p) >= 6]


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
