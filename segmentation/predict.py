"""``python -m segmentation.predict``: run a trained model on images, image folders and CT volumes.

Training and evaluation read COCO jsons; a user with a new scan has none. This entry point takes the same config and
weights as ``segmentation.evaluate`` and plain inputs:

    python -m segmentation.predict --config C --model.weights W --input PATH [PATH ...] --output_dir O
        [--score_threshold 0.5] [--window_center -600 --window_width 1500] [--batch_size 4] [--device cpu]

``C`` is one of our configs or a detectron2 ``config.yaml`` dump, parsed by the same ``SegmentationCLI`` as
training, so the model is built one way only; ``W`` is anything ``load_weights`` loads. ``PATH`` is an image, a
folder of images, a volume file (``.mhd``, ``.mha``, ``.nii``, ``.nii.gz``, ``.nrrd``) or a folder holding one
DICOM series (volumes need SimpleITK: the ``volumes`` extra). Inference is detectron2's test-time path: fp32, eval
mode, each image resized by ``ResizeShortestEdge(min_size_test, max_size_test)`` of the config's ``data`` section,
detections rescaled to the original size. Volume slices are windowed to uint8 (lung window by default) and
predicted in batches. Outputs (see ``docs/predict.md``):

* ``O/predictions.json``: every detection, detectron2's ``coco_instances_results.json`` records (a plain list, so
  pycocotools' ``loadRes`` reads it); ``category_id`` is the model label 1..K;
* ``O/images.json``: a COCO json without annotations naming each ``image_id`` (``file_name``, size, and the
  ``slice`` index for volume slices) and the categories, so ``COCO("images.json").loadRes("predictions.json")`` works;
* ``O/masks/<name>.png`` (images) or ``O/masks/<volume>.nii.gz`` (volumes, same geometry as the input, ``.mhd`` and
  NIfTI inputs keep their format): uint8 class-label maps (0 background, k = class k) of the detections scoring
  ``>= score_threshold``; where instances overlap the higher score wins;
* ``O/overlays/<name>.png`` or ``O/overlays/<volume>/<slice>.png``: those detections drawn on the image.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from pytorch_lightning.cli import LightningArgumentParser
from torch import Tensor

from segmentation.checkpoints.loading import load_for_command
from segmentation.cli import SegmentationCLI, config_given
from segmentation.data import volumes
from segmentation.data.images import LUNG_CT, LUNG_WINDOW, CtWindow, read_image_bgr, window_to_uint8
from segmentation.data.mapper import resize_shortest_edge
from segmentation.data.rle import write_json_atomic
from segmentation.errors import ConfigError, MissingFileError, user_errors_exit
from segmentation.evaluation.results import detections_to_coco_results
from segmentation.inference.runtimes import RUNTIMES, RuntimeModel, check_runtime
from segmentation.model.config import MaskRCNNConfig
from segmentation.visualize import draw_overlay

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class PredictCLI(SegmentationCLI):
    """``SegmentationCLI`` plus the inputs and output options of prediction."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument("--input", type=str, nargs="+", required=True, help="Images, image folders, volumes.")
        parser.add_argument("--score_threshold", type=float, default=0.5, help="Score to keep in masks/overlays.")
        parser.add_argument("--window_center", type=float, default=LUNG_WINDOW[0], help="HU (volumes, 16-bit images).")
        parser.add_argument("--window_width", type=float, default=LUNG_WINDOW[1], help="HU (volumes, 16-bit images).")
        parser.add_argument(
            "--intensity_offset", type=float, default=1024.0, help="16-bit images store HU + this value."
        )
        parser.add_argument("--batch_size", type=int, default=4, help="Images per forward pass.")
        parser.add_argument("--device", type=str, default="cuda" if torch.cuda.is_available() else "cpu")
        parser.add_argument(
            "--runtime",
            type=str,
            default="torch",
            choices=list(RUNTIMES),
            help="torch, or onnxruntime/openvino on CPU (graph exported on first use and cached; "
            "--model.weights may then be a .onnx graph).",
        )


@dataclass(frozen=True)
class Source:
    """One input: an image file, or a volume (file or DICOM folder)."""

    kind: str  # "image" or "volume"
    path: Path


def discover_inputs(paths: Sequence[str | Path]) -> list[Source]:
    """Expand the command line's paths: folders of images to their images (sorted), the rest as given.

    A folder without image files is read as a DICOM series; a file with a volume extension is a volume.
    """
    sources = []
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise MissingFileError(f"input not found: {path}")
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            sources += [Source("image", p) for p in images] if images else [Source("volume", path)]
        else:
            sources.append(Source("volume" if volumes.has_volume_suffix(path) else "image", path))
    return sources


