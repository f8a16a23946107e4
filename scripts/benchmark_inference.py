"""CPU inference speed for ``scripts/benchmark.py``: PyTorch eager, stock torchvision and the exported graph on each
runtime (onnxruntime, OpenVINO), timed interleaved, at equal detections.

Why a module of its own: the runtimes add an export, an equality check and their own keys; ``benchmark.py`` only
composes the measurements. The interleaved timer lives here too and ``benchmark_training`` uses it.

Equal detections are checked before any timing: every timed image goes once through eager PyTorch and once
through each runtime, and ``compare_detections`` pairs the score-ordered lists (same count and labels, box IoU >=
0.999, mask IoU >= 0.99: the tolerances of ``tests/test_runtimes.py``). A runtime whose detections differ is still
timed, but its row says so, since a speed-up that changes the answer is not one.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from segmentation.inference.runtimes import GRAPH_RUNTIMES, RuntimeModel, compare_detections

RUNTIME_KEYS = {runtime: f"{runtime}_inference_images_per_s" for runtime in GRAPH_RUNTIMES}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(
    steps_by_name: dict[str, Callable[[int], None]], warmup: int, steps: int, device: torch.device
) -> dict[str, float]:
    """Median wall time per named step function, calling them in turn (A, B, A, B, ...).

    Alternating makes a comparison fair on a shared machine: load from other processes hits every variant alike.
    """
    times: dict[str, list[float]] = {name: [] for name in steps_by_name}
    for i in range(warmup + steps):
        for name, step in steps_by_name.items():
            sync(device)
            start = time.perf_counter()
            step(i)
            sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def inference_step_fn(model: Callable[..., Any], images: Sequence[Tensor]) -> Callable[[int], None]:
    """fp32, batch 1, eval mode, no autograd: one image per call, as ``segmentation.evaluate`` runs."""
    if isinstance(model, nn.Module):
        model.eval()

    def step(i: int) -> None:
        with torch.inference_mode():
            model([images[i % len(images)]])

    return step


def detections_of(model: Callable[..., Any], images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
    with torch.inference_mode():
        return [model([image])[0] for image in images]


def agreement_summary(expected: Sequence[dict[str, Tensor]], got: Sequence[dict[str, Tensor]]) -> dict[str, Any]:
    """The worst agreement over the images, and whether every image has equal detections."""
    pairs = [compare_detections(e, g) for e, g in zip(expected, got, strict=True)]
    return {
        "equal_detections": all(p.same() for p in pairs),
        "equal_boxes_scores_labels": all(p.same_boxes() for p in pairs),
        "detections": [p.other_count for p in pairs],
        "min_box_iou": min(p.min_box_iou for p in pairs),
        "min_mask_iou": min(p.min_mask_iou for p in pairs),
        "max_score_diff": max(p.max_score_diff for p in pairs),
        "mask_pixels_differ": sum(p.mask_pixels_differ for p in pairs),
        "mask_pixels": sum(p.mask_pixels for p in pairs),
    }


def open_runtimes(
    eager: nn.Module, runtimes: Sequence[str], graph_dir: Path, images: Sequence[Tensor]
) -> tuple[dict[str, RuntimeModel], dict[str, dict[str, Any]]]:
    """Each runtime on one exported graph (written on the first runtime's first image) and its agreement with
    ``eager`` on ``images``."""
    expected = detections_of(eager.eval(), images)
    graph = graph_dir / "runtime_graph.onnx"
    models, agreements = {}, {}
    for runtime in runtimes:
        models[runtime] = RuntimeModel(runtime, graph, eager)  # exports on its first image if no graph exists yet
        agreements[runtime] = agreement_summary(expected, detections_of(models[runtime], images))
    return models, agreements


def time_inference(
    eager: nn.Module,
    stock: nn.Module,
    images: dict[str, Sequence[Tensor]],
    runtimes: Sequence[str],
    graph_dir: Path,
    device: torch.device,
    warmup: int,
    steps: int,
) -> dict[str, Any]:
    """Inference images/s of eager PyTorch (``inference_images_per_s``), stock torchvision and each runtime
    (``<runtime>_inference_images_per_s``, with ``<runtime>_ratio`` to eager), interleaved, plus each runtime's
    agreement with eager (``runtime_agreement``) and eager's detection counts."""
    ours_images = images["ours"]
    models: dict[str, Callable[..., Any]] = {"ours": eager, "stock": stock}
    graph_models, agreements = open_runtimes(eager, runtimes, graph_dir, ours_images) if runtimes else ({}, {})
    models.update(graph_models)
    fns = {name: inference_step_fn(m, images.get(name, ours_images)) for name, m in models.items()}
    seconds = interleaved_medians(fns, warmup, steps, device)
    result: dict[str, Any] = {
        "inference_images_per_s": 1.0 / seconds["ours"],
        "stock_inference_images_per_s": 1.0 / seconds["stock"],
        "inference_detections": [len(d["scores"]) for d in detections_of(eager, ours_images)],
        "inference_threads": torch.get_num_threads(),
    }
    for runtime in runtimes:
        result[RUNTIME_KEYS[runtime]] = 1.0 / seconds[runtime]
        result[f"{runtime}_ratio"] = seconds["ours"] / seconds[runtime]
    if runtimes:
        result["runtime_agreement"] = agreements
    return result


def inference_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """The table rows of ``time_inference``'s keys: images/s and ratio to eager, and how equal the detections are."""
    eager, stock = result["inference_images_per_s"], result["stock_inference_images_per_s"]
    counts = f"{result['inference_threads']} / {result['inference_detections']}"
    rows = [
        ("inference threads / detections per image (eager)", counts),
        ("inference images/s, PyTorch eager (fp32, b1)", f"{eager:.3f} (1.00x)"),
        ("inference images/s, stock torchvision", f"{stock:.3f} ({stock / eager:.2f}x)"),
    ]
    for runtime, key in RUNTIME_KEYS.items():
        if key not in result:
            continue
        rows.append((f"inference images/s, {runtime}", f"{result[key]:.3f} ({result[f'{runtime}_ratio']:.2f}x)"))
        rows.append((f"  {runtime} vs eager", agreement_text(result["runtime_agreement"][runtime])))
    return rows


def agreement_text(a: dict[str, Any]) -> str:
    """One line: the verdict, the worst box and mask IoU and score difference, and the mask pixels that differ."""
    if a["equal_detections"]:
        verdict = "equal detections"
    elif a["equal_boxes_scores_labels"]:
        verdict = "equal boxes/labels, MASKS DIFFER"
    else:
        verdict = "DETECTIONS DIFFER"
    ious = f"box IoU >= {a['min_box_iou']:.5f}, mask IoU >= {a['min_mask_iou']:.4f}"
    pixels = f"{a['mask_pixels_differ']} of {a['mask_pixels']} mask pixels differ"
    return f"{verdict}: {ious}, score diff <= {a['max_score_diff']:.1e}, {pixels}"
