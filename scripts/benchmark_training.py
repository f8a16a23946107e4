"""Training speed for ``scripts/benchmark.py``: one training step of ours and of stock torchvision, interleaved,
per precision, and our step under ``DistributedDataParallel`` on gloo CPU processes.

Why a module of its own: ``benchmark.py`` composes the measurements; each kind of measurement lives beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from benchmark_inference import interleaved_medians
from torch import Tensor, nn

from segmentation.model.config import MaskRCNNConfig
from segmentation.model.mask_rcnn import build_mask_rcnn

Batch = tuple[list[Tensor], list[dict[str, Any]]]


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a Lightning precision string; ``16-mixed`` on CPU falls back to fp32 (as our CLI)."""
    if precision == "bf16-mixed":
        return torch.bfloat16
    if precision == "16-mixed":
        if device.type == "cpu":
            warnings.warn("16-mixed needs CUDA; timing fp32 on CPU instead", stacklevel=2)
            return None
        return torch.float16
    return None


def median_step_seconds(step: Callable[[int], None], warmup: int, steps: int, device: torch.device) -> float:
    """Run ``step(i)`` ``warmup + steps`` times; the median wall time of the last ``steps`` calls."""
    return interleaved_medians({"step": step}, warmup, steps, device)["step"]


def train_step_fn(
    model: nn.Module, batches: Sequence[Batch], precision: str, device: torch.device
) -> Callable[[int], None]:
    """One training iteration as our ``training_step`` + Lightning's optimizer step do it (loss_* summed)."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-4, weight_decay=1e-4)
    dtype = autocast_dtype(precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def step(i: int) -> None:
        images, targets = batches[i % len(batches)]
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            outputs = model(images, targets)
            loss = sum(v for k, v in outputs.items() if k.startswith("loss_"))
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step


def peak_gpu_mb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0


def reset_gpu_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def build_seeded(build: Callable[[], nn.Module], device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return build().to(device)


def time_training(
    builds: dict[str, Callable[[], nn.Module]],
    batches: dict[str, Sequence[Batch]],
    precision: str,
    device: torch.device,
    warmup: int,
    steps: int,
) -> dict[str, dict[str, float]]:
    """Per named model: training images/s (median step, models interleaved) and peak GPU memory.

    On CUDA the peak memory comes from a separate pass per model (2 steps, that model alone on the GPU), so that
    one model's weights and optimizer state do not count in the other's peak.
    """
    models = {name: build_seeded(build, device) for name, build in builds.items()}
    fns = {name: train_step_fn(model, batches[name], precision, device) for name, model in models.items()}
    seconds = interleaved_medians(fns, warmup, steps, device)
    del models, fns
    results = {}
    for name, build in builds.items():
        peak = 0.0
        if device.type == "cuda":
            reset_gpu_peak(device)
            model = build_seeded(build, device)
            median_step_seconds(train_step_fn(model, batches[name], precision, device), 0, 2, device)
            peak = peak_gpu_mb(device)
            del model
        n = len(batches[name][0][0])
        results[name] = {"images_per_s": n / seconds[name], "step_s": seconds[name], "peak_memory_mb": peak}
    return results


def training_keys(builds: dict[str, Callable[[], nn.Module]], batches: dict[str, Sequence[Batch]],
                  args: argparse.Namespace, device: torch.device) -> dict[str, Any]:  # fmt: skip
    """Training images/s of ours and stock per precision; the first precision's figures also at the top level."""
    per_precision: dict[str, dict[str, float]] = {}
    for precision in args.precision:
        r = time_training(builds, batches, precision, device, args.warmup, args.steps)
        per_precision[precision] = {
            "train_images_per_s": r["ours"]["images_per_s"],
            "stock_train_images_per_s": r["stock"]["images_per_s"],
            "ratio": r["ours"]["images_per_s"] / r["stock"]["images_per_s"],
            "peak_memory_mb": r["ours"]["peak_memory_mb"],
            "stock_peak_memory_mb": r["stock"]["peak_memory_mb"],
        }
    return {**per_precision[args.precision[0]], "precision": args.precision[0], "by_precision": per_precision}


def training_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for precision, r in result["by_precision"].items():
        rows.append((f"train images/s, ours [{precision}]", f"{r['train_images_per_s']:.3f}"))
        rows.append((f"train images/s, stock [{precision}]", f"{r['stock_train_images_per_s']:.3f}"))
        rows.append((f"ratio ours/stock [{precision}]", f"{r['ratio']:.3f}"))
        if result["device"] == "cuda":
            peaks = f"{r['peak_memory_mb']:.0f} / {r['stock_peak_memory_mb']:.0f}"
            rows.append((f"peak GPU MB ours / stock [{precision}]", peaks))
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(
    rank: int, world: int, port: int, arch: MaskRCNNConfig, batches: list[Batch], warmup: int, steps: int, out: str
) -> None:
    """One gloo rank: our model under DistributedDataParallel, its own stride of the batches, timed on rank 0."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = nn.parallel.DistributedDataParallel(build_mask_rcnn(arch))
        step = train_step_fn(model, batches[rank::world], "32", torch.device("cpu"))
        seconds = median_step_seconds(step, warmup, steps, torch.device("cpu"))
        if rank == 0:
            Path(out).write_text(json.dumps({"images_per_s": world * len(batches[0][0]) / seconds, "step_s": seconds}))
    finally:
        dist.destroy_process_group()


def time_ddp(arch: MaskRCNNConfig, batches: list[Batch], processes: int, warmup: int, steps: int) -> dict[str, float]:
    """Our training step on ``processes`` spawned CPU processes (gloo); images/s over all of them."""
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "ddp.json")
        args = (processes, _free_port(), arch, batches, warmup, steps, out)
        mp.spawn(_ddp_worker, args=args, nprocs=processes, join=True)
        return json.loads(Path(out).read_text())
