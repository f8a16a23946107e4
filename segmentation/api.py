"""The Python API: ``Predictor(weights)(image)`` gives the detections ``segmentation.predict`` writes, as numpy.

Built with ``load_trained`` like every command, so our ``.ckpt`` needs no config. Images may be a path (a single
DICOM slice too, windowed in HU like a volume slice), a PIL image or a numpy array: ``H x W`` grayscale (16-bit
values are read as HU + ``intensity_offset`` and windowed like CT volumes), or ``H x W x 3`` RGB
(``channel_order="BGR"`` for OpenCV arrays). A config file is parsed by the command line's own parser
(``read_config``), so a notebook and ``segmentation.fit`` read the same file the same way.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from segmentation.checkpoints.loading import load_trained
from segmentation.data import dicom, volumes
from segmentation.data.images import (
    HIGH_BIT_DEPTH_MODES,
    LUNG_CT,
    CtWindow,
    read_image_bgr,
    window_slice,
    window_to_uint8,
)
from segmentation.errors import ConfigError
from segmentation.inference.inputs import Source, read_volume
from segmentation.inference.runtimes import RuntimeModel, check_runtime
from segmentation.model.config import MaskRCNNConfig

CHANNEL_ORDERS = ("RGB", "BGR")


@dataclass(frozen=True)
class ParsedConfig:
    """A config file as the commands see it.

    Attributes:
        arch: ``model.arch``.
        data: the ``--data.*`` options (``CocoDataModule``'s arguments).
        trainer: the ``--trainer.*`` options.
    """

    arch: MaskRCNNConfig
    data: dict[str, Any]
    trainer: dict[str, Any]


def read_config(config: str | Path, overrides: Sequence[str] = ()) -> ParsedConfig:
    """Parse our yaml or a detectron2 ``config.yaml`` plus CLI-style ``overrides`` with ``SegmentationCLI``.

    The parser of ``segmentation.fit`` and ``segmentation.predict``, so translation, defaults and validation are
    theirs; no Trainer is built and no weights are read.
    """
    from segmentation.cli import SegmentationCLI

    class ConfigOnlyCLI(SegmentationCLI):
        def instantiate_trainer(self, **kwargs: Any) -> None:  # type: ignore[override]
            return None  # only the parsed config is wanted: no Trainer banner, no log folders

    with warnings.catch_warnings():  # LightningCLI warns whenever the process has argv of its own (notebooks do)
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
        cli = ConfigOnlyCLI(["--config", str(config), *overrides])
    trainer = cli.config.get("trainer")
    return ParsedConfig(cli.model.arch, cli.config.data.as_dict(), trainer.as_dict() if trainer else {})


def _pil_to_bgr(image: Image.Image, window: CtWindow) -> np.ndarray:
    """As ``read_image_bgr`` reads a file: 16/32-bit modes windowed, every other mode through ``convert("RGB")``."""
    if image.mode in HIGH_BIT_DEPTH_MODES:
        return window_slice(np.asarray(image), window)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])


def _read_path(path: Path, window: CtWindow) -> np.ndarray:
    """An image file as training reads it; a single DICOM slice (or a one-slice volume) in HU through the CT
    window, as ``segmentation.predict`` windows volume slices. A volume of several slices is refused: it is the
    predict command's job (one mask volume with the input's geometry), not one image's."""
    if not (volumes.has_volume_suffix(path) or dicom.is_dicom_file(path)):
        return read_image_bgr(str(path), window)
    hu = volumes.volume_array(read_volume(Source("volume", path, path.stem)))
    if hu.shape[0] != 1:
        raise ConfigError(
            f"{path} is a volume of {hu.shape[0]} slices; predict it with python -m segmentation.predict --input "
            f"{path} (mask volumes with its geometry), or pass its slices one by one"
        )
    grey = window_to_uint8(hu[0], window.center, window.width)
    return np.repeat(grey[:, :, None], 3, axis=2)


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
    if channel_order not in CHANNEL_ORDERS:
        raise ConfigError(f"channel_order must be one of {', '.join(CHANNEL_ORDERS)}, got {channel_order!r}")
    window = CtWindow(window_center, window_width, intensity_offset)
    if isinstance(image, (str, Path)):
        return _read_path(Path(image), window)
    if isinstance(image, Image.Image):
        return _pil_to_bgr(image, window)
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        if array.dtype != np.uint8:  # 16-bit CT export: stored value = HU + intensity_offset
            return window_slice(array, window)
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8:
        return np.ascontiguousarray(array if channel_order == "BGR" else array[:, :, ::-1])
    expected = "an H x W grayscale (uint8 or 16-bit) or H x W x 3 uint8 image"
    raise ConfigError(f"expected {expected}, got shape {array.shape} {array.dtype}")


