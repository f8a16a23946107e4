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
import math
import numbers
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_util

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


@dataclass
class CocoSplit:
    """A loaded json: its images sorted by id, its categories (with model labels) and where it came from."""

    images: list[ImageRecord]
    categories: list[Category]
    json_path: Path


def read_categories(json_path: str | Path) -> list[Category]:
    """The categories of a json with their model labels, without validating images or annotations."""
    json_path = Path(json_path)
    with _naming_file(json_path):
        return parse_categories(read_json(json_path))


def load_coco_json(json_path: str | Path, image_root: str | Path, *, allow_outside_root: bool = False) -> CocoSplit:
    """Load a COCO instance-segmentation json into per-image records, with detectron2's rules.

    detectron2's rules (``detectron2/data/datasets/coco.py: load_coco_json``): images sorted by id; annotations kept
    in json order; polygons with an odd number of coordinates or fewer than 3 points dropped, and an instance left
    without any valid polygon skipped; RLE (compressed or uncompressed) kept. Crowd annotations are kept here (the
    training mapper drops them; the FILTER_EMPTY_ANNOTATIONS rule needs to see them). ``check.py`` reports the
    dropped polygons and the other records detectron2 tolerates, over the whole json.

    Args:
        json_path: the COCO json file.
        image_root: folder the json's ``file_name`` entries are relative to.
        allow_outside_root: accept file names that resolve outside ``image_root`` (absolute paths, ``..``).

    Returns:
        The split.

    Raises:
        CocoFormatError: naming the json file and the image/annotation id, for an annotation of an unknown image
            or category, duplicate ids, a missing, malformed or non-finite field, an RLE whose size differs from its
            image or whose counts do not sum to height*width, or a file name outside ``image_root``.
    """
    json_path = Path(json_path)
    root = Path(image_root).resolve()
    with _naming_file(json_path):
        data = read_json(json_path)
        categories = parse_categories(data)
        known_categories = {c.id for c in categories}

        images: dict[int, ImageRecord] = {}
        for entry in coco_list(data, "images"):
            image = parse_image(entry, root, allow_outside_root=allow_outside_root)
            if image.image_id in images:
                raise CocoFormatError(f"image id {image.image_id} appears more than once in 'images'")
            images[image.image_id] = image

        annotations: dict[int, list[dict[str, Any]]] = {image_id: [] for image_id in images}
        seen_annotations: set[int] = set()
        for entry in coco_list(data, "annotations"):
            image_id, record = parse_annotation(entry, images, known_categories)
            if record["id"] in seen_annotations:
                raise CocoFormatError(f"annotation id {record['id']} appears more than once in 'annotations'")
            seen_annotations.add(record["id"])
            segmentation = record["segmentation"]
            if isinstance(segmentation, list):
                segmentation = valid_polygons(segmentation)
                if not segmentation:
                    continue
            annotations[image_id].append({**record, "segmentation": segmentation})

    records = [replace(image, annotations=tuple(annotations[image_id])) for image_id, image in sorted(images.items())]
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


def read_json(json_path: Path) -> dict[str, Any]:
    """The json object of a COCO file; CocoFormatError when it cannot be read, is not json or not an object."""
    try:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise CocoFormatError(f"cannot be read ({e.strerror or e})") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CocoFormatError(f"not valid json ({e})") from e
    if not isinstance(data, dict):
        raise CocoFormatError("expected a json object with 'images', 'annotations', 'categories'")
    return data


def parse_categories(data: dict[str, Any]) -> list[Category]:
    """The json's ``categories`` with their model labels; CocoFormatError when missing, empty or duplicated."""
    cats = coco_list(data, "categories")
    if not cats:
        raise CocoFormatError("'categories' is empty")
    for c in cats:
        int_field(c, "id", "a category")
    try:
        return contiguous_categories(cats)
    except ValueError as e:
        raise CocoFormatError(str(e)) from e


def coco_list(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """``data[key]`` as a list of json objects; CocoFormatError otherwise."""
    value = data.get(key)
    if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
        raise CocoFormatError(f"'{key}' must be a list of objects")
    return value


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

    segm = entry.get("segmentation")
    if not segm:
        raise CocoFormatError(
            f"{where} has no segmentation; Mask R-CNN needs a mask (polygons or RLE) for every instance"
        )
    if isinstance(segm, dict):
        _check_rle(segm, image.height, image.width, where)
    elif isinstance(segm, list):
        if not all(isinstance(p, list) and all(_is_real(v) for v in p) for p in segm):
            raise CocoFormatError(
                f"{where} has a malformed polygon segmentation; expected a list of [x0, y0, x1, y1, ...]"
            )
        if not all(math.isfinite(v) for p in segm for v in p):
            raise CocoFormatError(f"{where} has a polygon with a non-finite coordinate")
    else:
        raise CocoFormatError(f"{where} has a segmentation of type {type(segm).__name__}")
    record = {
        "id": ann_id,
        "category_id": category_id,
        "bbox": list(bbox),
        "iscrowd": int(iscrowd),
        "area": None if area is None else float(area),
        "segmentation": segm,
    }
    return image_id, record


def valid_polygons(polygons: list[list[float]]) -> list[list[float]]:
    """detectron2's polygon rule: keep polygons with an even number of coordinates and at least 3 points."""
    return [p for p in polygons if len(p) % 2 == 0 and len(p) >= 6]


@contextmanager
def _naming_file(json_path: Path) -> Iterator[None]:
    """Prefix the json path to the CocoFormatErrors raised inside, so a loading error names its file."""
    try:
        yield
    except CocoFormatError as e:
        raise CocoFormatError(f"{json_path}: {e}") from e


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_rle(segm: dict[str, Any], height: int, width: int, where: str) -> None:
    size = segm.get("size")
    counts = segm.get("counts")
    if not isinstance(size, list) or len(size) != 2 or not all(_is_real(v) for v in size) or counts is None:
        raise CocoFormatError(f"{where} has an RLE without a [height, width] 'size' and 'counts'")
    if size != [height, width]:
        raise CocoFormatError(f"{where} has an RLE of size {size} [height, width], but its image is {height}x{width}")
    if isinstance(counts, list):
        if not all(isinstance(c, numbers.Integral) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise CocoFormatError(f"{where} has RLE counts that are not non-negative integers")
    elif isinstance(counts, (str, bytes)):
        counts = _compressed_counts(counts.encode() if isinstance(counts, str) else counts)
        if counts is None:
            raise CocoFormatError(f"{where} has compressed RLE counts that are not a valid COCO RLE string")
    else:
        raise CocoFormatError(f"{where} has RLE counts of type {type(counts).__name__}")
    if sum(counts) != height * width:
        raise CocoFormatError(
            f"{where} has RLE counts summing to {sum(counts)}, expected height*width = {height * width}"
        )


def _compressed_counts(counts: bytes) -> list[int] | None:
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``), or None if it is invalid.

    pycocotools decodes an invalid or short string without complaint, reading past its buffer, so it is checked here.
    """
    runs: list[int] = []
    value = shift = 0
    for byte in counts:
        c = byte - 48
        if not 0 <= c < 64:
            return None
        value |= (c & 0x1F) << shift
        shift += 5
        if c & 0x20:
            continue
        if c & 0x10:
            value -= 1 << shift
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            return None
        runs.append(value)
        value = shift = 0
    return None if shift else runs
