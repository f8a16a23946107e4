"""The Mask R-CNN run by onnxruntime or OpenVINO, behind the interface of the PyTorch model.

Deployment machines often run these runtimes rather than PyTorch eager, and they are faster on CPU. The network
part of inference runs in the runtime on the any-size graph of ``export.export_runtime_onnx`` (dynamic height and
width, so every size ``ResizeShortestEdge`` produces works); rescaling boxes and pasting masks at the original size
stay on the host in ``detector_postprocess``, the code the PyTorch path runs, so the detections dict is the same.

``RuntimeModel`` is called as the model is (``model(images, output_sizes=...)``), so ``predict_images``,
``segmentation.predict`` and ``Predictor`` use it unchanged. Given torch weights it exports the graph on the first
image the model detects something on (tracing records only operations that run) and caches it
(``graph_cache``); given a ``.onnx`` file it runs that.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from segmentation.errors import ConfigError, UserError
from segmentation.inference import graph_cache
from segmentation.model.postprocess import detector_postprocess

RUNTIMES = ("torch", "onnxruntime", "openvino")
GRAPH_RUNTIMES = ("onnxruntime", "openvino")
EXTRA_OF = {"onnxruntime": "onnx", "openvino": "openvino"}

Session = Callable[[np.ndarray], Sequence[np.ndarray]]


class MissingRuntimeError(UserError, ImportError):
    """The runtime's package is not installed; the message names the extra that installs it."""


def _import(runtime: str, module: str) -> Any:
    try:
        return __import__(module)
    except ImportError as e:
        raise MissingRuntimeError(
            f"runtime {runtime!r} needs the {module!r} package: pip install 'segmentation[{EXTRA_OF[runtime]}]'"
        ) from e