def predict_images(
    model: torch.nn.Module, images_bgr: Sequence[np.ndarray], min_size: int, max_size: int
) -> list[dict[str, Tensor]]:
    """detectron2's test-time inference on uint8 BGR ``(H, W, 3)`` images: resize, fp32 forward, original size.

    The resize is the data pipeline's (``resized_shape`` sizes, PIL bilinear on uint8), so a file predicted here
    gives the detections ``segmentation.evaluate`` gives for it.

    Returns:
        Per image, on the CPU: ``boxes`` xyxy, ``scores``, ``labels`` (1..K), ``masks`` bool ``(N, H, W)``.
    """
    device = next(iter(model.parameters()), torch.empty(0)).device  # a runtime graph has none: CPU
    inputs, sizes = [], []
    for image in images_bgr:
        resized = resize_shortest_edge(image, min_size, max_size)
        inputs.append(torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))).to(device).float())
        sizes.append(image.shape[:2])
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        outputs = model(inputs, output_sizes=sizes)
    return [{name: value.cpu() for name, value in out.items()} for out in outputs]


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


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _Writer:
    """Collects the json records of this process and writes the per-image files under the output folder.

    Records are keyed by ``(input index, slice)``; ``finish`` gathers every process's records on rank 0 and numbers
    the images in input order, so N processes write the same ``predictions.json`` as one.
    """

    def __init__(self, out_dir: Path, names: list[str], threshold: float) -> None:
        self.out_dir = out_dir
        self.names = names
        self.threshold = threshold
        self.entries: list[tuple[tuple[int, int], dict, list[dict]]] = []

    def add(self, key: tuple[int, int], record: dict, detections: dict[str, Tensor]) -> None:
        labels = {k: k for k in range(1, len(self.names) + 1)}
        self.entries.append((key, record, detections_to_coco_results(0, detections, labels)))

    def finish(self) -> None:
        entries = self.entries
        if _world_size() > 1:
            gathered: list[list | None] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, entries)
            if dist.get_rank() != 0:
                return
            entries = [entry for rank_entries in gathered for entry in rank_entries or []]
        images, results = [], []
        for image_id, (_, record, image_results) in enumerate(sorted(entries, key=lambda e: e[0]), start=1):
            images.append({"id": image_id, **record})
            results += [{**result, "image_id": image_id} for result in image_results]
        write_json_atomic(self.out_dir / "predictions.json", results)
        categories = [{"id": k, "name": name} for k, name in enumerate(self.names, start=1)]
        write_json_atomic(self.out_dir / "images.json", {"images": images, "annotations": [], "categories": categories})


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def unique_names(names: Sequence[str]) -> list[str]:
    """File-name stems for the outputs: duplicates get ``_1``, ``_2``... in input order."""
    used: set[str] = set()
    out = []
    for name in names:
        candidate, k = name, 1
        while candidate in used:
            candidate, k = f"{name}_{k}", k + 1
        used.add(candidate)
        out.append(candidate)
    return out


def predict(
    model: torch.nn.Module,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    class_names: list[str],
    min_size: int,
    max_size: int,
    score_threshold: float = 0.5,
    window: CtWindow = LUNG_CT,
    batch_size: int = 4,
) -> Path:
    """Predict every input and write the outputs listed in the module docstring into ``out_dir``.

    Under ``torch.distributed`` (``torchrun --nproc_per_node N -m segmentation.predict ...``) each process takes
    every N-th input and rank 0 writes the json files, identical to a single process's.

    Args:
        model: the Mask R-CNN, in eval mode and fp32, on the device to use.
        inputs: image files, image folders, volume files, DICOM series folders.
        out_dir: output folder (created).
        class_names: one per foreground class (labels 1..K).
        min_size, max_size: detectron2's test-time ResizeShortestEdge sizes.
        score_threshold: detections at or above it go into masks and overlays (``predictions.json`` has all).
        window: the HU window of volume slices and 16-bit images (and the offset of 16-bit images).
        batch_size: images (or slices) per forward pass.

    Returns:
        The path of ``predictions.json``.
    """
    out_dir = Path(out_dir)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    writer = _Writer(out_dir, class_names, score_threshold)
    sources = discover_inputs(inputs)
    names = unique_names([s.path.stem if s.kind == "image" else volumes.volume_name(s.path) for s in sources])
    rank, world = (dist.get_rank(), dist.get_world_size()) if _world_size() > 1 else (0, 1)
    mine = [(i, s, n) for i, (s, n) in enumerate(zip(sources, names, strict=True)) if i % world == rank]
    images = [(i, s.path, n) for i, s, n in mine if s.kind == "image"]
    for batch in _batches(images, batch_size):
        arrays = [read_image_bgr(str(path), window) for _, path, _ in batch]
        detections_of_batch = predict_images(model, arrays, min_size, max_size)
        for (index, path, name), array, detections in zip(batch, arrays, detections_of_batch, strict=True):
            h, w = array.shape[:2]
            writer.add((index, 0), {"file_name": str(path), "height": h, "width": w}, detections)
            Image.fromarray(label_map(detections, score_threshold)).save(out_dir / "masks" / f"{name}.png")
            picture = overlay(np.ascontiguousarray(array[:, :, ::-1]), detections, score_threshold, class_names)
            picture.save(out_dir / "overlays" / f"{name}.png")
    for index, source, name in mine:
        if source.kind == "volume":
            _predict_volume(model, index, source.path, name, writer, min_size, max_size, window, batch_size)
    writer.finish()
    return out_dir / "predictions.json"


