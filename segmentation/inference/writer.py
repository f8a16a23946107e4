"""What ``segmentation.predict`` writes: ``predictions.json``, ``images.json``, mask PNGs and volumes, overlays.

Why this exists: the file formats of prediction (detectron2's results list, a COCO json naming each image, label
maps that overlay the input in a viewer) are one job, apart from reading inputs and running the model. The json
records are collected per process and written once by rank 0 in input order, so N processes under torchrun write
the same files as one; the per-image files are written by the process that predicted them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist
from PIL import Image
from torch import Tensor

from segmentation.data import volumes
from segmentation.data.rle import write_json_atomic
from segmentation.evaluation.results import detections_to_coco_results
from segmentation.visualize import draw_overlay


def label_map(detections: dict[str, Tensor], score_threshold: float) -> np.ndarray:
    """uint8 ``(H, W)``: the label of the highest-scoring detection ``>= score_threshold`` covering each pixel."""
    masks = detections["masks"]
    out = np.zeros(masks.shape[1:], dtype=np.uint8)
    scores = detections["scores"].numpy()
    for i in np.argsort(scores, kind="stable"):  # ascending: higher scores overwrite
        if scores[i] >= score_threshold:
            out[masks[i].numpy()] = int(detections["labels"][i])
    return out


def overlay(
    image_gray_or_rgb: np.ndarray, detections: dict[str, Tensor], threshold: float, names: list[str]
) -> Image.Image:
    """The detections scoring ``>= threshold`` drawn on the image."""
    keep = detections["scores"] >= threshold
    kept = {name: value[keep].numpy() for name, value in detections.items()}
    return draw_overlay(image_gray_or_rgb, kept["boxes"], kept["scores"], kept["labels"], kept["masks"], names)


def world_size() -> int:
    """Processes of the ``torch.distributed`` group, 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class PredictionWriter:
    """Writes the per-image files at once and collects the json records of this process for ``finish``.

    Records are keyed by ``(input index, slice)``; ``finish`` gathers every process's records on rank 0 and numbers
    the images in input order.
    """

    def __init__(self, out_dir: Path, class_names: list[str], score_threshold: float) -> None:
        self.out_dir = out_dir
        self.names = class_names
        self.threshold = score_threshold
        self.entries: list[tuple[tuple[int, int], dict, list[dict]]] = []
        self.problems: list[str] = []
        (out_dir / "masks").mkdir(parents=True, exist_ok=True)
        (out_dir / "overlays").mkdir(parents=True, exist_ok=True)

    def add(self, key: tuple[int, int], record: dict, detections: dict[str, Tensor]) -> None:
        """Keep one image's ``images.json`` record and its detections for ``predictions.json``."""
        labels = {k: k for k in range(1, len(self.names) + 1)}
        self.entries.append((key, record, detections_to_coco_results(0, detections, labels)))

    def write_image(self, name: str, image_bgr: np.ndarray, detections: dict[str, Tensor]) -> None:
        """``masks/<name>.png`` (label map) and ``overlays/<name>.png`` of one image."""
        Image.fromarray(label_map(detections, self.threshold)).save(self.out_dir / "masks" / f"{name}.png")
        picture = overlay(np.ascontiguousarray(image_bgr[:, :, ::-1]), detections, self.threshold, self.names)
        picture.save(self.out_dir / "overlays" / f"{name}.png")

    def write_slice_overlay(self, name: str, z: int, slice_uint8: np.ndarray, detections: dict[str, Tensor]) -> None:
        """``overlays/<name>/<zzzz>.png`` of one volume slice."""
        folder = self.out_dir / "overlays" / name
        folder.mkdir(parents=True, exist_ok=True)
        overlay(slice_uint8, detections, self.threshold, self.names).save(folder / f"{z:04d}.png")

    def write_mask_volume(self, name: str, labels: np.ndarray, reference: Any, source: Path) -> Path:
        """``masks/<name>.<ext>``: the label volume with ``reference``'s geometry; ``.mhd``/``.mha``/NIfTI-1 inputs
        keep their format, the others (DICOM, ``.nrrd``, ``.mgz``) give ``.nii.gz``."""
        suffix = source.name[len(volumes.volume_name(source)) :] if source.is_file() else ""
        return volumes.write_label_volume(
            labels, reference, volumes.mask_volume_path(self.out_dir / "masks", name + suffix)
        )

    def finish(self, problems: list[str]) -> list[str]:
        """Write ``predictions.json`` and ``images.json`` (rank 0); return every process's ``problems``."""
        entries = self.entries
        if world_size() > 1:
            gathered: list[tuple[list, list[str]] | None] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (entries, problems))
            entries = [entry for rank in gathered for entry in (rank[0] if rank else [])]
            problems = [problem for rank in gathered for problem in (rank[1] if rank else [])]
            if dist.get_rank() != 0:
                return problems
        images, results = [], []
        for image_id, (_, record, image_results) in enumerate(sorted(entries, key=lambda e: e[0]), start=1):
            images.append({"id": image_id, **record})
            results += [{**result, "image_id": image_id} for result in image_results]
        write_json_atomic(self.out_dir / "predictions.json", results)
        categories = [{"id": k, "name": name} for k, name in enumerate(self.names, start=1)]
        write_json_atomic(self.out_dir / "images.json", {"images": images, "annotations": [], "categories": categories})
        return problems
