"""``python -m segmentation.export``: the Mask R-CNN as an ONNX graph (boxes, labels, scores, masks), checked.

Deployment targets (onnxruntime, TensorRT, a hospital's inference server) do not run PyTorch. The exported graph
takes one float32 ``(3, S, S)`` BGR 0-255 image (already resized to ``S x S``, default 512, the recipe's size) and
returns ``boxes`` float32 ``(N, 4)`` xyxy, ``labels`` int64 ``(N,)`` (1..K), ``scores`` float32 ``(N,)`` and
``masks`` uint8 ``(N, S, S)`` (0/1, pasted as detectron2 pastes them); ``N`` varies from image to image.

It is exported with the TorchScript tracer (``torch.onnx.export(dynamo=False)``, opset 17). Tracing records Python
values as constants. Where the model would use Python numbers that depend on the image, the parts themselves
compute them as tensors: the ROI pooler always does, and so does torchvision's box clipping while tracing; the ROI
heads' inference (boxes and detections per image) and the mask paste (the number of chunks) take a branch under
``torch.jit.is_tracing()`` with single-image tensor arithmetic that gives the same values, and NMS orders its output
by score under ``torch.onnx.is_in_onnx_export()``. This module only traces, so the graph's numbers are the model's:
:func:`compare_with_onnxruntime` runs both on the same images (``--images``: the first traces).

    python -m segmentation.export --config C --model.weights W --output model.onnx --images IMG [IMG ...] [--size 512]

Needs ``onnx`` and ``onnxruntime`` (the ``onnx`` extra).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pytorch_lightning.cli import LightningArgumentParser
from torch import Tensor

from segmentation.checkpoints.loading import load_for_command
from segmentation.cli import SegmentationCLI, config_given
from segmentation.data.images import read_image_bgr
from segmentation.errors import user_errors_exit
from segmentation.model.mask_rcnn import MaskRCNN

OPSET = 17
OUTPUT_NAMES = ["boxes", "labels", "scores", "masks"]


class ExportableMaskRCNN(torch.nn.Module):
    """One fixed-size image in, ``(boxes, labels, scores, masks)`` out: the graph's signature."""

    def __init__(self, model: MaskRCNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        (out,) = self.model([image])
        return out["boxes"], out["labels"], out["scores"], out["masks"].to(torch.uint8)


def export_onnx(model: MaskRCNN, output: str | Path, sample: Tensor) -> Path:
    """Trace ``model`` (eval, fp32, CPU) on ``sample`` and write the ONNX graph to ``output``.

    Args:
        model: the network with its weights.
        output: the ``.onnx`` file to write.
        sample: a float32 ``(3, S, S)`` image on which the model detects something: the tracer records only the
            operations that run, and the mask paste runs only for a non-empty detection set. ``S`` is the graph's
            input size.

    Raises:
        ValueError: the model detects nothing on ``sample``.
    """
    return _trace_to_onnx(model, ExportableMaskRCNN, output, sample, OUTPUT_NAMES, {})


def _trace_to_onnx(
    model: MaskRCNN,
    graph: Callable[[MaskRCNN], torch.nn.Module],
    output: str | Path,
    sample: Tensor,
    output_names: list[str],
    input_axes: dict[int, str],
) -> Path:
    """Trace ``graph(model)`` (eval, fp32, CPU) on ``sample`` into ``output``: the one export both graphs share.

    Every output's first axis is its number of detections; ``input_axes`` names the image's dynamic axes.
    """
    model = model.float().eval().cpu()
    sample = sample.float()
    with torch.no_grad():
        (found,) = model([sample])
    if len(found["boxes"]) == 0:
        raise ValueError("the model detects nothing on the sample image; trace with an image where it detects")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.register_custom_op_symbolic("aten::__iand_", _in_place_and, OPSET)
    dynamic_axes = {name: {0: "detections"} for name in output_names}
    if input_axes:
        dynamic_axes["image"] = input_axes
    with torch.no_grad():
        torch.onnx.export(
            graph(model).eval(),  # a train-mode wrapper would be restored to train mode, model too
            (sample,),
            str(output),
            opset_version=OPSET,
            dynamo=False,
            input_names=["image"],
            output_names=output_names,
            dynamic_axes=dynamic_axes,
        )
    return output


RUNTIME_OUTPUT_NAMES = ["boxes", "labels", "scores", "mask_probs"]


class RuntimeGraphModule(torch.nn.Module):
    """Any-size ``(3, H, W)`` image in, detections in the input frame with unpasted ``(N, M, M)`` mask
    probabilities out: the network part of inference. The host rescales and pastes (``detector_postprocess``) at
    the original image size, as the PyTorch path does, so the graph needs no output size."""

    def __init__(self, model: MaskRCNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        model = self.model
        image_list, _ = model.transform([image])
        features = model.backbone(image_list.tensors)
        proposals, _ = model.rpn(image_list, features)
        (out,), _ = model.roi_heads(features, proposals, image_list.image_sizes)
        return out["boxes"], out["labels"], out["scores"], out["masks"][:, 0]


def export_runtime_onnx(model: MaskRCNN, output: str | Path, sample: Tensor) -> Path:
    """Trace ``RuntimeGraphModule`` on ``sample`` with dynamic height and width (``RUNTIME_OUTPUT_NAMES`` out).

    Raises:
        ValueError: the model detects nothing on ``sample`` (the mask head would not be traced).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the parts handle the shape-dependent spots
        return _trace_to_onnx(
            model, RuntimeGraphModule, output, sample, RUNTIME_OUTPUT_NAMES, {1: "height", 2: "width"}
        )


def _in_place_and(g: torch.Graph, a: torch.Value, b: torch.Value) -> torch.Value:
    """ONNX for ``a &= b`` on bool masks (the RPN's box filter); the tracer has already made it functional."""
    return g.op("And", a, b)


@dataclass(frozen=True)
class Comparison:
    """PyTorch vs onnxruntime on one image: detection counts, label equality and the worst differences."""

    torch_count: int
    onnx_count: int
    labels_equal: bool
    max_box_diff: float
    max_score_diff: float
    min_mask_iou: float

    @property
    def same(self) -> bool:
        """Same detections (count, labels, boxes within 1e-2 px, scores 1e-4) and every mask IoU >= 0.98."""
        return (
            self.torch_count == self.onnx_count
            and self.labels_equal
            and self.max_box_diff <= 1e-2
            and self.max_score_diff <= 1e-4
            and self.min_mask_iou >= 0.98
        )


def compare_with_onnxruntime(model: MaskRCNN, onnx_path: str | Path, images: Sequence[Tensor]) -> list[Comparison]:
    """Run the PyTorch model and the ONNX graph (onnxruntime, CPU) on the same ``(3, S, S)`` images."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    module = ExportableMaskRCNN(model.float().eval().cpu())
    comparisons = []
    for image in images:
        with torch.no_grad():
            expected = [t.numpy() for t in module(image.float())]
        got = session.run(OUTPUT_NAMES, {"image": image.float().numpy()})
        n, m = len(expected[0]), len(got[0])
        same_n = n == m
        ious = [_iou(a, b) for a, b in zip(expected[3], got[3], strict=True)] if same_n else [0.0]
        comparisons.append(
            Comparison(
                torch_count=n,
                onnx_count=m,
                labels_equal=same_n and bool(np.array_equal(expected[1], got[1])),
                max_box_diff=float(np.abs(expected[0] - got[0]).max(initial=0.0)) if same_n else float("inf"),
                max_score_diff=float(np.abs(expected[2] - got[2]).max(initial=0.0)) if same_n else float("inf"),
                min_mask_iou=min(ious, default=1.0),
            )
        )
    return comparisons


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def load_square_image(path: str | Path, size: int) -> Tensor:
    """An image file as the graph's input: BGR, resized to ``size x size`` (PIL bilinear), float32 ``(3, S, S)``."""
    from PIL import Image

    image = read_image_bgr(str(path))
    if image.shape[:2] != (size, size):
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()


class ExportCLI(SegmentationCLI):
    """``SegmentationCLI`` plus the export options."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument("--output", type=str, required=True, help="The .onnx file to write.")
        parser.add_argument("--size", type=int, default=512, help="The graph's fixed input side.")
        parser.add_argument(
            "--images", type=str, nargs="+", required=True, help="Trace on the first; compare PyTorch and ONNX on all."
        )


def main(args: list[str] | None = None) -> None:
    with user_errors_exit():
        cli = ExportCLI(args=args, description=__doc__)
        _export_from_cli(cli)


def _export_from_cli(cli: ExportCLI) -> None:
    config = cli.config
    arch = cli.model.arch if config_given(cli) else None
    model, _ = load_for_command("export", cli.model.hparams.weights, arch)
    images = [load_square_image(p, config.size) for p in config.images]
    path = export_onnx(model, config.output, images[0])
    print(f"Wrote {path}", flush=True)
    comparisons = compare_with_onnxruntime(model, path, images)
    for name, c in zip(config.images, comparisons, strict=True):
        print(f"{name}: {c}", flush=True)
    if not all(c.same for c in comparisons):
        raise SystemExit("segmentation.export: the ONNX graph's detections differ from PyTorch's (see above)")


if __name__ == "__main__":
    main()