def _predict_volume(
    model: torch.nn.Module,
    index: int,
    path: Path,
    name: str,
    writer: _Writer,
    min_size: int,
    max_size: int,
    window: CtWindow,
    batch_size: int,
) -> None:
    image = volumes.read_volume(path)
    slices = window_to_uint8(volumes.volume_array(image), window.center, window.width)
    labels = np.zeros(slices.shape, dtype=np.uint8)
    overlay_dir = writer.out_dir / "overlays" / name
    overlay_dir.mkdir(parents=True, exist_ok=True)
    depth, h, w = slices.shape
    for batch in _batches(range(depth), batch_size):
        bgr = [np.repeat(slices[z][:, :, None], 3, axis=2) for z in batch]
        for z, detections in zip(batch, predict_images(model, bgr, min_size, max_size), strict=True):
            writer.add((index, z), {"file_name": str(path), "height": h, "width": w, "slice": z}, detections)
            labels[z] = label_map(detections, writer.threshold)
            picture = overlay(slices[z], detections, writer.threshold, writer.names)
            picture.save(overlay_dir / f"{z:04d}.png")
    volumes.write_label_volume(labels, image, volumes.mask_volume_path(writer.out_dir / "masks", f"{name}{_ext(path)}"))


def _ext(path: Path) -> str:
    """The volume extension of ``path`` (``.nii.gz``, ``.mhd``, ...), empty for a DICOM folder."""
    return Path(path).name[len(volumes.volume_name(path)) :]


def _model_for_runtime(
    runtime: str, weights: str | None, arch: MaskRCNNConfig | None, device: torch.device
) -> tuple[Any, list[str]]:
    """The model ``predict`` calls: the torch network on ``device``, or its graph on onnxruntime/OpenVINO."""
    check_runtime(runtime)
    if runtime != "torch" and weights is not None and Path(weights).suffix == ".onnx":
        graph = RuntimeModel.from_onnx(runtime, weights)
        return graph, graph.class_names
    model, names = load_for_command("predict", weights, arch)
    if runtime == "torch":
        return model.to(device=device, dtype=torch.float32).eval(), names
    return RuntimeModel.cached(runtime, weights, arch, model.float().eval(), names), names


def main(args: list[str] | None = None) -> None:
    given = sys.argv[1:] if args is None else args
    with user_errors_exit():
        asks_help = any(arg in ("-h", "--help") for arg in given)
        if not asks_help and not any(arg == "--output_dir" or arg.startswith("--output_dir=") for arg in given):
            raise ConfigError("segmentation.predict: --output_dir is required")
        cli = PredictCLI(args=args, description=__doc__)
        _predict_from_cli(cli)


def _predict_from_cli(cli: PredictCLI) -> None:
    config = cli.config
    device = torch.device(config.device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():  # started by torchrun
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    arch = cli.model.arch if config_given(cli) else None
    model, names = _model_for_runtime(config.runtime, cli.model.hparams.weights, arch, device)
    path = predict(
        model,
        config.input,
        config.output_dir,
        class_names=names,
        min_size=cli.datamodule.min_size_test,
        max_size=cli.datamodule.max_size_test,
        score_threshold=config.score_threshold,
        window=CtWindow(config.window_center, config.window_width, config.intensity_offset),
        batch_size=config.batch_size,
    )
    if _world_size() > 1:
        dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"Wrote {path} and the masks and overlays beside it", flush=True)


if __name__ == "__main__":
    main()
