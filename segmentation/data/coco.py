"""COCO instance json: categories, images and annotations, read the way detectron2's ``load_coco_json`` reads them.

Why this exists: detectron2 turns a json into per-image records with a few silent rules (sorted image ids, category
ids mapped to contiguous labels in sorted order, invalid polygons dropped, instances without a valid polygon
skipped). Our numbers only match detectron2's if we apply the same rules, so they live here, in one place. Where
detectron2 would fail deep inside training with an assertion (or silently ignore a broken record), we stop at load
time with an error that names the json file, the record id and the problem, because the person holding the data
is the one who can fix it.

The records keep the json's own values (bbox XYWH as written, json category ids, the segmentation as written but
with invalid polygons removed); turning them into model targets is ``mapper.py``'s job.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_util


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


class CocoFormatError(ValueError):
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


@dataclass
class CocoSplit:
    """A loaded json: its images sorted by id, its categories (with model labels) and where it came from."""

    images: list[ImageRecord]
    categories: list[Category]
    json_path: Path


def read_categories(json_path: str | Path) -> list[Category]:
    """The categories of a json with their model labels, without validating images or annotations."""
    json_path = Path(json_path)
    data = _read_json(json_path)
    return _categories(data, json_path)


def load_coco_json(json_path: str | Path, image_root: str | Path, *, allow_outside_root: bool = False) -> CocoSplit:
    """Load a COCO instance-segmentation json into per-image records, with detectron2's rules.

    detectron2's rules (``detectron2/data/datasets/coco.py: load_coco_json``): images sorted by id; annotations kept
    in json order; polygons with an odd number of coordinates or fewer than 3 points dropped, and an instance left
    without any valid polygon skipped; RLE (compressed or uncompressed) kept. Crowd annotations are kept here (the
    training mapper drops them; the FILTER_EMPTY_ANNOTATIONS rule needs to see them).

    Args:
        json_path: the COCO json file.
        image_root: folder the json's ``file_name`` entries are relative to.
        allow_outside_root: accept file names that resolve outside ``image_root`` (absolute paths, ``..``).

    Returns:
        The split.

    Raises:
        CocoFormatError: naming the json file and the image/annotation id, for an annotation of an unknown image
            or category, duplicate ids, a missing or malformed field, an RLE whose size differs from its image or
            whose counts do not sum to height*width, or a file name outside ``image_root``.
    """
    json_path = Path(json_path)
    data = _read_json(json_path)
    categories = _categories(data, json_path)
    known_categories = {c.id for c in categories}
    root = Path(image_root).resolve()

    images: dict[int, dict[str, Any]] = {}
    for img in _list(data, "images", json_path):
        image_id = _int_field(img, "id", json_path, "an image")
        where = f"image id {image_id}"
        if image_id in images:
            raise CocoFormatError(f"{json_path}: {where} appears more than once in 'images'")
        height = _int_field(img, "height", json_path, where)
        width = _int_field(img, "width", json_path, where)
        if height <= 0 or width <= 0:
            raise CocoFormatError(f"{json_path}: {where} has size {width}x{height}; both must be positive")
        name = img.get("file_name")
        if not isinstance(name, str) or not name:
            raise CocoFormatError(f"{json_path}: {where} has no 'file_name'")
        path = (root / name).resolve()
        if not allow_outside_root and not path.is_relative_to(root):
            raise CocoFormatError(
                f"{json_path}: {where} file_name {name!r} resolves to {path}, outside the image root {root}; "
                "fix the path or pass allow_outside_root=True"
            )
        images[image_id] = {"file_name": str(path), "height": height, "width": width, "annotations": []}

    seen_annotations: set[int] = set()
    for ann in _list(data, "annotations", json_path):
        ann_id = _int_field(ann, "id", json_path, "an annotation")
        where = f"annotation id {ann_id}"
        if ann_id in seen_annotations:
            raise CocoFormatError(f"{json_path}: {where} appears more than once in 'annotations'")
        seen_annotations.add(ann_id)
        image_id = _int_field(ann, "image_id", json_path, where)
        where = f"annotation id {ann_id} (image id {image_id})"
        if image_id not in images:
            raise CocoFormatError(f"{json_path}: {where} refers to an image id that is not in 'images'")
        record = _annotation(ann, images[image_id], known_categories, json_path, where)
        if record is not None:
            images[image_id]["annotations"].append(record)

    records = [
        ImageRecord(
            image_id=image_id,
            file_name=img["file_name"],
            height=img["height"],
            width=img["width"],
            annotations=tuple(img["annotations"]),
        )
        for image_id, img in sorted(images.items())
    ]
    return CocoSplit(images=records, categories=categories, json_path=json_path)


def decode_mask(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """Rasterise one COCO segmentation at ``height`` x ``width`` to a bool ``(H, W)`` array, through pycocotools.

    Accepts polygons (a list of flat ``[x0, y0, x1, y1, ...]`` lists, merged as one instance), uncompressed RLE
    (``counts`` a list, column-major, first count = leading zeros) and compressed RLE (``counts`` str or bytes).
    """
    if isinstance(segmentation, list):
        if not segmentation:
            return np.zeros((height, width), dtype=bool)
        rle = mask_util.merge(mask_util.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict):
        counts = segmentation["counts"]
        if isinstance(counts, list):
            rle = mask_util.frPyObjects(segmentation, height, width)
        else:
            rle = {"size": list(segmentation["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}
    else:
        raise TypeError(f"unsupported segmentation type {type(segmentation).__name__}; expected polygons or RLE")
    return mask_util.decode(rle).astype(bool)


def _read_json(json_path: Path) -> dict[str, Any]:
    try:
        with open(json_path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise CocoFormatError(f"{json_path}: not valid json ({e})") from e
    if not isinstance(data, dict):
        raise CocoFormatError(f"{json_path}: expected a json object with 'images', 'annotations', 'categories'")
    return data


def _categories(data: dict[str, Any], json_path: Path) -> list[Category]:
    cats = _list(data, "categories", json_path)
    if not cats:
        raise CocoFormatError(f"{json_path}: 'categories' is empty")
    for c in cats:
        _int_field(c, "id", json_path, "a category")
    try:
        return contiguous_categories(cats)
    except ValueError as e:
        raise CocoFormatError(f"{json_path}: {e}") from e


def _list(data: dict[str, Any], key: str, json_path: Path) -> list[dict[str, Any]]:
    value = data.get(key)
    if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
        raise CocoFormatError(f"{json_path}: '{key}' must be a list of objects")
    return value


def _int_field(obj: dict[str, Any], key: str, json_path: Path, where: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise CocoFormatError(f"{json_path}: {where} has {key}={value!r}; expected an integer")
    return int(value)


def _annotation(
    ann: dict[str, Any], image: dict[str, Any], categories: set[int], json_path: Path, where: str
) -> dict[str, Any] | None:
    """Validate one annotation; return its record, or None when detectron2 would skip it (no valid polygon)."""
    category_id = _int_field(ann, "category_id", json_path, where)
    if category_id not in categories:
        raise CocoFormatError(
            f"{json_path}: {where} has category_id {category_id}, which is not in 'categories' {sorted(categories)}"
        )
    if ann.get("ignore", 0) != 0:
        raise CocoFormatError(f"{json_path}: {where} sets 'ignore', which detectron2 does not support; use iscrowd")
    bbox = ann.get("bbox")
    if (
        not isinstance(bbox, list)
        or len(bbox) != 4
        or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in bbox)
    ):
        raise CocoFormatError(f"{json_path}: {where} has bbox={bbox!r}; expected [x, y, width, height]")
    iscrowd = ann.get("iscrowd", 0)
    if iscrowd not in (0, 1):
        raise CocoFormatError(f"{json_path}: {where} has iscrowd={iscrowd!r}; expected 0 or 1")
    area = ann.get("area")
    if area is not None and (isinstance(area, bool) or not isinstance(area, numbers.Real)):
        raise CocoFormatError(f"{json_path}: {where} has area={area!r}; expected a number")

    segm = ann.get("segmentation")
    if not segm:
        raise CocoFormatError(
            f"{json_path}: {where} has no segmentation; Mask R-CNN needs a mask (polygons or RLE) for every instance"
        )
    if isinstance(segm, dict):
        _check_rle(segm, image["height"], image["width"], json_path, where)
    elif isinstance(segm, list):
        if not all(isinstance(p, list) and all(isinstance(v, numbers.Real) for v in p) for p in segm):
            raise CocoFormatError(
                f"{json_path}: {where} has a malformed polygon segmentation; expected a list of [x0, y0, x1, y1, ...]"
            )
        segm = [p for p in segm if len(p) % 2 == 0 and len(p) >= 6]
        if not segm:
            return None
    else:
        raise CocoFormatError(f"{json_path}: {where} has a segmentation of type {type(segm).__name__}")
    return {
        "id": int(ann["id"]),
        "category_id": category_id,
        "bbox": list(bbox),
        "iscrowd": int(iscrowd),
        "area": None if area is None else float(area),
        "segmentation": segm,
    }


def _check_rle(segm: dict[str, Any], height: int, width: int, json_path: Path, where: str) -> None:
    size = segm.get("size")
    counts = segm.get("counts")
    if not isinstance(size, list) or len(size) != 2 or counts is None:
        raise CocoFormatError(f"{json_path}: {where} has an RLE without a [height, width] 'size' and 'counts'")
    if [int(size[0]), int(size[1])] != [height, width]:
        raise CocoFormatError(
            f"{json_path}: {where} has an RLE of size {size} [height, width], but its image is {height}x{width}"
        )
    if isinstance(counts, list):
        if not all(isinstance(c, numbers.Integral) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise CocoFormatError(f"{json_path}: {where} has RLE counts that are not non-negative integers")
        if sum(counts) != height * width:
            raise CocoFormatError(
                f"{json_path}: {where} has RLE counts summing to {sum(counts)}, expected height*width = "
                f"{height * width}"
            )
    elif not isinstance(counts, (str, bytes)):
        raise CocoFormatError(f"{json_path}: {where} has RLE counts of type {type(counts).__name__}")
