"""CocoEvaluator must give pycocotools' COCOeval numbers, run detectron2's way, to the last bit.

The reference in every test is COCOeval on the json and on the detectron2-format results (``loadRes``; segm with
``bbox`` popped), exactly as detectron2's COCOEvaluator calls it. The synthetic split below is built to hit every
case where a naive torchmetrics setup diverges.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import pickle
import socket
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segmentation.data.rle import write_json_atomic
from segmentation.evaluation.coco_evaluator import CocoEvaluator, evaluate_results_file
from segmentation.evaluation.results import detections_to_coco_results

BACKENDS = ["faster_coco_eval", "pycocotools"]
# json ids deliberately unsorted and non-contiguous: model label k is the k-th sorted id (3 -> 1, 7 -> 2, 11 -> 3)
CATEGORIES = [{"id": 11, "name": "tumor"}, {"id": 3, "name": "lung"}, {"id": 7, "name": "nodule"}]
LABEL_TO_CATEGORY = {1: 3, 2: 7, 3: 11}
IMAGES = [  # (id, height, width); listed out of order
    (40, 200, 240),
    (2, 120, 160),
    (17, 96, 128),
    (5, 120, 160),
    (9, 96, 128),
    (23, 200, 240),
    (31, 100, 100),
]
NO_GT_IMAGE, NO_PREDICTION_IMAGE, CROWDED_IMAGE, MANY_DETECTIONS_IMAGE = 5, 9, 23, 2


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: column-major run lengths, starting with the count of zeros."""
    flat = mask.flatten(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1] if flat.size else 1]])))
    counts = np.diff(np.concatenate([[0], change])).tolist()
    return {"size": list(mask.shape), "counts": counts}


def _random_shape(rng: np.random.Generator, h: int, w: int, side: tuple[int, int]) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    bh, bw = (min(int(rng.integers(*side)), limit - 2) for limit in (h, w))
    y0, x0 = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
    if rng.random() < 0.5:
        mask[y0 : y0 + bh, x0 : x0 + bw] = True
    else:
        yy, xx = np.mgrid[:h, :w]
        mask[((yy - y0 - bh / 2) / (bh / 2)) ** 2 + ((xx - x0 - bw / 2) / (bw / 2)) ** 2 <= 1] = True
    return mask


def make_split(seed: int = 0) -> tuple[dict, dict[int, dict[str, torch.Tensor]]]:
    """A COCO json with polygons, uncompressed and compressed RLE, crowd regions, area-0 and area != mask area
    annotations, an image without GT, and detections (at the original size) of every kind, scores with ties."""
    rng = np.random.default_rng(seed)
    images, annotations, detections = [], [], {}
    sizes = [(4, 20), (25, 60), (100, 150)]  # small, medium, large objects
    for image_id, h, w in IMAGES:
        images.append({"id": image_id, "height": h, "width": w, "file_name": f"{image_id}.png"})
        gt_masks, gt_labels = [], []
        n_objects = 0 if image_id == NO_GT_IMAGE else int(rng.integers(2, 5))
        for k in range(n_objects):
            category = CATEGORIES[int(rng.integers(0, 3))]["id"]
            kind = ("polygon", "rle", "compressed")[(k + image_id) % 3]
            if kind == "polygon":
                y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
                y1, x1 = y0 + int(rng.integers(5, h // 2)), x0 + int(rng.integers(5, w // 2))
                segmentation = [[x0, y0, x1 + 0.5, y0, x1, y1 - 0.5, x0 + 0.25, y1]]
                rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))
                mask = mask_utils.decode(rle).astype(bool)
            else:
                mask = _random_shape(rng, h, w, sizes[int(rng.integers(0, 3))])
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                if kind == "rle":
                    segmentation = _uncompressed_rle(mask)
                else:
                    segmentation = {"size": [h, w], "counts": rle["counts"].decode()}
            area = float(mask_utils.area(rle))
            if k == 1:
                area *= (0.05, 3.0, 9.0)[image_id % 3]  # json area != mask area: moves objects between size ranges
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "segmentation": segmentation,
                    "area": area,
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
            gt_masks.append(mask)
            gt_labels.append(category)
        if image_id == 17:  # area 0 although the mask is not empty: COCOeval trusts the json (a "small" object)
            annotations[-1]["area"] = 0.0
        if image_id == 31:  # tiny_lung's empty slice: counts [h*w], area 0, bbox zeros, iscrowd 0
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": 31,
                    "category_id": 3,
                    "area": 0.0,
                    "bbox": [0.0] * 4,
                    "segmentation": {"size": [h, w], "counts": [h * w]},
                    "iscrowd": 0,
                }
            )
        if image_id == CROWDED_IMAGE:
            crowd = np.zeros((h, w), dtype=bool)
            crowd[70:115, 90:155] = True
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 7,
                    "iscrowd": 1,
                    "segmentation": _uncompressed_rle(crowd),
                    "area": float(crowd.sum()),
                    "bbox": [90.0, 70.0, 65.0, 45.0],
                }
            )
            gt_masks.append(crowd)
            gt_labels.append(7)
        if image_id == NO_PREDICTION_IMAGE:
            continue
        detections[image_id] = _detections_for(rng, h, w, gt_masks, gt_labels, many=image_id == MANY_DETECTIONS_IMAGE)
    gt = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    return gt, detections


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``mask`` moved by (dy, dx) pixels, what leaves the image is lost."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    source = mask[max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)]
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = source
    return out


