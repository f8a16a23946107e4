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

The json is read by ``coco.CocoReader``, the same pass ``load_coco_json`` runs (this module collects every problem
where loading stops at the first), and the image rules are ``mapper.py``'s (``read_image_bgr``,
``check_image_size``), so the check accepts exactly what training can load. A split without fatal problems keeps
its loaded records (``DataReport.loaded``): the datamodule trains on them without reading the json again. Images
are opened one at a time.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from segmentation.data.coco import Category, CocoFormatError, CocoReader, CocoSplit, ImageRecord, Problem, read_json
from segmentation.data.images import LUNG_CT, CtWindow, grey_levels, read_image_bgr
from segmentation.data.mapper import SizeMismatchError, check_image_size
from segmentation.errors import UserError

if TYPE_CHECKING:
    from segmentation.data.datamodule import CocoDataModule

logger = logging.getLogger(__name__)

FEW_GREY_LEVELS = (
    "16-bit image whose values collapse to fewer than 8 grey levels after the CT window (check --data.window_center, "
    "--data.window_width and --data.intensity_offset)"
)
MIN_GREY_LEVELS = 8

EXAMPLES_PER_KIND = 3
"""How many examples of each tolerated kind a report keeps and prints."""
MAX_PRINTED_FATAL = 200
"""``DataReport.format`` prints at most this many fatal problems; the count is always complete."""


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
    loaded: CocoSplit | None = None
    """The split's records as ``load_coco_json`` returns them, when its json has no fatal problem."""

    @property
    def ok(self) -> bool:
        """True when nothing fatal was found (tolerated findings do not stop training)."""
        return not self.fatal

    def add(self, problem: Problem) -> None:
        """Record one finding: a tolerated one is counted under its kind (the first few kept as examples), the
        others are fatal for training."""
        if problem.severity != "tolerated":
            self.fatal.append(problem)
            return
        self.tolerated[problem.kind] += 1
        kept = self.examples.setdefault(problem.kind, [])
        if len(kept) < EXAMPLES_PER_KIND:
            kept.append(problem)

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
    try:
        data = read_json(Path(json_path))
    except CocoFormatError as e:
        report.add(Problem(str(json_path), None, None, str(e)))
        return report
    reader = CocoReader(
        json_path,
        image_root,
        report.add,
        allow_outside_root=allow_outside_root,
        check_image=(lambda image: _check_image_file(image, window)) if check_images else None,
        decode_masks=True,
    )
    split = reader.read(data)
    report.images, report.annotations = reader.image_entries, reader.annotation_entries
    report.categories = split.categories
    if report.ok:
        report.loaded = split
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
            report.add(Problem(str(json_path), None, None, message))
        reports.append(report)
    return reports


def check_datamodule_splits(datamodule: CocoDataModule, *, check_images: bool = True) -> list[DataReport]:
    """Check the train/val/test splits a ``CocoDataModule`` was given, before any of them is loaded.

    Tolerated findings are logged as warnings. ``check_images=False`` reads the jsons only (no image is opened).
    When nothing is fatal, the datamodule keeps the records read here, so it does not parse its jsons again.

    Returns:
        One report per given split, in train, val, test order.

    Raises:
        DataError: when any split has a fatal problem; its message is the report of every split.
    """
    reports = check_splits(
        datamodule.splits(),
        allow_outside_root=datamodule.allow_outside_root,
        check_images=check_images,
        window=datamodule.window,
    )
    if not all(r.ok for r in reports):
        raise DataError(reports)
    for report in reports:
        if report.tolerated:
            logger.warning("%s", report.format())
        datamodule.keep_loaded(report.split, report.loaded)
    return reports


def _check_image_file(image: ImageRecord, window: CtWindow) -> list[Problem]:
    """The problems of one image file: open, verify and fully decode it as training will, compare its size with the
    json's, and count the grey levels a 16-bit slice keeps after the CT window."""
    path = image.file_name
    if not Path(path).is_file():
        return [Problem(path, image.image_id, None, f"image id {image.image_id}: the file does not exist")]
    try:
        with Image.open(path) as opened:
            opened.verify()  # checksums (PNG CRCs) that a plain decode does not look at
        decoded = read_image_bgr(path)  # a truncated or corrupt JPEG fails here
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...: all bad data
        return [Problem(path, image.image_id, None, f"image id {image.image_id} cannot be decoded ({e})")]
    try:
        check_image_size(image, decoded)
    except SizeMismatchError as e:
        return [Problem(path, image.image_id, None, str(e))]
    if (levels := grey_levels(path, window)) and levels[1] < min(levels[0], MIN_GREY_LEVELS):
        message = f"image id {image.image_id}: {levels[0]} stored values map to {levels[1]} grey levels"
        return [Problem(path, image.image_id, None, message, "tolerated", FEW_GREY_LEVELS)]
    return []