def check_runtime(runtime: str) -> None:
    """Refuse an unknown runtime or one whose packages are missing, before any work is done."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime {runtime!r} is not available in this build; use one of {', '.join(RUNTIMES)}")
    if runtime in GRAPH_RUNTIMES:
        _import(runtime, "onnx")  # export and the class-name metadata
        _import(runtime, runtime)


def open_session(runtime: str, path: str | Path) -> Session:
    """A function ``(3, H, W) float32 BGR -> (boxes, labels, scores, mask_probs)`` running ``path`` on CPU.

    Both runtimes use ``torch.get_num_threads()`` threads, so one setting (``torch.set_num_threads``,
    ``OMP_NUM_THREADS``) governs every runtime and a comparison between them runs at equal thread counts.
    """
    if runtime == "onnxruntime":
        ort = _import(runtime, "onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return lambda image: session.run(names, {"image": image})
    if runtime == "openvino":
        return _openvino_session(_import(runtime, "openvino"), path)
    raise ConfigError(f"runtime {runtime!r} does not run ONNX graphs; use one of {', '.join(GRAPH_RUNTIMES)}")


OPENVINO_SIZES_KEPT = 2  # compiled input sizes kept (each holds its own copy of the weights: ~0.4 GB for X101)


def _openvino_session(ov: Any, path: str | Path) -> Session:
    """OpenVINO compiled for each input size it meets (the last ``OPENVINO_SIZES_KEPT`` kept).

    The graph's height and width are dynamic; compiled for one concrete size, OpenVINO plans its kernels and memory
    for it: X101 at 512 x 512 on 2 threads took 1.72 s instead of 2.43 s (compiling takes about 1 s, once per size;
    the slices of a volume share one size).
    """
    core = ov.Core()
    graph = core.read_model(str(path))
    # OpenVINO's CPU plugin runs in bf16 by default on CPUs with AMX/AVX512-BF16: scores then drift by ~0.02 and
    # detections near the threshold come and go. fp32 keeps PyTorch's detections.
    settings = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": torch.get_num_threads()}
    requests: OrderedDict[tuple[int, ...], Any] = OrderedDict()

    def run(image: np.ndarray) -> list[np.ndarray]:
        shape = tuple(image.shape)
        if shape not in requests:
            sized = graph.clone()
            sized.reshape({"image": list(shape)})
            requests[shape] = core.compile_model(sized, "CPU", settings).create_infer_request()
            if len(requests) > OPENVINO_SIZES_KEPT:
                requests.popitem(last=False)
        requests.move_to_end(shape)
        request = requests[shape]
        result = request.infer({"image": image})
        return [np.array(result[o]) for o in request.model_outputs]  # copy: the request reuses its buffers

    return run


def check_graph_outputs(path: str | Path) -> None:
    """A graph from ``segmentation.export`` (masks pasted at a fixed size) is not a runtime graph: say so."""
    import onnx

    from segmentation.export import RUNTIME_OUTPUT_NAMES

    outputs = [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]
    if outputs != RUNTIME_OUTPUT_NAMES:
        raise ConfigError(
            f"{path} has outputs {outputs}, not the runtime graph's {RUNTIME_OUTPUT_NAMES}; export it with "
            "segmentation.inference.runtimes.RuntimeModel (or pass the torch weights and let it export)"
        )


class RuntimeModel:
    """``MaskRCNN``'s eval-mode call on onnxruntime or OpenVINO: ``model(images, output_sizes=None)``.

    Args:
        runtime: ``onnxruntime`` or ``openvino``.
        graph: the runtime graph's path: read if it exists, else written on first use (from ``torch_model``).
        torch_model: the network to export when ``graph`` does not exist yet.
        class_names: recorded in the graph when it is exported.
    """

    def __init__(
        self, runtime: str, graph: str | Path, torch_model: torch.nn.Module | None = None, class_names: list[str] = ()
    ) -> None:
        check_runtime(runtime)
        if runtime not in GRAPH_RUNTIMES:
            raise ConfigError(f"RuntimeModel runs {', '.join(GRAPH_RUNTIMES)}, not {runtime!r}")
        self.runtime, self.graph, self.torch_model = runtime, Path(graph), torch_model
        self.class_names = list(class_names)
        self._session: Session | None = None
        if self.graph.is_file():
            self._open()
        elif torch_model is None:
            raise ConfigError(f"runtime graph {self.graph} does not exist and no torch weights were given to export")

    @classmethod
    def from_onnx(cls, runtime: str, path: str | Path) -> RuntimeModel:
        """Run a graph file given directly (``--model.weights model.onnx``)."""
        if not Path(path).is_file():
            from segmentation.errors import MissingFileError

            raise MissingFileError(f"ONNX graph not found: {path}")
        return cls(runtime, path)

    @classmethod
    def cached(
        cls, runtime: str, weights: str | Path, arch: Any, model: torch.nn.Module, class_names: list[str]
    ) -> RuntimeModel:
        """The graph of ``weights`` built as ``arch`` (None: the one the file records) from the cache, exported
        there from ``model`` on first use."""
        from segmentation.checkpoints.files import resolve

        return cls(runtime, graph_cache.graph_path(resolve(weights), arch), model, class_names)

    def _open(self) -> None:
        check_graph_outputs(self.graph)
        names = graph_cache.read_class_names(self.graph)
        if names is not None:
            self.class_names = names
        self._session = open_session(self.runtime, self.graph)

    def _export(self, sample: Tensor) -> bool:
        """Export on ``sample`` if the model detects something there; whether the graph exists now."""
        from segmentation.export import export_runtime_onnx

        assert self.torch_model is not None
        with torch.no_grad():
            (found,) = self.torch_model([sample.float()])
        if len(found["boxes"]) == 0:
            return False
        tmp = self.graph.with_name(f"{self.graph.stem}.partial.onnx")
        export_runtime_onnx(self.torch_model, tmp, sample)
        graph_cache.write_class_names(tmp, self.class_names)
        tmp.replace(self.graph)
        self._open()
        return True

    def parameters(self) -> Any:
        """No torch parameters: ``predict_images`` then feeds CPU tensors."""
        return iter(())

    def eval(self) -> RuntimeModel:
        return self

    def __call__(
        self, images: Sequence[Tensor], output_sizes: Sequence[tuple[int, int]] | None = None
    ) -> list[dict[str, Tensor]]:
        """Per ``(3, H, W)`` BGR 0-255 image: ``boxes``, ``scores``, ``labels``, bool ``masks`` at its output size."""
        sizes = [tuple(i.shape[-2:]) for i in images] if output_sizes is None else output_sizes
        results = []
        for image, out_hw in zip(images, sizes, strict=True):
            if self._session is None and not self._export(image):
                with torch.no_grad():  # nothing detected, nothing to trace yet: the network's answer is "none"
                    results.append(self.torch_model([image.float()], output_sizes=[out_hw])[0])
                continue
            assert self._session is not None
            boxes, labels, scores, probs = self._session(np.ascontiguousarray(image.float().cpu().numpy()))
            raw = {
                "boxes": torch.from_numpy(boxes),
                "labels": torch.from_numpy(labels),
                "scores": torch.from_numpy(scores),
                "masks": torch.from_numpy(probs)[:, None],
            }
            results.append(detector_postprocess(raw, tuple(image.shape[-2:]), out_hw))
        return results


@dataclass(frozen=True)
class Agreement:
    """How closely one image's detections from a runtime match PyTorch's, detection by detection.

    Attributes:
        count, other_count: detections of PyTorch and of the runtime.
        same_labels: every PyTorch detection found a runtime detection of its label.
        min_box_iou, min_mask_iou: the worst matched pair (1.0 when there are no detections).
        max_score_diff: the largest score difference of a matched pair.
        mask_pixels_differ, mask_pixels: over all matched pairs, the pixels in one mask only, and in either.
    """

    count: int
    other_count: int
    same_labels: bool
    min_box_iou: float
    min_mask_iou: float
    max_score_diff: float
    mask_pixels_differ: int = 0
    mask_pixels: int = 0

    def same_boxes(self, box_iou: float = 0.999) -> bool:
        """Same count and labels, every box within ``box_iou`` (other kernels move boxes by ~1e-4 px)."""
        return self.count == self.other_count and self.same_labels and self.min_box_iou >= box_iou

    def same(self, box_iou: float = 0.999, mask_iou: float = 0.99) -> bool:
        """Equal detections: ``same_boxes`` and every mask within ``mask_iou`` (a pixel whose probability sits on
        the 0.5 threshold may flip when other kernels fuse and reorder float operations)."""
        return self.same_boxes(box_iou) and self.min_mask_iou >= mask_iou


def _box_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a, area_b = (np.prod(x[:, 2:] - x[:, :2], axis=1) for x in (a, b))
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def match_detections(expected: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]) -> list[tuple[int, int]]:
    """Pair each expected detection, best score first, with the unpaired detection of its label that overlaps it
    most. Pairing by overlap, not by position, keeps near-tied scores (random weights give many) from swapping
    two detections' places and counting as a difference."""
    iou = _box_iou_matrix(expected["boxes"], got["boxes"])
    iou[expected["labels"][:, None] != got["labels"][None, :]] = -1.0
    pairs = []
    for i in range(len(expected["boxes"])):
        j = int(np.argmax(iou[i])) if iou.shape[1] else -1
        if j >= 0 and iou[i, j] >= 0:
            pairs.append((i, j))
            iou[:, j] = -1.0
    return pairs


