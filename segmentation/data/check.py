"""Dataset validation: every json record and image file of a split checked once, all problems reported together.

Why this exists: ``load_coco_json`` stops at the first bad record and images are only decoded when a worker reaches
them, so a broken dataset can cost a night — one failure hours into training, then the next one after the fix.
This module reads the whole split once, before training (``fit``) or on its own (``python -m
segmentation.check_data``), and returns one report naming, for each problem, the file, the image id, the
annotation id and what is wrong.

Two kinds of findings, as detectron2 treats them:

* fatal: what would crash or silently corrupt training — an unreadable, corrupt or missing image, an image whose
  decoded size differs from the json, an annotation of an unknown image or category, a malformed segmentation (an
  odd number of polygon coordinates, an RLE whose size differs from its image or whose counts do not sum to h*w),
  a non-finite number, a duplicate id, a file name outside the image root, a json that is unreadable or not COCO;
* tolerated, counted with a few examples: what detectron2 drops on its own — empty (area-0) masks, degenerate
  boxes, polygons with fewer than 3 points, images without annotations. The lung-CT data keeps an area-0
  annotation on every empty slice, so these are warnings, not errors.

The record rules are ``coco.py``'s (``parse_image``, ``parse_annotation``) and the image rules ``mapper.py``'s
(``read_image_bgr``, ``check_image_size``), so the check accepts exactly what training can load. Memory: beyond the
parsed json, only the image sizes, the ids seen and the problems are kept; images are opened one at a time.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from segmentation.data.coco import (
    Category,
    CocoFormatError,
    ImageRecord,
    decode_mask,
    parse_annotation,
    parse_categories,
    parse_image,
    read_json,
    valid_polygons,
)
from segmentation.data.images import LUNG_CT, CtWindow, grey_levels, read_image_bgr
from segmentation.data.mapper import SizeMismatchError, check_image_size
from segmentation.errors import UserError

if TYPE_CHECKING:
    from segmentation.data.datamodule import CocoDataModule

logger = logging.getLogger(__name__)

EMPTY_MASK = "empty mask or area 0 (no training target; detectron2 drops the instance)"
DEGENERATE_BOX = "degenerate box, width or height <= 0 (no training target; detectron2 drops the instance)"
SHORT_POLYGON = "polygon with fewer than 3 points (dropped; an instance left without a polygon is skipped)"
NO_ANNOTATIONS = "image without annotations (skipped in training when filter_empty_annotations is on)"
FEW_GREY_LEVELS = (
    "16-bit image whose values collapse to fewer than 8 grey levels after the CT window (check --data.window_center, "
    "--data.window_width and --data.intensity_offset)"
)
MIN_GREY_LEVELS = 8

EXAMPLES_PER_KIND = 3
"""How many examples of each tolerated kind a report keeps and prints."""
MAX_PRINTED_FATAL = 200
"""``DataReport.format`` prints at most this many fatal problems; the count is always complete."""


@dataclass(frozen=True)
class Problem:
    """One finding: the file it is in (the json, or an image file), the ids it concerns and a readable message."""

    file: str
    image_id: int | None
    annotation_id: int | None
    message: str

    def format(self) -> str:
        """``file: message``; messages that already start with the file name (the mapper's) are not prefixed."""
        return self.message if self.message.startswith(self.file) else f"{self.file}: {self.message}"


@dataclass
class DataReport:
    """Everything found in one split: fatal problems, tolerated counts with examples, and what was read."""

    json_path: str
    image_root: str
    split: str = ""
    images: int = 0
    annotations: int = 0
    categories: list[Category] = field(default_factory=list)
    fatal: list[Problem] = field(default_factory=list)
    tolerated: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[Problem]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when nothing fatal was found (tolerated findings do not stop training)."""
        return not self.fatal

    def tolerate(self, kind: str, example: Problem) -> None:
        """Count one tolerated finding of ``kind``, keeping the first few as examples."""
        self.tolerated[kind] += 1
        kept = self.examples.setdefault(kind, [])
        if len(kept) < EXAMPLES_PER_KIND:
            kept.append(example)

    def format(self) -> str:
        """The report as text: a summary line, every fatal problem (up to a limit), each tolerated kind's count."""
        name = f"{self.split}: " if self.split else ""
        verdict = f"{len(self.fatal)} fatal problem(s)" if self.fatal else "OK"
        lines = [
            f"{name}{self.json_path} (images in {self.image_root}): {self.images} images, "
            f"{self.annotations} annotations — {verdict}"
        ]
        for problem in self.fatal[:MAX_PRINTED_FATAL]:
            lines.append(f"  FATAL {problem.format()}")
        if len(self.fatal) > MAX_PRINTED_FATAL:
            lines.append(f"  ... and {len(self.fatal) - MAX_PRINTED_FATAL} more fatal problems")
        for kind, count in sorted(self.tolerated.items()):
            lines.append(f"  warning: {count} x {kind}, e.g.")
            lines.extend(f"    {example.format()}" for example in self.examples[kind])
        return "\n".join(lines)


class DataError(UserError, ValueError):
    """A split has fatal problems; the message is the formatted report of every split checked.

    A :class:`UserError`: the entry points print the report and exit without a traceback.
    """

    def __init__(self, reports: Sequence[DataReport]) -> None:
        self.reports = list(reports)
        super().__init__("\n".join(r.format() for r in self.reports))


def check_split(
    json_path: str | Path,
    image_root: str | Path,
    *,
    allow_outside_root: bool = False,
    check_images: bool = True,
    window: CtWindow = LUNG_CT,
) -> DataReport:
    """Check one COCO json and its images, collecting every problem in one pass.

    Args:
        json_path: the COCO instance json.
        image_root: the folder its ``file_name`` entries are relative to.
        allow_outside_root: accept file names that resolve outside ``image_root`` (absolute paths, ``..``).
        check_images: also open and fully decode every image (off: the json alone is checked).
        window: how training maps 16-bit slices; a slice left with a few grey levels is reported.

    Returns:
        The report; ``report.ok`` is False when training must not start.
    """
    report = DataReport(json_path=str(json_path), image_root=str(image_root))
    json_file = str(json_path)
    try:
        data = read_json(Path(json_path))
    except CocoFormatError as e:
        report.fatal.append(Problem(json_file, None, None, str(e)))
        return report

    known_categories: set[int] | None = None
    try:
        report.categories = parse_categories(data)
        known_categories = {c.id for c in report.categories}
    except CocoFormatError as e:
        report.fatal.append(Problem(json_file, None, None, str(e)))

    images, broken = _check_images(data, Path(image_root).resolve(), report, allow_outside_root, check_images, window)
    if report.images == 0 and not report.fatal:
        report.fatal.append(Problem(json_file, None, None, "the json has no images: nothing to train on or evaluate"))
    annotated = _check_annotations(data, images, broken, known_categories, report)
    for image_id in images.keys() - annotated:
        report.tolerate(NO_ANNOTATIONS, Problem(json_file, image_id, None, f"image id {image_id} has no annotation"))
    return report


def check_splits(
    splits: Sequence[tuple[str, str | Path, str | Path]],
    *,
    allow_outside_root: bool = False,
    check_images: bool = True,
    window: CtWindow = LUNG_CT,
) -> list[DataReport]:
    """Check ``(name, json, image_root)`` splits; a split whose categories differ from the first split's is fatal.

    All splits must share their categories, or a label would mean different classes in training and evaluation.
    """
    reports = []
    for name, json_path, image_root in splits:
        report = check_split(
            json_path, image_root, allow_outside_root=allow_outside_root, check_images=check_images, window=window
        )
        report.split = name
        first = reports[0].categories if reports else report.categories
        if report.categories and first and report.categories != first:
            message = (
                f"categories {[(c.id, c.name) for c in report.categories]} differ from "
                f"{[(c.id, c.name) for c in first]} of the {reports[0].split} split; labels would not match"
            )
            report.fatal.append(Problem(str(json_path), None, None, message))
        reports.append(report)
    return reports


def check_datamodule_splits(datamodule: CocoDataModule, *, check_images: bool = True) -> list[DataReport]:
    """Check the train/val/test splits a ``CocoDataModule`` was given, before any of them is loaded.

    Tolerated findings are logged as warnings. ``check_images=False`` reads the jsons only (no image is opened).

    Returns:
        One report per given split, in train, val, test order.

    Raises:
        DataError: when any split has a fatal problem; its message is the report of every split.
    """
    splits = [
        (name, getattr(datamodule, f"{name}_json"), getattr(datamodule, f"{name}_images"))
        for name in ("train", "val", "test")
        if getattr(datamodule, f"{name}_json") is not None
    ]
    reports = check_splits(
        splits, allow_outside_root=datamodule.allow_outside_root, check_images=check_images, window=datamodule.window
    )
    if not all(r.ok for r in reports):
        raise DataError(reports)
    for report in reports:
        if report.tolerated:
            logger.warning("%s", report.format())
    return reports


def _entries(data: dict[str, Any], key: str, report: DataReport) -> Iterator[dict[str, Any]]:
    """The json objects of ``data[key]``; a missing list or a non-object entry is fatal."""
    value = data.get(key)
    if not isinstance(value, list):
        report.fatal.append(Problem(report.json_path, None, None, f"'{key}' must be a list of objects"))
        return
    for index, entry in enumerate(value):
        if isinstance(entry, dict):
            yield entry
        else:
            report.fatal.append(Problem(report.json_path, None, None, f"'{key}'[{index}] is not a json object"))


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _check_images(
    data: dict[str, Any],
    root: Path,
    report: DataReport,
    allow_outside_root: bool,
    check_images: bool,
    window: CtWindow,
) -> tuple[dict[int, ImageRecord], set[int]]:
    """Every ``images`` entry, and its file unless ``check_images`` is off.

    Returns:
        The valid images by id, and the ids of the entries found invalid (their annotations are not checked, so
        one bad image entry is reported once rather than once per annotation).
    """
    images: dict[int, ImageRecord] = {}
    broken: set[int] = set()
    for entry in _entries(data, "images", report):
        report.images += 1
        try:
            image = parse_image(entry, root, allow_outside_root=allow_outside_root)
        except CocoFormatError as e:
            image_id = _int_or_none(entry.get("id"))
            report.fatal.append(Problem(report.json_path, image_id, None, str(e)))
            if image_id is not None:
                broken.add(image_id)
            continue
        if image.image_id in images:
            message = f"image id {image.image_id} appears more than once in 'images'"
            report.fatal.append(Problem(report.json_path, image.image_id, None, message))
            continue
        images[image.image_id] = image
        if check_images:
            problem = _check_image_file(image)
            if problem is not None:
                report.fatal.append(problem)
            elif (levels := grey_levels(image.file_name, window)) and levels[1] < min(levels[0], MIN_GREY_LEVELS):
                message = f"image id {image.image_id}: {levels[0]} stored values map to {levels[1]} grey levels"
                report.tolerate(FEW_GREY_LEVELS, Problem(image.file_name, image.image_id, None, message))
    return images, broken


def _check_image_file(image: ImageRecord) -> Problem | None:
    """Open, verify and fully decode one image as training will, and compare its size with the json's."""
    path = image.file_name
    if not Path(path).is_file():
        return Problem(path, image.image_id, None, f"image id {image.image_id}: the file does not exist")
    try:
        with Image.open(path) as opened:
            opened.verify()  # checksums (PNG CRCs) that a plain decode does not look at
        decoded = read_image_bgr(path)  # a truncated or corrupt JPEG fails here
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...: all bad data
        return Problem(path, image.image_id, None, f"image id {image.image_id} cannot be decoded ({e})")
    try:
        check_image_size(image, decoded)
    except SizeMismatchError as e:
        return Problem(path, image.image_id, None, str(e))
    return None


def _check_annotations(
    data: dict[str, Any],
    images: dict[int, ImageRecord],
    broken: set[int],
    categories: set[int] | None,
    report: DataReport,
) -> set[int]:
    """Every ``annotations`` entry but those of ``broken`` images; returns the ids of the annotated images."""
    json_file = report.json_path
    annotated: set[int] = set()
    seen: set[int] = set()
    for entry in _entries(data, "annotations", report):
        report.annotations += 1
        ann_id = _int_or_none(entry.get("id"))
        image_id = _int_or_none(entry.get("image_id"))
        if ann_id is not None and ann_id in seen:
            message = f"annotation id {ann_id} appears more than once in 'annotations'"
            report.fatal.append(Problem(json_file, image_id, ann_id, message))
            continue
        if ann_id is not None:
            seen.add(ann_id)
        if image_id in broken:
            continue
        if image_id in images:
            annotated.add(image_id)  # even if the annotation is bad: the image is not "without annotations"
        try:
            image_id, record = parse_annotation(entry, images, categories)
        except CocoFormatError as e:
            report.fatal.append(Problem(json_file, image_id, ann_id, str(e)))
            continue
        _check_instance(record, images[image_id], report)
    return annotated


def _check_instance(record: dict[str, Any], image: ImageRecord, report: DataReport) -> None:
    """Polygon lengths (odd is fatal, < 3 points tolerated), then an empty mask or a degenerate box (tolerated)."""
    where = f"annotation id {record['id']} (image id {image.image_id})"

    def problem(message: str) -> Problem:
        return Problem(report.json_path, image.image_id, record["id"], f"{where} {message}")

    segmentation = record["segmentation"]
    if isinstance(segmentation, list):
        odd = [i for i, polygon in enumerate(segmentation) if len(polygon) % 2]
        if odd:
            report.fatal.append(problem(f"has polygons {odd} with an odd number of coordinates"))
            return
        segmentation = valid_polygons(segmentation)
        if len(segmentation) < len(record["segmentation"]):
            report.tolerate(SHORT_POLYGON, problem("has a polygon with fewer than 3 points"))
            if not segmentation:
                return
    width, height = record["bbox"][2:]
    if record["area"] == 0:
        report.tolerate(EMPTY_MASK, problem("has area 0"))
    elif not decode_mask(segmentation, image.height, image.width).any():
        report.tolerate(EMPTY_MASK, problem("has an empty mask"))
    elif width <= 0 or height <= 0:
        report.tolerate(DEGENERATE_BOX, problem(f"has bbox {record['bbox']}"))
