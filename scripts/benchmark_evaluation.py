"""Time and memory of CocoEvaluator on a synthetic split, for both torchmetrics backends.

Why: evaluation runs on every validation epoch; this shows what ``update`` + ``compute`` cost per backend at a
realistic size (default 2,000 images of 512x512 with 100 detections each) and that host memory stays bounded (the
evaluator keeps compressed RLE only). Prints a table and, last, one json line.

    python scripts/benchmark_evaluation.py --images 200 --detections 100
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import torch

from segmentation.evaluation.coco_evaluator import CocoEvaluator


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


def run(backend: str, gt_path: Path, images: int, n_detections: int, size: int, seed: int) -> dict:
    evaluator = CocoEvaluator(gt_path, backend=backend)
    rng = np.random.default_rng(seed + 1)
    update_s = 0.0
    for image_id in range(1, images + 1):
        d = detections(rng, n_detections, size)  # generation is not timed
        start = time.perf_counter()
        evaluator.update(image_id, d)
        update_s += time.perf_counter() - start
    rle_mib = sum(len(m["counts"]) for r in evaluator._records.values() for m in r.masks) / 2**20
    start = time.perf_counter()
    results = evaluator.compute()
    compute_s = time.perf_counter() - start
    return {
        "backend": backend,
        "update_s": round(update_s, 2),
        "compute_s": round(compute_s, 2),
        "rle_mib": round(rle_mib, 1),
        "peak_rss_mib_so_far": round(peak_rss_mib(), 1),
        "segm_AP": results["segm"]["AP"],
        "bbox_AP": results["bbox"]["AP"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--detections", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--objects", type=int, default=5, help="ground-truth objects per image")
    parser.add_argument("--backends", nargs="+", default=["pycocotools", "faster_coco_eval"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        gt_path = Path(tmp) / "gt.json"
        make_ground_truth(gt_path, args.images, args.size, args.objects, args.seed)
        rows = [run(b, gt_path, args.images, args.detections, args.size, args.seed) for b in args.backends]

    print(
        f"{args.images} images {args.size}x{args.size}, {args.detections} detections each, "
        f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}"
    )
    print(f"{'backend':<18}{'update s':>10}{'compute s':>11}{'total s':>10}{'RLE MiB':>10}{'peak RSS MiB':>14}")
    for r in rows:
        total = r["update_s"] + r["compute_s"]
        print(
            f"{r['backend']:<18}{r['update_s']:>10.2f}{r['compute_s']:>11.2f}{total:>10.2f}{r['rle_mib']:>10.1f}"
            f"{r['peak_rss_mib_so_far']:>14.1f}"
        )
    print(json.dumps({"images": args.images, "detections": args.detections, "size": args.size, "runs": rows}))


if __name__ == "__main__":
    main()