def compare_detections(expected: Mapping[str, Any], got: Mapping[str, Any]) -> Agreement:
    """Compare two detections dicts of one image (tensors or numpy: ``boxes``, ``scores``, ``labels``, ``masks``)."""
    a, b = ({k: np.asarray(d[k]) for k in ("boxes", "scores", "labels", "masks")} for d in (expected, got))
    pairs = match_detections(a, b)
    if not pairs:
        return Agreement(len(a["scores"]), len(b["scores"]), len(a["scores"]) == 0, 1.0, 1.0, 0.0)
    i, j = (np.array(index) for index in zip(*pairs, strict=True))
    box_iou = _box_iou_matrix(a["boxes"][i], b["boxes"][j]).diagonal()
    ma, mb = a["masks"][i].astype(bool), b["masks"][j].astype(bool)
    union = (ma | mb).sum(axis=(1, 2))
    mask_iou = np.where(union > 0, (ma & mb).sum(axis=(1, 2)) / np.maximum(union, 1), 1.0)
    return Agreement(
        count=len(a["scores"]),
        other_count=len(b["scores"]),
        same_labels=len(pairs) == len(a["scores"]),
        min_box_iou=float(box_iou.min()),
        min_mask_iou=float(mask_iou.min()),
        max_score_diff=float(np.abs(a["scores"][i] - b["scores"][j]).max()),
        mask_pixels_differ=int((ma ^ mb).sum()),
        mask_pixels=int(union.sum()),
    )
