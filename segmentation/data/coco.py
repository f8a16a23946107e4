"""COCO instance json: categories, images and annotations, read the way detectron2's ``load_coco_json`` reads them.

Why this exists: detectron2 turns a json into per-image records with a few silent rules (sorted image ids, category
ids mapped to contiguous labels in sorted order, invalid polygons dropped, instances without a valid polygon
skipped). Our numbers only match detectron2's if we apply the same rules, so they live here, in one place. Where
detectron2 would fail deep inside training with an assertion (or silently ignore a broken record), we stop at load
time with an error that names the json file, the record id and the problem, because the person holding the data
is the one who can fix it.

One pass (``CocoReader``) reads a json: it checks every record once, keeps what detectron2 keeps and hands each
problem it finds to a callback. ``load_coco_json`` raises at the first fatal one; ``check.check_split`` collects
them all for its report. The field rules themselves are in ``coco_records.py``.

The records keep the json's own values (bbox XYWH as written, json category ids, the segmentation as written but
with invalid polygons removed); turning them into model targets is ``mapper.py``'s job.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pycocotools import mask as mask_util

from segmentation.data.coco_records import (
    Category,
    CocoFormatError,
    ImageRecord,
    parse_annotation,
    parse_categories,
    parse_image,
    valid_polygons,
)

EMPTY_MASK = "empty mask or area 0 (no training target; detectron2 drops the instance)"
DEGENERATE_BOX = "degenerate box, width or height <= 0 (no training target; detectron2 drops the instance)"
SHORT_POLYGON = "polygon with fewer than 3 points (dropped; an instance left without a polygon is skipped)"
NO_ANNOTATIONS = "image without annotations (skipped in training when filter_empty_annotations is on)"

Severity = Literal["fatal", "refused", "tolerated"]


@dataclass(frozen=True)
class Problem:
    """One finding: the file it is in (the json, or an image file), the ids it concerns and a readable message.

    ``severity``: ``fatal``, the record cannot be used (loading stops); ``refused``, detectron2 would go on (dropping
    the record, or training on nothing) but the check refuses it; ``tolerated``, what detectron2 drops on its own,
    counted by the check under ``kind``.
    """

    file: str
    image_id: int | None
    annotation_id: int | None
    message: str
    severity: Severity = "fatal"
    kind: str = ""

    def format(self) -> str:
        """``file: message``; messages that already start with the file name (the mapper's) are not prefixed."""
        return self.message if self.message.startswith(self.file) else f"{self.file}: {self.message}"


@dataclass
class CocoSplit:
    """A loaded json: its images sorted by id, its categories (with model labels) and where it came from.

    ``data`` is the parsed json itself: the evaluator scores against the original records (sizes, ``area``,
    ``iscrowd``) and takes them from here rather than parsing the file again (None for a training split, which the
    datamodule does not keep twice).
    """

    images: list[ImageRecord]
    categories: list[Category]
    json_path: Path
    data: dict[str, Any] | None


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
    data = read_json(Path(json_path))
    return CocoReader(json_path, image_root, _stop_at_fatal, allow_outside_root=allow_outside_root).read(data)


def read_json(json_path: Path) -> dict[str, Any]:
    """The json object of a COCO file, the one place a dataset json is parsed.

    Raises:
        CocoFormatError: naming the file, when it cannot be read, is not json or not an object.
    """
    try:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise CocoFormatError(f"{json_path}: cannot be read ({e.strerror or e})") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CocoFormatError(f"{json_path}: not valid json ({e})") from e
    if not isinstance(data, dict):
        raise CocoFormatError(f"{json_path}: expected a json object with 'images', 'annotations', 'categories'")
    return data


class CocoReader:
    """One pass over a parsed COCO json: every record checked once, the usable ones kept, each problem reported.

    Each problem goes to ``on_problem`` as it is found, in json order; ``load_coco_json``'s raises at the first
    fatal one, the check's collects them all. After a fatal problem the pass goes on with what is still usable (an
    annotation of a broken image entry is not checked, so one bad entry is reported once).
    """

    def __init__(
        self,
        json_path: str | Path,
        image_root: str | Path,
        on_problem: Callable[[Problem], None],
        *,
        allow_outside_root: bool = False,
        check_image: Callable[[ImageRecord], list[Problem]] | None = None,
        decode_masks: bool = False,
    ) -> None:
        """Args:
        json_path: the json the data was read from (named in every problem and kept in the split).
        image_root: the folder its ``file_name`` entries are relative to.
        on_problem: called with each problem.
        allow_outside_root: accept file names that resolve outside ``image_root``.
        check_image: the problems of an image's file, called for each valid image entry as it is read.
        decode_masks: also decode each instance's mask to find empty ones (the check does; loading does not).
        """
        self.json_path = Path(json_path)
        self.json_file = str(json_path)
        self.root = Path(image_root).resolve()
        self.on_problem = on_problem
        self.allow_outside_root = allow_outside_root
        self.check_image = check_image
        self.decode_masks = decode_masks
        self.image_entries = 0  # json objects in 'images', valid or not
        self.annotation_entries = 0  # json objects in 'annotations', valid or not
        self._failed = False

    def read(self, data: dict[str, Any]) -> CocoSplit:
        """The split as detectron2 loads it, from ``data`` (a json object read by ``read_json``)."""
        categories = self._categories(data)
        images, broken = self._images(data)
        if self.image_entries == 0 and not self._failed:
            message = "the json has no images: nothing to train on or evaluate"
            self._report(Problem(self.json_file, None, None, message, "refused"))
        known = None if categories is None else {c.id for c in categories}
        annotations, annotated = self._annotations(data, images, broken, known)
        for image_id in images.keys() - annotated:
            message = f"image id {image_id} has no annotation"
            self._report(Problem(self.json_file, image_id, None, message, "tolerated", NO_ANNOTATIONS))
        records = [replace(image, annotations=tuple(annotations[i])) for i, image in sorted(images.items())]
        return CocoSplit(images=records, categories=categories or [], json_path=self.json_path, data=data)

    def _report(self, problem: Problem) -> None:
        self._failed |= problem.severity != "tolerated"
        self.on_problem(problem)

    def _fatal(self, image_id: int | None, annotation_id: int | None, message: str) -> None:
        self._report(Problem(self.json_file, image_id, annotation_id, message))

    def _entries(self, data: dict[str, Any], key: str) -> Iterator[dict[str, Any]]:
        """The json objects of ``data[key]``; a missing list or a non-object entry is fatal."""
        value = data.get(key)
        if not isinstance(value, list):
            self._fatal(None, None, f"'{key}' must be a list of objects")
            return
        for index, entry in enumerate(value):
            if isinstance(entry, dict):
                yield entry
            else:
                self._fatal(None, None, f"'{key}'[{index}] is not a json object")

    def _categories(self, data: dict[str, Any]) -> list[Category] | None:
        """The categories with their labels; None when ``categories`` is broken (annotations are then not matched)."""
        try:
            return parse_categories(data)
        except CocoFormatError as e:
            self._fatal(None, None, str(e))
            return None

    def _images(self, data: dict[str, Any]) -> tuple[dict[int, ImageRecord], set[int]]:
        """The valid image entries by id (their files checked by ``check_image``), and the ids of the invalid ones."""
        images: dict[int, ImageRecord] = {}
        broken: set[int] = set()
        for entry in self._entries(data, "images"):
            self.image_entries += 1
            try:
                image = parse_image(entry, self.root, allow_outside_root=self.allow_outside_root)
            except CocoFormatError as e:
                image_id = _int_or_none(entry.get("id"))
                self._fatal(image_id, None, str(e))
                if image_id is not None:
                    broken.add(image_id)
                continue
            if image.image_id in images:
                self._fatal(image.image_id, None, f"image id {image.image_id} appears more than once in 'images'")
                continue
            images[image.image_id] = image
            for problem in self.check_image(image) if self.check_image is not None else []:
                self._report(problem)
        return images, broken

    def _annotations(
        self, data: dict[str, Any], images: dict[int, ImageRecord], broken: set[int], categories: set[int] | None
    ) -> tuple[dict[int, list[dict[str, Any]]], set[int]]:
        """The kept annotations by image id, and the ids of the images some annotation refers to (even a bad one)."""
        annotations: dict[int, list[dict[str, Any]]] = {image_id: [] for image_id in images}
        annotated: set[int] = set()
        seen: set[int] = set()
        for entry in self._entries(data, "annotations"):
            self.annotation_entries += 1
            ann_id, image_id = _int_or_none(entry.get("id")), _int_or_none(entry.get("image_id"))
            if ann_id is not None and ann_id in seen:
                self._fatal(image_id, ann_id, f"annotation id {ann_id} appears more than once in 'annotations'")
                continue
            if ann_id is not None:
                seen.add(ann_id)
            if image_id in broken:
                continue
            if image_id in images:
                annotated.add(image_id)
            try:
                image_id, record = parse_annotation(entry, images, categories)
            except CocoFormatError as e:
                self._fatal(image_id, ann_id, str(e))
                continue
            kept = self._instance(record, images[image_id])
            if kept is not None:
                annotations[image_id].append(kept)
        return annotations, annotated

    def _instance(self, record: dict[str, Any], image: ImageRecord) -> dict[str, Any] | None:
        """detectron2's polygon rule and the instances it drops on its own: the record kept, or None if skipped.

        Polygons with an odd number of coordinates are dropped as detectron2 drops them, but refused by the check;
        polygons with fewer than 3 points are dropped and tolerated; then an empty mask or a degenerate box is
        tolerated (the mapper drops that instance).
        """
        where = f"annotation id {record['id']} (image id {image.image_id})"

        def report(message: str, severity: Severity, kind: str = "") -> None:
            self._report(Problem(self.json_file, image.image_id, record["id"], f"{where} {message}", severity, kind))

        segmentation = record["segmentation"]
        if isinstance(segmentation, list):
            kept = valid_polygons(segmentation)
            odd = [i for i, polygon in enumerate(segmentation) if len(polygon) % 2]
            if odd:
                report(f"has polygons {odd} with an odd number of coordinates", "refused")
            elif len(kept) < len(segmentation):
                report("has a polygon with fewer than 3 points", "tolerated", SHORT_POLYGON)
            if not kept:
                return None
            record = {**record, "segmentation": kept}
            if odd:
                return record
        width, height = record["bbox"][2:]
        if record["area"] == 0:
            report("has area 0", "tolerated", EMPTY_MASK)
        elif self.decode_masks and not decode_mask(record["segmentation"], image.height, image.width).any():
            report("has an empty mask", "tolerated", EMPTY_MASK)
        elif width <= 0 or height <= 0:
            report(f"has bbox {record['bbox']}", "tolerated", DEGENERATE_BOX)
        return record


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


def _stop_at_fatal(problem: Problem) -> None:
    """``load_coco_json``'s handling: a fatal problem stops the load; what detectron2 goes on after does not."""
    if problem.severity == "fatal":
        raise CocoFormatError(problem.format())


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