def _detections_for(rng, h, w, gt_masks, gt_labels, *, many: bool) -> dict[str, torch.Tensor]:
    category_to_label = {c: lbl for lbl, c in LABEL_TO_CATEGORY.items()}
    masks, labels = [], []
    for mask, category in zip(gt_masks, gt_labels, strict=True):
        for _ in range(int(rng.integers(1, 3))):  # jittered hits and duplicates
            masks.append(_shift(mask, int(rng.integers(-3, 4)), int(rng.integers(-3, 4))))
            labels.append(category_to_label[category] if rng.random() < 0.85 else int(rng.integers(1, 4)))
    n_false = 130 if many else int(rng.integers(1, 4))
    for _ in range(n_false):  # false positives
        masks.append(_random_shape(rng, h, w, (3, 30)))
        labels.append(int(rng.integers(1, 4)))
    masks_t = torch.from_numpy(np.stack(masks))
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        if len(xs) == 0:
            boxes.append([0.0, 0.0, 0.0, 0.0])
        else:
            jitter = rng.normal(0, 0.7, 4)
            boxes.append((np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) + jitter).tolist())
    # scores on a coarse grid so that ties across images and within images occur; false positives score lower
    n_hits = len(masks) - n_false
    scores = np.round(np.concatenate([rng.uniform(0.3, 1.0, n_hits), rng.uniform(0.05, 0.7, n_false)]) * 20) / 20
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "masks": masks_t,
    }


def coco_eval_reference(gt_path: Path, results: list[dict]) -> dict[str, tuple[list[float], np.ndarray]]:
    """detectron2's ``_evaluate_predictions_on_coco`` on pycocotools: 12 stats and the precision array per task."""
    out = {}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        for task in ("bbox", "segm"):
            task_results = copy.deepcopy(results)
            if task == "segm":
                for r in task_results:
                    r.pop("bbox")
            coco_eval = COCOeval(gt, gt.loadRes(task_results), task)
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
            out[task] = (coco_eval.stats.tolist(), coco_eval.eval["precision"])
    return out


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> tuple[Path, dict[int, dict[str, torch.Tensor]], list[dict]]:
    gt, detections = make_split()
    path = tmp_path_factory.mktemp("split") / "gt.json"
    path.write_text(json.dumps(gt))
    results = [r for i, d in sorted(detections.items()) for r in detections_to_coco_results(i, d, LABEL_TO_CATEGORY)]
    return path, detections, results


@pytest.fixture(scope="module")
def reference(split):
    path, _, results = split
    return coco_eval_reference(path, results)


