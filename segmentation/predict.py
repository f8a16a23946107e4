"""``python -m segmentation.predict``: run a trained model on images, image folders and CT volumes.

Training and evaluation read COCO jsons; a user with a new scan has none. This entry point takes the same config and
weights as ``segmentation.evaluate`` and plain inputs:

    python -m segmentation.predict --config C --model.weights W --input PATH [PATH ...] --output_dir O
        [--score_threshold 0.5] [--window_center -600 --window_width 1500] [--batch_size 4] [--device cpu]

``C`` is one of our configs or a detectron2 ``config.yaml`` dump, parsed by the same ``SegmentationCLI`` as
training, so the model is built one way only; ``W`` is anything ``load_weights`` loads. ``PATH`` is an image, a
folder of images, a volume file (``.mhd``, ``.mha``, ``.nii``, ``.nii.gz`` incl. NIfTI-2, ``.nrrd``, ``.mgz``), a
DICOM file, or a folder holding DICOM series (a series folder, a study folder); ``segmentation.inference.inputs``
says how each is read and named (volumes need the ``volumes`` extra). A DICOM series with a gap or a second
orientation is predicted as separate stacks, each with its true geometry, never stacked with a made-up spacing.
An input that cannot be read is reported and skipped; everything else is written, then the command exits with
status 2. Inference is detectron2's test-time path: fp32, eval
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

Volumes print a progress line (slices done, rate, ETA) on stderr.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from pytorch_lightning.cli import LightningArgumentParser
from torch import Tensor

from segmentation.checkpoints.loading import load_for_command
from segmentation.cli import SegmentationCLI, config_given
from segmentation.data.images import LUNG_CT, LUNG_WINDOW, CtWindow, window_to_uint8
from segmentation.data.mapper import resize_shortest_edge
from segmentation.data.volumes import volume_array
from segmentation.errors import ConfigError, InputError, user_errors_exit
from segmentation.inference.inputs import (
    SkippedInputsError,
    Source,
    discover_inputs,
    read_image,
    read_volume,
    unique_names,
)
from segmentation.inference.progress import SliceProgress
from segmentation.inference.runtimes import RUNTIMES, RuntimeModel, check_runtime
from segmentation.inference.writer import PredictionWriter, label_map, world_size
from segmentation.model.config import MaskRCNNConfig


class PredictCLI(SegmentationCLI):
    """``SegmentationCLI`` plus the inputs and output options of prediction."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument(
            "--input",
            type=str,
            nargs="+",
            required=True,
            help="Images, image folders, volume files, DICOM files, DICOM series or study folders.",
        )
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


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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
        inputs: image files, image folders, volume files, DICOM files, DICOM series and study folders.
        out_dir: output folder (created).
        class_names: one per foreground class (labels 1..K).
        min_size, max_size: detectron2's test-time ResizeShortestEdge sizes.
        score_threshold: detections at or above it go into masks and overlays (``predictions.json`` has all).
        window: the HU window of volume slices and 16-bit images (and the offset of 16-bit images).
        batch_size: images (or slices) per forward pass.

    Returns:
        The path of ``predictions.json``.

    Raises:
        SkippedInputsError: after everything readable was predicted and written, listing the inputs that were not.
    """
    out_dir = Path(out_dir)
    writer = PredictionWriter(out_dir, class_names, score_threshold)
    found = discover_inputs(inputs)
    rank, world = (dist.get_rank(), dist.get_world_size()) if world_size() > 1 else (0, 1)
    for message in (found.notes + [f"skipped {problem}" for problem in found.problems]) if rank == 0 else []:
        print(f"warning: {message}", file=sys.stderr, flush=True)
    names = unique_names([source.name for source in found.sources])
    mine = [(i, s, n) for i, (s, n) in enumerate(zip(found.sources, names, strict=True)) if i % world == rank]
    problems: list[str] = []
    images = [(i, s, n) for i, s, n in mine if s.kind == "image"]
    for batch in _batches(images, batch_size):
        _predict_image_batch(model, batch, writer, (min_size, max_size), window, problems)
    for index, source, name in mine:
        if source.kind != "image":
            try:
                volume = read_volume(source)
            except InputError as e:
                problems.append(_report(e))
                continue
            _predict_volume(model, index, source, name, volume, writer, (min_size, max_size), window, batch_size)
    problems = writer.finish(problems)
    if found.problems or problems:
        raise SkippedInputsError(found.problems + problems, out_dir)
    return out_dir / "predictions.json"


def _predict_image_batch(
    model: torch.nn.Module,
    batch: Sequence[tuple[int, Source, str]],
    writer: PredictionWriter,
    sizes: tuple[int, int],
    window: CtWindow,
    problems: list[str],
) -> None:
    """Read the batch's images (an unreadable one is reported into ``problems``), predict the rest in one pass."""
    readable = []
    for index, source, name in batch:
        try:
            readable.append((index, source, name, read_image(source, window)))
        except InputError as e:
            problems.append(_report(e))
    if not readable:
        return
    for (index, source, name, array), detections in zip(
        readable, predict_images(model, [array for *_, array in readable], *sizes), strict=True
    ):
        h, w = array.shape[:2]
        writer.add((index, 0), {"file_name": str(source.path), "height": h, "width": w}, detections)
        writer.write_image(name, array, detections)


def _report(error: InputError) -> str:
    """Print an unreadable input at once (the run goes on) and return its line for the final summary."""
    print(f"warning: skipped {error}", file=sys.stderr, flush=True)
    return str(error)


def _predict_volume(
    model: torch.nn.Module,
    index: int,
    source: Source,
    name: str,
    image: Any,
    writer: PredictionWriter,
    sizes: tuple[int, int],
    window: CtWindow,
    batch_size: int,
) -> None:
    """Predict every axial slice of ``image``, with a progress line; write overlays and the mask volume."""
    slices = window_to_uint8(volume_array(image), window.center, window.width)
    labels = np.zeros(slices.shape, dtype=np.uint8)
    depth, h, w = slices.shape
    record = {"file_name": str(source.path), "height": h, "width": w}
    if source.stack is not None:
        record["series_instance_uid"] = source.stack.series_uid
    progress = SliceProgress(name, depth)
    for batch in _batches(range(depth), batch_size):
        bgr = [np.repeat(slices[z][:, :, None], 3, axis=2) for z in batch]
        for z, detections in zip(batch, predict_images(model, bgr, *sizes), strict=True):
            writer.add((index, z), {**record, "slice": z}, detections)
            labels[z] = label_map(detections, writer.threshold)
            writer.write_slice_overlay(name, z, slices[z], detections)
        progress.update(batch[-1] + 1)
    writer.write_mask_volume(name, labels, image, source.path)


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
    try:
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
    finally:  # also when inputs were skipped: every process leaves the group before exiting
        if world_size() > 1:
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"Wrote {path} and the masks and overlays beside it", flush=True)


if __name__ == "__main__":
    main()