class Predictor:
    """A trained model ready for inference on single images.

    Args:
        weights: our Lightning ``.ckpt`` (records its architecture) or a detectron2/torch file with ``config``.
        config: the architecture, needed for files that do not record one: a config file (ours or detectron2's
            ``config.yaml``; its ``data.min/max_size_test`` then are the resize sizes) or a ``MaskRCNNConfig``.
        device: torch device for inference.
        runtime: ``torch``, or ``onnxruntime`` / ``openvino`` (CPU; the graph is exported on first use and cached,
            see ``segmentation.inference``). With those, ``weights`` may also be a runtime ``.onnx`` graph.
        min_size, max_size: test-time ResizeShortestEdge sizes (default: the config file's ``min/max_size_test``,
            else 512, as ``segmentation.predict``).
        image_options: ``channel_order``, ``window_center``, ``window_width``, ``intensity_offset`` (see
            ``to_bgr_uint8``), used for every image.
    """

    def __init__(
        self,
        weights: str | Path,
        config: str | Path | MaskRCNNConfig | None = None,
        device: str = "cpu",
        runtime: str = "torch",
        *,
        min_size: int | None = None,
        max_size: int | None = None,
        **image_options: Any,
    ) -> None:
        check_runtime(runtime)
        to_bgr_uint8(np.zeros((1, 1), np.uint8), **image_options)  # a misspelt option fails here, not per image
        data: dict[str, Any] = {}
        if isinstance(config, (str, Path)):
            parsed = read_config(config)
            config, data = parsed.arch, parsed.data
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
        self.min_size = min_size or data.get("min_size_test", 512)
        self.max_size = max_size or data.get("max_size_test", 512)
        self.image_options = image_options

    def __call__(self, image: Any) -> dict[str, np.ndarray] | list[dict[str, np.ndarray]]:
        """Detections at the image's size: ``boxes`` (N, 4) xyxy, ``scores``, ``labels`` (1..K), ``class_names``
        and ``masks`` (N, H, W) bool, all numpy; a list (or tuple) of images gives a list."""
        from segmentation.predict import predict_images

        if isinstance(image, Sequence) and not isinstance(image, (str, np.ndarray)):
            return [self(one) for one in image]
        bgr = to_bgr_uint8(image, **self.image_options)
        detections = predict_images(self.model, [bgr], self.min_size, self.max_size)[0]
        out = {name: value.numpy() for name, value in detections.items()}
        out["class_names"] = np.array([self._name(int(k)) for k in out["labels"]], dtype=str)
        return out

    def _name(self, label: int) -> str:
        """Label 1..K's class name (``class_k`` for a graph that records none)."""
        return self.class_names[label - 1] if label <= len(self.class_names) else f"class_{label}"

    def draw(self, image: Any, detections: dict[str, Any], score_threshold: float = 0.0) -> Image.Image:
        """The overlay ``segmentation.predict`` saves, for these detections (those scoring ``>= score_threshold``)."""
        from segmentation.visualize import draw_overlay

        rgb = np.ascontiguousarray(to_bgr_uint8(image, **self.image_options)[:, :, ::-1])
        keep = detections["scores"] >= score_threshold
        kept = {k: detections[k][keep] for k in ("boxes", "scores", "labels", "masks")}
        names = [self._name(k) for k in range(1, int(max(kept["labels"], default=0)) + 1)]
        return draw_overlay(rgb, kept["boxes"], kept["scores"], kept["labels"], kept["masks"], names)


def final_metrics(metrics_json: str | Path) -> dict[str, Any]:
    """What a run's ``metrics.json`` says at its end: the last training line merged with the val and test lines
    written after it (``iteration`` is then the number of steps trained)."""
    from segmentation.training.metrics_json import written_at_step

    lines = [json.loads(line) for line in Path(metrics_json).read_text().splitlines() if line.strip()]
    if not lines:
        return {}
    last = max(written_at_step(line) for line in lines)
    final: dict[str, Any] = {}
    for line in lines:
        if written_at_step(line) == last:
            final.update(line)
    final["iteration"] = last
    return final


def train(
    config: str | Path, overrides: Sequence[str] | dict[str, Any] | None = None, *, output_dir: str | Path
) -> tuple[Path, dict[str, Any]]:
    """Run what ``python -m segmentation.fit --config CONFIG ...`` runs; return the run directory and final metrics.

    ``overrides`` are CLI-style strings (``["--trainer.max_steps=2"]``) or a dict (``{"trainer.max_steps": 2}``).
    The final metrics are ``final_metrics`` of the run's ``metrics.json``: the last training losses, ``lr`` and the
    val (``bbox/AP``, ``segm/AP``, ...) and test (``test/segm/AP``, ...) results.
    """
    from segmentation import fit

    if isinstance(overrides, dict):
        overrides = [f"--{key}={value}" for key, value in overrides.items()]
    fit.main(["--config", str(config), *(overrides or []), "--output_dir", str(output_dir)])
    return Path(output_dir), final_metrics(Path(output_dir) / "metrics.json")