def test_split_covers_the_divergent_cases(split):
    path, detections, _ = split
    gt = json.loads(path.read_text())
    anns = gt["annotations"]
    assert any(isinstance(a["segmentation"], list) for a in anns)
    assert any(isinstance(a["segmentation"].get("counts"), list) for a in anns if isinstance(a["segmentation"], dict))
    assert any(isinstance(a["segmentation"].get("counts"), str) for a in anns if isinstance(a["segmentation"], dict))
    assert any(a["iscrowd"] for a in anns)
    assert NO_GT_IMAGE not in {a["image_id"] for a in anns} and NO_PREDICTION_IMAGE not in detections
    assert len(detections[MANY_DETECTIONS_IMAGE]["scores"]) > 100
    assert any(a["area"] != mask_utils.area(_ann_rle(gt, a)) for a in anns)
    assert len(set(detections[2]["scores"].tolist())) < len(detections[2]["scores"])  # tied scores


def _ann_rle(gt: dict, ann: dict) -> dict:
    """pycocotools' ``annToRLE`` on a json dict."""
    image = next(i for i in gt["images"] if i["id"] == ann["image_id"])
    seg = ann["segmentation"]
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, image["height"], image["width"]))
    return mask_utils.frPyObjects(seg, *seg["size"]) if isinstance(seg["counts"], list) else seg


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_24_stats_equal_cocoeval_from_live_updates(split, reference, backend):
    path, detections, _ = split
    evaluator = CocoEvaluator(path, backend=backend)
    for image_id in [31, 2, 40, 23, 17, 5]:  # any update order; image 9 is never updated (no detections)
        evaluator.update(image_id, detections[image_id])
    evaluation = evaluator.evaluate()
    for task in ("bbox", "segm"):
        assert min(reference[task][0]) >= 0 and reference[task][0][0] > 0.1, "the split should define every stat"
        if backend == "pycocotools":
            assert evaluation.stats[task] == reference[task][0], task
        else:  # precision tp / (tp + fp) without COCOeval's + np.spacing(1): last-bit differences only
            np.testing.assert_allclose(evaluation.stats[task], reference[task][0], rtol=0, atol=1e-12)
    results = evaluator.compute()
    assert results["bbox"]["AP"] == pytest.approx(reference["bbox"][0][0] * 100, abs=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_results_file_path_equals_cocoeval(split, reference, backend, tmp_path):
    path, _, results = split
    results_path = tmp_path / "coco_instances_results.json"
    write_json_atomic(results_path, results)
    got = evaluate_results_file(results_path, path, backend=backend).results()
    for task in ("bbox", "segm"):
        stats = reference[task][0]
        expected = [stats[i] * 100 for i in range(6)]
        values = [v for k, v in got[task].items() if "-" not in k]
        if backend == "pycocotools":
            assert values == expected
        else:
            np.testing.assert_allclose(values, expected, rtol=0, atol=1e-10)


def test_per_category_ap_is_detectron2s(split, reference):
    path, detections, _ = split
    evaluator = CocoEvaluator(path, backend="pycocotools")
    for image_id, d in detections.items():
        evaluator.update(image_id, d)
    results = evaluator.compute()
    names = {c["id"]: c["name"] for c in CATEGORIES}
    for task in ("bbox", "segm"):
        precision = reference[task][1]
        for k, category_id in enumerate(sorted(names)):  # COCOeval's K axis: sorted json ids
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]
            expected = float(np.mean(p) * 100) if p.size else math.nan
            assert results[task][f"AP-{names[category_id]}"] == expected


def test_one_class_has_no_per_category_entries(parity_dir):
    evaluator = CocoEvaluator(parity_dir / "tiny_lung" / "dataset" / "coco_val_lung.json")
    evaluation = evaluator.evaluate()
    assert evaluation.per_category_ap == {}


def test_no_detections_at_all_gives_nan_like_detectron2(split):
    evaluator = CocoEvaluator(split[0])
    results = evaluator.compute()
    assert all(math.isnan(v) for task in ("bbox", "segm") for v in results[task].values())


