"""COCO AP through torchmetrics ``MeanAveragePrecision``, equal to detectron2's COCOEvaluator to the last digit.

torchmetrics fed naively disagrees with pycocotools by up to 30 AP points on the same detections (the study is in
``shared/reference/detectron2-parity.md``, section 5). The recipe that makes every one of the 12 bbox and 12
segm numbers identical is applied here and nowhere else:

* ground truth comes from the original json through pycocotools: masks rasterised at the json height x width, the
  json ``bbox``, the json ``area`` (which decides small/medium/large) and ``iscrowd``, crowd regions included;
* every image of the json is fed, in image-id order (COCOeval breaks score ties in that order), also images without
  ground truth or without detections, one image per ``update`` so only one image's dense masks exist at a time;
* ``iou_type=("bbox", "segm")`` in one metric (``segm`` alone drops GT-empty images and their false positives),
  detections as XYWH computed like detectron2 (float32 subtraction), so torchmetrics' bbox area is ``w * h`` and its
  segm area the mask area, as ``loadRes`` makes them after detectron2 pops ``bbox`` from the segm results;
* float64 ``np.linspace`` IoU and recall thresholds (torchmetrics' defaults are float32 and shift AP);
* torchmetrics returns the 12 stats as float32; the float64 numbers detectron2 prints are recomputed from the
  metric's float64 precision/recall arrays with ``COCOeval.summarize``'s formula.

Between updates only compact records are kept: boxes, scores and category ids as small CPU arrays and masks as
compressed RLE, the way detectron2 keeps its results. Under ``torch.distributed`` the records of all ranks are gathered
and de-duplicated by image id (a padding sampler may give an image to two ranks), rank 0 computes and broadcasts, so
every rank returns the numbers a single process would.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import io
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from pycocotools.coco import COCO
from torch import Tensor
from torchmetrics.detection import MeanAveragePrecision

from segmentation.data import rle
from segmentation.data.coco_records import contiguous_categories
from segmentation.evaluation.coco_stats import (
    IOU_THRESHOLDS,
    MAX_DETECTIONS,
    METRICS,
    REC_THRESHOLDS,
    STATS,
    category_ap,
    percent,
    summarize,
)
from segmentation.evaluation.operating_point import OperatingPointAccumulator
from segmentation.evaluation.results import coco_results, xyxy_to_xywh

Backend = Literal["faster_coco_eval", "pycocotools"]
TASKS = ("bbox", "segm")
# torchmetrics replaces an area <= 0 by the mask area; this smallest positive float is in the same COCO area ranges as 0
_ZERO_AREA = math.ulp(0.0)


def _load_malloc_trim():
    """glibc's ``malloc_trim``, or None elsewhere.

    Each update frees a few tens of MB of mask stacks while the small RLE records it keeps land between them in the
    heap; glibc then keeps the freed pages resident, and RSS grew by ~12 MB per 512x512 image with 100 detections
    (24 GB for 2,000 images) although the records take < 1 MB. Trimming after each update returns those pages.
    """
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _load_malloc_trim()


@dataclass
class ImageDetections:
    """One image's detections in the compact form kept between updates (and sent between ranks)."""

    image_id: int
    boxes_xywh: np.ndarray  # float64 (N, 4)
    scores: np.ndarray  # float64 (N,)
    category_ids: np.ndarray  # int64 (N,), json category ids
    masks: list[dict] = field(default_factory=list)  # compressed RLE, {"size": [h, w], "counts": bytes}


@dataclass
class CocoEvaluation:
    """Everything one evaluation produced.

    ``stats``: per task the 12 ``COCOeval.stats`` as fractions, -1 where COCOeval has no value (all -1 when there was
    no detection at all: detectron2 then reports NaN). ``per_category_ap``: per task ``{name: AP in percent}``, only
    when the json has more than one category (detectron2 prints it only then). ``operating_point``: see
    :mod:`segmentation.evaluation.operating_point`.
    """

    stats: dict[str, list[float]]
    per_category_ap: dict[str, dict[str, float]]
    operating_point: dict[str, float]

    def results(self) -> dict[str, dict[str, float]]:
        """detectron2's returned dict: ``{"bbox": {"AP", ..., "APl", "AP-<name>"...}, "segm": {...}}`` in percent.

        NaN where COCOeval gives -1. An extra ``"operating_point"`` entry (fractions) is not part of detectron2's
        output; :func:`segmentation.evaluation.tables.copypaste_lines` skips it.
        """
        out: dict[str, dict[str, float]] = {}
        for task, stats in self.stats.items():
            out[task] = {name: percent(stats[i]) for i, name in enumerate(METRICS)}
            out[task].update({f"AP-{name}": ap for name, ap in self.per_category_ap.get(task, {}).items()})
        out["operating_point"] = dict(self.operating_point)
        return out


