"""Evaluation time side by side: detectron2's way (RLE per mask, COCOeval on the results list) against ours.

Why: evaluation runs on every validation epoch; this shows what ``update`` (turning dense masks into what the
evaluator keeps) and ``compute`` cost for the same detections (default 300 images of 512x512, 100 detections each,
3 classes), with pycocotools' COCOeval and faster-coco-eval's C++ COCOeval_faster (the stand-in for detectron2's
COCOeval_opt), and that every row gives COCOeval's 24 numbers. Rows run interleaved in one process; prints a
markdown table and, last, one json line.

    python scripts/benchmark_evaluation.py --images 300 --detections 100 --repeats 2
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import torch

from segmentation.evaluation.coco_evaluator import TASKS, CocoEvaluator


def _rectangles(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``n`` random axis-aligned rectangles, ``(n, 4)`` int xyxy inside a ``size`` x ``size`` image."""
    x0 = rng.integers(0, size - 8, n)
    y0 = rng.integers(0, size - 8, n)
    x1 = np.minimum(x0 + rng.integers(4, size // 3, n), size)
    y1 = np.minimum(y0 + rng.integers(4, size // 3, n), size)
    return np.stack([x0, y0, x1, y1], axis=1)


def make_ground_truth(path: Path, images: int, size: int, objects: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    anns = []
    for image_id in range(1, images + 1):
        for x0, y0, x1, y1 in _rectangles(rng, objects, size).tolist():
            mask = np.zeros((size, size), dtype=np.uint8, order="F")
            mask[y0:y1, x0:x1] = 1
            rle = mask_utils.encode(mask)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.integers(1, 4)),
                    "iscrowd": 0,
                    "area": float((x1 - x0) * (y1 - y0)),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "segmentation": {"size": [size, size], "counts": rle["counts"].decode()},
                }
            )
    path.write_text(
        json.dumps(
            {
                "images": [{"id": i, "height": size, "width": size} for i in range(1, images + 1)],
                "annotations": anns,
                "categories": [{"id": c, "name": f"class{c}"} for c in (1, 2, 3)],
            }
        )
    )


def detections(rng: np.random.Generator, n: int, size: int) -> dict[str, torch.Tensor]:
    boxes = _rectangles(rng, n, size)
    masks = torch.zeros((n, size, size), dtype=torch.bool)
    for k, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        masks[k, y0:y1, x0:x1] = True
    return {
        "boxes": torch.from_numpy(boxes.astype(np.float32)),
        "scores": torch.from_numpy(rng.random(n).astype(np.float32)),
        "labels": torch.from_numpy(rng.integers(1, 4, n)),
        "masks": masks,
    }


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def detectron2_way(gt_path: Path, dets: Callable[[], Iterator[dict[str, torch.Tensor]]], backend: str) -> dict:
    """What detectron2's COCOEvaluator does: RLE-encode each mask at inference (``instances_to_coco_json``), then
    ``loadRes`` + COCOeval per task on the results list (``bbox`` popped from the segm results)."""
    coco_cls, cocoeval_cls = _coco_tools(backend)
    update_s = 0.0
    results = []
    for image_id, d in enumerate(dets(), start=1):
        start = time.perf_counter()
        xywh = d["boxes"].clone()
        xywh[:, 2:] -= xywh[:, :2]
        columns = (xywh.tolist(), d["scores"].tolist(), d["labels"].tolist(), d["masks"])
        for box, score, label, mask in zip(*columns, strict=True):
            encoded = mask_utils.encode(np.array(mask[:, :, None], order="F", dtype="uint8"))[0]
            encoded["counts"] = encoded["counts"].decode("utf-8")
            results.append(
                {"image_id": image_id, "category_id": label, "bbox": box, "score": score, "segmentation": encoded}
            )
        update_s += time.perf_counter() - start
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        gt = coco_cls(str(gt_path))
        stats = {}
        for task in ("bbox", "segm"):
            task_results = [{k: v for k, v in r.items() if not (task == "segm" and k == "bbox")} for r in results]
            coco_eval = cocoeval_cls(gt, gt.loadRes(copy.deepcopy(task_results)), task)
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
            stats[task] = [float(v) for v in coco_eval.stats]
    compute_s = time.perf_counter() - start
    return {"update_s": update_s, "compute_s": compute_s, "stats": stats}


def ours(gt_path: Path, dets: Callable[[], Iterator[dict[str, torch.Tensor]]], backend: str) -> dict:
    """CocoEvaluator: RLE records at update, torchmetrics' MeanAveragePrecision at compute."""
    evaluator = CocoEvaluator(gt_path, backend=backend)
    update_s = 0.0
    for image_id, d in enumerate(dets(), start=1):
        start = time.perf_counter()
        evaluator.update(image_id, d)
        update_s += time.perf_counter() - start
    start = time.perf_counter()
    evaluation = evaluator.evaluate()
    compute_s = time.perf_counter() - start
    return {"update_s": update_s, "compute_s": compute_s, "stats": evaluation.stats}


def _coco_tools(backend: str):
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    from faster_coco_eval import COCO
    from faster_coco_eval.core.faster_eval_api import COCOeval_faster

    return COCO, COCOeval_faster


ROWS = {
    "detectron2's way, pycocotools COCOeval": (detectron2_way, "pycocotools"),
    "detectron2's way, faster-coco-eval COCOeval_faster": (detectron2_way, "faster_coco_eval"),
    "ours, torchmetrics backend pycocotools": (ours, "pycocotools"),
    "ours, torchmetrics backend faster_coco_eval": (ours, "faster_coco_eval"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--detections", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--objects", type=int, default=5, help="ground-truth objects per image")
    parser.add_argument("--repeats", type=int, default=1, help="rounds over all rows, interleaved; the best is kept")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    def dets() -> Iterator[dict[str, torch.Tensor]]:
        """The same detections for every row, made one image at a time (generation is not timed)."""
        rng = np.random.default_rng(args.seed + 1)
        return (detections(rng, args.detections, args.size) for _ in range(args.images))

    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        gt_path = Path(tmp) / "gt.json"
        make_ground_truth(gt_path, args.images, args.size, args.objects, args.seed)
        for _ in range(args.repeats):
            for name, (run, backend) in ROWS.items():
                row = run(gt_path, dets, backend)
                row["total_s"] = row["update_s"] + row["compute_s"]
                if name not in best or row["total_s"] < best[name]["total_s"]:
                    best[name] = row
    reference = best["detectron2's way, pycocotools COCOeval"]
    print(
        f"{args.images} images {args.size}x{args.size}, {args.detections} detections each, 3 classes, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"
    )
    print("| who | update s | compute s | total s | vs detectron2's way | max stat diff vs COCOeval |")
    print("|---|---|---|---|---|---|")
    for name, row in best.items():
        pairs = [zip(row["stats"][task], reference["stats"][task], strict=True) for task in TASKS]
        diff = max(abs(a - b) for pair in pairs for a, b in pair)
        row["max_abs_stat_diff"] = diff
        print(
            f"| {name} | {row['update_s']:.2f} | {row['compute_s']:.2f} | {row['total_s']:.2f} | "
            f"{row['total_s'] / reference['total_s']:.2f}x | {diff:.1e} |"
        )
    print(f"peak host RSS {peak_rss_mib():.0f} MiB")
    summary = {name: {k: v for k, v in row.items() if k != "stats"} for name, row in best.items()}
    print(json.dumps({"images": args.images, "detections": args.detections, "size": args.size, "rows": summary}))


if __name__ == "__main__":
    main()