def test_records_are_compact(split):
    path, detections, _ = split
    evaluator = CocoEvaluator(path)
    evaluator.update(2, detections[2])
    record = evaluator._records[2]
    assert isinstance(record.masks[0]["counts"], bytes)
    assert not any(isinstance(v, torch.Tensor) for v in vars(record).values())
    assert sum(len(m["counts"]) for m in record.masks) < detections[2]["masks"].numel() / 20


def test_rejects_inputs_that_would_silently_change_ap(split):
    path, detections, _ = split
    evaluator = CocoEvaluator(path)
    d = detections[40]
    with pytest.raises(ValueError, match="original size"):
        evaluator.update(40, {**d, "masks": d["masks"][:, :-1]})
    with pytest.raises(TypeError, match="bool"):
        evaluator.update(40, {**d, "masks": d["masks"].float()})
    with pytest.raises(ValueError, match="not in the ground-truth"):
        evaluator.update(1234, d)
    with pytest.raises(ValueError, match="labels"):
        evaluator.update(40, {**d, "labels": d["labels"] + 3})
    evaluator.update(40, d)
    with pytest.raises(ValueError, match="already added"):
        evaluator.update(40, d)
    evaluator.reset()
    evaluator.update(40, d)


@pytest.mark.parity
@pytest.mark.parametrize("backend", BACKENDS)
def test_detectron2_predictions_give_detectron2s_numbers(parity_dir, backend):
    tiny = parity_dir / "tiny_lung"
    expected = json.loads((tiny / "expected" / "coco_eval.json").read_text())
    evaluator = CocoEvaluator(tiny / "dataset" / "coco_val_lung.json", backend=backend)
    evaluator.add_results(json.loads((tiny / "expected" / "predictions.json").read_text()))
    evaluation = evaluator.evaluate()
    assert evaluation.stats == expected["stats12_raw"]
    for task in ("bbox", "segm"):
        assert [s * 100 for s in evaluation.stats[task]] == expected["stats12_percent"][task]
    results = evaluate_results_file(
        tiny / "expected" / "predictions.json", tiny / "dataset" / "coco_val_lung.json", backend=backend
    ).results()
    assert {t: results[t] for t in ("bbox", "segm")} == expected["returned_by_COCOEvaluator"]
    assert results["bbox"]["AP50"] == pytest.approx(100 * 84 / 101)  # area-0 ground truths stay: 84/101 ceiling


# ---------------------------------------------------------------------------------------------- distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, gt_path: str, dets_path: str, shards: list, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        detections = torch.load(dets_path)
        evaluator = CocoEvaluator(gt_path)
        for image_id in shards[rank]:
            evaluator.update(image_id, detections[image_id])
        evaluation = evaluator.evaluate()
        Path(out_dir, f"{rank}.pkl").write_bytes(pickle.dumps(evaluation))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "shards",
    [
        [[40, 2, 17, 31, 23], [5, 40]],  # uneven; 40 on both ranks (a padding sampler's duplicate)
        [[2], [17, 5, 31, 40], [23, 2]],  # rank 0 one image, 2 duplicated
    ],
    ids=["world2", "world3"],
)
def test_distributed_equals_single_process(split, tmp_path, shards):
    path, detections, _ = split
    dets_path = tmp_path / "dets.pt"
    torch.save(detections, dets_path)
    mp.spawn(
        _ddp_worker,
        args=(len(shards), _free_port(), str(path), str(dets_path), shards, str(tmp_path)),
        nprocs=len(shards),
        join=True,
    )
    single = CocoEvaluator(path)
    for image_id in sorted({i for shard in shards for i in shard}):
        single.update(image_id, detections[image_id])
    expected = single.evaluate()
    for rank in range(len(shards)):
        got = pickle.loads((tmp_path / f"{rank}.pkl").read_bytes())
        assert got.stats == expected.stats
        assert json.dumps(got.results()) == json.dumps(expected.results())  # NaN-aware, every digit
