"""The Python API: ``Predictor(weights)(image)`` gives the detections ``segmentation.predict`` writes, as numpy.

Built with ``load_trained`` like every command, so our ``.ckpt`` needs no config. Images may be a path, a PIL image
or a numpy array: ``H x W`` grayscale (16-bit values are read as HU + ``intensity_offset`` and windowed like CT
volumes), or ``H x W x 3`` RGB (``channel_order="BGR"`` for OpenCV arrays).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from segmentation.checkpoints.loading import load_trained
from segmentation.data.images import LUNG_CT, CtWindow, read_image_bgr, window_slice
from segmentation.errors import ConfigError
from segmentation.inference.runtimes import RUNTIMES, RuntimeModel, check_runtime  # noqa: F401 (RUNTIMES: API)
from segmentation.model.config import MaskRCNNConfig


def to_bgr_uint8(
    image: Any,
    *,
    channel_order: str = "RGB",
    window_center: float = LUNG_CT.center,
    window_width: float = LUNG_CT.width,
    intensity_offset: float = LUNG_CT.intensity_offset,
) -> np.ndarray:
    """The ``(H, W, 3)`` uint8 BGR array the model pipeline reads, from a path, PIL image or array; 16-bit data
    is windowed exactly as training and ``segmentation.predict`` window it."""
    window = CtWindow(window_center, window_width, intensity_offset)
    if isinstance(image, (str, Path)):
        return read_image_bgr(str(image), window)
    array = np.asarray(image)
    if array.ndim == 2:
        if array.dtype != np.uint8:  # 16-bit CT export: stored value = HU + intensity_offset
            return window_slice(array, window)
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8:
        return np.ascontiguousarray(array if channel_order == "BGR" else array[:, :, ::-1])
    raise ConfigError(f"expected an H x W or H x W x 3 uint8 image, got shape {array.shape} {array.dtype}")


class Predictor:
    """A trained model ready for inference on single images.

    Args:
        weights: our Lightning ``.ckpt`` (records its architecture) or a detectron2/torch file with ``config``.
        config: the architecture, needed for files that do not record one.
        device: torch device for inference.
        runtime: ``torch``, or ``onnxruntime`` / ``openvino`` (CPU; the graph is exported on first use and cached,
            see ``segmentation.inference``). With those, ``weights`` may also be a runtime ``.onnx`` graph.
        min_size, max_size: test-time ResizeShortestEdge sizes (the data section's ``min/max_size_test``).
    """

    def __init__(
        self,
        weights: str | Path,
        config: MaskRCNNConfig | None = None,
        device: str = "cpu",
        runtime: str = "torch",
        *,
        min_size: int = 512,
        max_size: int = 512,
        **image_options: Any,
    ) -> None:
        check_runtime(runtime)
        self.runtime = runtime
        if runtime != "torch" and Path(weights).suffix == ".onnx":
            self.model: Any = RuntimeModel.from_onnx(runtime, weights)
            self.class_names = self.model.class_names
        else:
            model, self.class_names, _ = load_trained(weights, config)
            if runtime == "torch":
                self.model = model.to(device=torch.device(device), dtype=torch.float32).eval()
            else:
                self.model = RuntimeModel.cached(runtime, weights, config, model.float().eval(), self.class_names)
        self.min_size, self.max_size, self.image_options = min_size, max_size, image_options

    def __call__(self, image: Any) -> dict[str, Any] | list[dict[str, Any]]:
        """Detections at the image's size: boxes (N, 4) xyxy, scores, labels (1..K), class_names, masks (N, H, W)."""
        from segmentation.predict import predict_images

        if isinstance(image, Sequence) and not isinstance(image, (str, np.ndarray)):
            return [self(one) for one in image]
        bgr = to_bgr_uint8(image, **self.image_options)
        detections = predict_images(self.model, [bgr], self.min_size, self.max_size)[0]
        out = {name: value.numpy() for name, value in detections.items()}
        out["class_names"] = [self._name(int(k)) for k in out["labels"]]
        return out

    def _name(self, label: int) -> str:
        """Label 1..K's class name (``class_k`` for a graph that records none)."""
        return self.class_names[label - 1] if label <= len(self.class_names) else f"class_{label}"

    def draw(self, image: Any, detections: dict[str, Any], score_threshold: float = 0.0) -> Image.Image:
        """The overlay ``segmentation.predict`` saves, for these detections."""
        from segmentation.visualize import draw_overlay

        rgb = np.ascontiguousarray(to_bgr_uint8(image, **self.image_options)[:, :, ::-1])
        keep = detections["scores"] >= score_threshold
        kept = {k: detections[k][keep] for k in ("boxes", "scores", "labels", "masks")}
        return draw_overlay(rgb, kept["boxes"], kept["scores"], kept["labels"], kept["masks"], self.class_names)


def train(
    config: str | Path, overrides: Sequence[str] | dict[str, Any] | None = None, *, output_dir: str | Path
) -> tuple[Path, dict[str, Any]]:
    """Run what ``python -m segmentation.fit --config CONFIG ...`` runs; return the run directory and final metrics.

    ``overrides`` are CLI-style strings (``["--trainer.max_steps=2"]``) or a dict (``{"trainer.max_steps": 2}``).
    The final metrics are the last line of the run's ``metrics.json``.
    """
    from segmentation import fit

    if isinstance(overrides, dict):
        overrides = [f"--{key}={value}" for key, value in overrides.items()]
    fit.main(["--config", str(config), *(overrides or []), "--output_dir", str(output_dir)])
    lines = (Path(output_dir) / "metrics.json").read_text().splitlines()
    return Path(output_dir), json.loads(lines[-1]) if lines else {}
