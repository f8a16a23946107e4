"""Training-loader speed for ``scripts/benchmark.py``: ``CocoDataModule``'s training stream without and with
detectron2's multi-scale resize and horizontal flip, in alternating rounds of one run.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Iterator
from typing import Any

from torch import Tensor

from segmentation.data.datamodule import CocoDataModule

Batch = tuple[list[Tensor], list[dict[str, Any]]]


def time_loader(datamodule: CocoDataModule, batches: int, rounds: int = 3) -> dict[str, float]:
    """Images/s of the training loader after its first batch (workers started), total and per worker, without and
    with detectron2's multi-scale resize (three sizes up to the configured one, ``choice``) and horizontal flip.

    The two loaders run in alternating rounds in one process, so machine load hits both alike; each rate is the
    median over its rounds.
    """
    plain = datamodule.augmentation
    size = plain.min_sizes[-1]
    augmented = dataclasses.replace(plain, min_sizes=(size - 64, size - 32, size), flip="horizontal")
    rates: dict[str, list[float]] = {"plain": [], "augmented": []}
    for _ in range(rounds):
        for name, augmentation in (("plain", plain), ("augmented", augmented)):
            datamodule.augmentation = augmentation
            loader = datamodule.train_dataloader()
            iterator: Iterator[Batch] = iter(loader)
            next(iterator)
            start = time.perf_counter()
            images = sum(len(next(iterator)[0]) for _ in range(batches))
            rates[name].append(images / (time.perf_counter() - start))
            del iterator, loader
    datamodule.augmentation = plain
    rate, augmented_rate = statistics.median(rates["plain"]), statistics.median(rates["augmented"])
    workers = max(datamodule.num_workers, 1)
    return {
        "images_per_s": rate,
        "images_per_s_per_worker": rate / workers,
        "augmented_images_per_s": augmented_rate,
        "augmented_ratio": augmented_rate / rate,
    }


def loader_keys(datamodule: CocoDataModule, batches: int) -> dict[str, float]:
    loader = time_loader(datamodule, batches)
    return {
        "loader_images_per_s": loader["images_per_s"],
        "loader_images_per_s_per_worker": loader["images_per_s_per_worker"],
        "loader_multiscale_flip_images_per_s": loader["augmented_images_per_s"],
        "loader_multiscale_flip_ratio": loader["augmented_ratio"],
    }


def loader_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    augmented = result["loader_multiscale_flip_images_per_s"], result["loader_multiscale_flip_ratio"]
    return [
        ("loader images/s (total)", f"{result['loader_images_per_s']:.2f}"),
        ("loader images/s per worker", f"{result['loader_images_per_s_per_worker']:.2f}"),
        ("loader images/s with multi-scale + flip (ratio)", f"{augmented[0]:.2f} ({augmented[1]:.2f}x)"),
    ]