class CocoEvaluator:
    """Exact COCO bbox and segm AP of a model's detections on one json split, on one process or many.

    Args:
        gt_json: the split's COCO instance json (the original one: every image, every annotation), as a path or as
            the json object already parsed (a ``CocoSplit``'s ``data``), which is then not read again.
        backend: torchmetrics' COCO backend. ``pycocotools`` (default) is COCOeval itself: every stat is bit-identical
            to detectron2's pycocotools numbers. ``faster_coco_eval`` is faster, but its precision is ``tp / (tp + fp)``
            where COCOeval divides by ``tp + fp + np.spacing(1)``: precision values differ in the last bit, so a stat
            can differ by ~1e-16 (never visible in the 3- or 4-decimal output).
        score_threshold: score at which :mod:`~segmentation.evaluation.operating_point` numbers are taken.
    """

    def __init__(
        self, gt_json: str | Path | dict[str, Any], *, backend: Backend = "pycocotools", score_threshold: float = 0.5
    ):
        if backend not in ("faster_coco_eval", "pycocotools"):
            raise ValueError(f"backend must be 'faster_coco_eval' or 'pycocotools', got {backend!r}")
        self.backend = backend
        self.score_threshold = score_threshold
        self._coco = _coco_index(gt_json)
        categories = contiguous_categories(self._coco.dataset.get("categories", []))
        self.label_to_category_id = {c.label: c.id for c in categories}
        self.category_names = {c.id: c.name for c in categories}
        self._image_sizes = {int(i): (int(img["height"]), int(img["width"])) for i, img in self._coco.imgs.items()}
        self._records: dict[int, ImageDetections] = {}
        self._ground_truths: dict[int, GroundTruth] = {}

    # ------------------------------------------------------------------ input

    def update(self, image_id: int, detections: Mapping[str, Tensor]) -> None:
        """Add one image's detections at its original size.

        Args:
            image_id: json image id; each image at most once per rank between resets.
            detections: ``boxes`` float32 ``(N, 4)`` xyxy, ``scores`` ``(N,)``, ``labels`` int64 ``(N,)`` model
                labels 1..K, ``masks`` bool ``(N, H, W)``; any device. Stored as CPU arrays and RLE.
        """
        image_id = int(image_id)
        height, width = self._size_of(image_id)
        masks = detections["masks"]
        if masks.ndim != 3 or tuple(masks.shape[1:]) != (height, width):
            raise ValueError(
                f"image {image_id}: masks must be (N, {height}, {width}) at the original size, got {tuple(masks.shape)}"
            )
        labels = detections["labels"].detach().cpu().tolist()
        unknown = set(labels) - set(self.label_to_category_id)
        if unknown:
            n = len(self.label_to_category_id)
            raise ValueError(f"image {image_id}: labels {sorted(unknown)} are not in 1..{n}")
        self._add(
            ImageDetections(
                image_id=image_id,
                boxes_xywh=xyxy_to_xywh(detections["boxes"]),
                scores=detections["scores"].detach().to(device="cpu", dtype=torch.float64).numpy(),
                category_ids=np.array([self.label_to_category_id[label] for label in labels], dtype=np.int64),
                masks=rle.encode(masks),
            )
        )
        if _MALLOC_TRIM is not None:
            _MALLOC_TRIM(0)

    def add_results(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Add detectron2 ``coco_instances_results.json`` records (json category ids, XYWH boxes, RLE segmentation).

        Boxes and RLEs are kept as written, so scoring a results file needs no dense masks until ``compute``.
        """
        by_image: dict[int, list[Mapping[str, Any]]] = {}
        for record in records:
            if "segmentation" not in record:
                raise ValueError("results records need 'segmentation' (RLE) to score segm")
            by_image.setdefault(int(record["image_id"]), []).append(record)
        for image_id, image_records in by_image.items():
            self._size_of(image_id)
            self._add(
                ImageDetections(
                    image_id=image_id,
                    boxes_xywh=np.array([r["bbox"] for r in image_records], dtype=np.float64).reshape(-1, 4),
                    scores=np.array([r["score"] for r in image_records], dtype=np.float64),
                    category_ids=np.array([r["category_id"] for r in image_records], dtype=np.int64),
                    masks=[_compressed_rle(r["segmentation"]) for r in image_records],
                )
            )

    def reset(self) -> None:
        """Forget every update (call after ``compute`` at the end of each evaluation)."""
        self._records = {}

    def _size_of(self, image_id: int) -> tuple[int, int]:
        if image_id not in self._image_sizes:
            raise ValueError(f"image id {image_id} is not in the ground-truth json")
        return self._image_sizes[image_id]

    def _add(self, record: ImageDetections) -> None:
        if record.image_id in self._records:
            raise ValueError(f"image {record.image_id} was already added since the last reset()")
        self._records[record.image_id] = record

    # ------------------------------------------------------------------ output

    def compute(self) -> dict[str, dict[str, float]]:
        """detectron2's result dict (see :meth:`CocoEvaluation.results`), identical on every rank."""
        return self.evaluate().results()

    def evaluate(self) -> CocoEvaluation:
        """Gather all ranks' records, score them once on rank 0, and return the same :class:`CocoEvaluation` on
        every rank (collective: every rank must call it)."""
        if not _distributed():
            return self._evaluate(self._records)
        merged = self._gather_on_rank_zero()
        box = [self._evaluate(merged) if merged is not None else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def coco_results(self) -> list[dict[str, Any]]:
        """All ranks' detections as detectron2's ``coco_instances_results.json`` records, in image-id order, on rank 0
        (an empty list on the other ranks; collective: every rank must call it)."""
        records = self._records if not _distributed() else self._gather_on_rank_zero()
        if records is None:
            return []
        return [
            result
            for image_id in sorted(records)
            for result in coco_results(
                image_id,
                records[image_id].boxes_xywh,
                records[image_id].scores,
                records[image_id].category_ids,
                records[image_id].masks,
            )
        ]

    def _gather_on_rank_zero(self) -> dict[int, ImageDetections] | None:
        """Every rank's records, de-duplicated by image id (first rank wins), on rank 0; None elsewhere."""
        gathered: list[list[ImageDetections] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, list(self._records.values()))
        if dist.get_rank() != 0:
            return None
        merged: dict[int, ImageDetections] = {}
        for rank_records in gathered:
            for record in rank_records or []:
                merged.setdefault(record.image_id, record)
        return merged

    def _evaluate(self, records: Mapping[int, ImageDetections]) -> CocoEvaluation:
        metric = MeanAveragePrecision(
            iou_type=TASKS,
            box_format="xywh",
            iou_thresholds=IOU_THRESHOLDS,
            rec_thresholds=REC_THRESHOLDS,
            max_detection_thresholds=MAX_DETECTIONS,
            extended_summary=True,
            backend=self.backend,
            sync_on_compute=False,  # the records are already gathered; only rank 0 computes
        )
        # COCOeval itself keeps the 100 best-scored detections per image; the warning would only repeat that.
        metric.warn_on_many_detections = False
        operating_point = OperatingPointAccumulator(score_threshold=self.score_threshold)
        empty = ImageDetections(0, np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))
        for image_id in sorted(self._image_sizes):
            ground_truth = self._ground_truth(image_id)
            record = records.get(image_id, empty)
            _append_state(metric, record, ground_truth)
            operating_point.add_image(
                record.masks,
                record.scores,
                record.category_ids,
                ground_truth.rles,
                ground_truth.category_ids.numpy(),
                ground_truth.crowd.numpy(),
            )

        metric.update([], [])  # the state was appended directly; this marks the metric as updated, adding nothing
        if not any(len(r.scores) for r in records.values()):
            # detectron2 does not run COCOeval on empty results and reports NaN for every metric
            stats = {task: [-1.0] * len(STATS) for task in TASKS}
            return CocoEvaluation(stats, {}, operating_point.summary())
        with contextlib.redirect_stdout(io.StringIO()):
            output = metric.compute()
        metric.reset()
        classes = output["classes"].tolist()
        stats, per_category = {}, {}
        for task in TASKS:
            precision = output[f"{task}_precision"].numpy()
            recall = output[f"{task}_recall"].numpy()
            stats[task] = summarize(precision, recall)
            if len(self.category_names) > 1:
                per_category[task] = {
                    name: category_ap(precision, classes.index(cat) if cat in classes else None)
                    for cat, name in self.category_names.items()
                }
        return CocoEvaluation(stats, per_category, operating_point.summary())

    def _ground_truth(self, image_id: int) -> GroundTruth:
        """The image's ground truth, read from the json once per evaluator (json order, as COCOeval reads it)."""
        if image_id not in self._ground_truths:
            anns = self._coco.loadAnns(self._coco.getAnnIds(imgIds=[image_id]))
            anns = [a for a in anns if a["category_id"] in self.category_names]  # COCOeval reads only known categories
            self._ground_truths[image_id] = GroundTruth(
                boxes_xywh=torch.tensor([a["bbox"] for a in anns], dtype=torch.float64).reshape(-1, 4),
                category_ids=torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
                crowd=torch.tensor([int(a.get("iscrowd", 0)) for a in anns], dtype=torch.int64),
                area=torch.tensor([float(a["area"]) or _ZERO_AREA for a in anns], dtype=torch.float64),
                rles=[self._coco.annToRLE(a) for a in anns],
            )
        return self._ground_truths[image_id]


@dataclass
class GroundTruth:
    """One image's ground truth as torchmetrics keeps it, plus its RLEs for the operating-point numbers."""

    boxes_xywh: Tensor  # float64 (M, 4), the json bbox
    category_ids: Tensor  # int64 (M,)
    crowd: Tensor  # int64 (M,)
    area: Tensor  # float64 (M,), the json area (0 replaced by the smallest positive float, see _ZERO_AREA)
    rles: list[dict]  # compressed RLE at the json image size


def _append_state(metric: MeanAveragePrecision, detections: ImageDetections, ground_truth: GroundTruth) -> None:
    """Add one image to the metric's state in the compact form its ``update`` would have built.

    ``update`` takes dense masks and RLE-encodes them one by one; our records are RLE already, so decoding them to
    dense masks only for torchmetrics to re-encode them was most of the evaluation time. The state is what
    ``update`` stores (XYWH boxes, ``((h, w), counts)`` masks, labels, scores, crowd flags, areas), and
    ``compute`` turns it into the AP as usual.
    """
    metric.detection_box.append(torch.from_numpy(detections.boxes_xywh))
    metric.detection_mask.append(tuple((tuple(m["size"]), m["counts"]) for m in detections.masks))
    metric.detection_labels.append(torch.from_numpy(detections.category_ids))
    metric.detection_scores.append(torch.from_numpy(detections.scores))
    metric.groundtruth_box.append(ground_truth.boxes_xywh)
    metric.groundtruth_mask.append(tuple((tuple(m["size"]), m["counts"]) for m in ground_truth.rles))
    metric.groundtruth_labels.append(ground_truth.category_ids)
    metric.groundtruth_crowds.append(ground_truth.crowd)
    metric.groundtruth_area.append(ground_truth.area)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def evaluate_results_file(
    results_json: str | Path, gt_json: str | Path, *, backend: Backend = "pycocotools", score_threshold: float = 0.5
) -> CocoEvaluation:
    """Score an existing COCO results file (ours or detectron2's ``coco_instances_results.json``) on ``gt_json``.

    Same path as a live evaluation: the records become per-image detections and go through
    :meth:`CocoEvaluator.evaluate`.
    """
    evaluator = CocoEvaluator(gt_json, backend=backend, score_threshold=score_threshold)
    evaluator.add_results(json.loads(Path(results_json).read_text()))
    return evaluator.evaluate()


def _compressed_rle(segmentation: Mapping[str, Any]) -> dict:
    """A results-file segmentation (compressed RLE, str or bytes counts) as ``{"size", "counts": bytes}``."""
    counts = segmentation["counts"]
    if isinstance(counts, list):
        raise ValueError("result segmentations must be compressed RLE (str counts), as detectron2 writes them")
    size = [int(s) for s in segmentation["size"]]
    return {"size": size, "counts": counts.encode("utf-8") if isinstance(counts, str) else counts}


def _coco_index(gt_json: str | Path | dict[str, Any]) -> COCO:
    """pycocotools' index of the ground truth, from a json file or from the json object already parsed."""
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        if not isinstance(gt_json, dict):
            return COCO(str(gt_json))
        coco = COCO()
        coco.dataset = gt_json
        coco.createIndex()
        return coco
