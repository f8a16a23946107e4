"""Training, data-loading and inference speed of our Mask R-CNN next to torchvision's stock Mask R-CNN.

Why: the project promises detectron2's numbers *and* its speed. This script gives the evidence on any machine: for
one of our configs it times a full training step (forward + backward + Adam, optional AMP) of our model and of
torchvision's stock ``MaskRCNN`` (same backbone family, same image size, same sampling sizes, same batches) in the
same process, the training data pipeline (decode + resize + mask decode in the workers of ``CocoDataModule``), fp32
batch-1 inference (PyTorch eager, stock torchvision and, on CPU, the exported graph on onnxruntime and OpenVINO,
see ``benchmark_inference``), peak GPU memory and peak host RSS. Inputs are phantom slices
(``segmentation.data.phantom``) mapped by our mapper, so every variant sees the same realistic batches. Weights are
random (detectron2's initialisation for ours, torchvision's for stock; ``model.weights`` is never loaded): speed does
not depend on them, and no download is needed.
``--ddp-processes N`` also times our training step under ``DistributedDataParallel`` with N spawned gloo processes
on CPU, the code path of ``--trainer.strategy ddp``.

The model and data settings come from ``SegmentationCLI``, the parser of ``segmentation.fit``: our yaml or a
detectron2 one, and any ``--model.*``/``--data.*``/``--trainer.*`` override after the script's own flags.

Prints a table and, as its last line, one json object.

    python scripts/benchmark.py --config configs/mask_rcnn_X_101_32x8d_FPN_3x.yaml --device cuda \
        --precision 32 16-mixed bf16-mixed --batch-size 4 --steps 20 --warmup 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from benchmark_inference import RUNTIME_KEYS, inference_rows, time_inference
from benchmark_loader import loader_keys, loader_rows
from benchmark_stock import build_stock, stock_backbone_name, stock_matches, to_stock_input
from benchmark_training import build_seeded, time_ddp, training_keys, training_rows
from torch import Tensor

from segmentation import api
from segmentation.data.datamodule import CocoDataModule
from segmentation.data.phantom import make_phantom
from segmentation.data.samplers import StreamItem
from segmentation.model.config import MaskRCNNConfig
from segmentation.model.mask_rcnn import build_mask_rcnn

PRECISIONS = ("32", "32-true", "16-mixed", "bf16-mixed")
Batch = tuple[list[Tensor], list[dict[str, Any]]]


@dataclass
class BenchmarkConfig:
    """What the parsed config says about the model and its data, as the benchmark needs it.

    Attributes:
        arch: the model's architecture (``model.arch``).
        data: the ``--data.*`` options, the arguments ``CocoDataModule`` is built with.
        cudnn_benchmark: ``trainer.benchmark``.
    """

    arch: MaskRCNNConfig
    data: dict[str, Any]
    cudnn_benchmark: bool

    @property
    def min_size(self) -> int:
        sizes = self.data["min_size_train"]
        return max(sizes) if isinstance(sizes, list) else sizes

    @property
    def max_size(self) -> int:
        return self.data["max_size_train"]

    @property
    def batch_size(self) -> int:
        return self.data["batch_size"]

    @property
    def num_workers(self) -> int:
        return self.data["num_workers"]


def read_config(path: str | Path, overrides: Sequence[str] = ()) -> BenchmarkConfig:
    """Parse ``path`` (our config or a detectron2 yaml) and CLI-style ``overrides`` with ``SegmentationCLI``."""
    parsed = api.read_config(path, overrides)
    return BenchmarkConfig(parsed.arch, parsed.data, bool(parsed.trainer.get("benchmark") or False))


def make_phantom_datamodule(out_dir: Path, cfg: BenchmarkConfig) -> CocoDataModule:
    """The config's ``CocoDataModule`` (set up for ``fit``) on a phantom training split of square slices at the
    config's training size, in place of the config's own splits."""
    paths = make_phantom(out_dir, n_train=2, n_val=0, n_test=0, slices_per_volume=12, size=cfg.max_size)
    splits = {f"{split}_{kind}": None for split in ("val", "test") for kind in ("json", "images")}
    train = {"train_json": str(paths["train_json"]), "train_images": str(paths["train_images"])}
    datamodule = CocoDataModule(**{**cfg.data, **splits, **train})
    datamodule.setup("fit")
    return datamodule


def training_batches(datamodule: CocoDataModule, batch_size: int, count: int) -> list[Batch]:
    """``count`` batches of mapped phantom slices that have a lung (so every head does its full work)."""
    loader = datamodule.train_dataloader()
    dataset = loader.dataset
    samples = [dataset[StreamItem(i, i)] for i in range(len(dataset))]
    samples = [s for s in samples if len(s[1]["boxes"])]
    batches = []
    for b in range(count):
        chosen = [samples[(b * batch_size + k) % len(samples)] for k in range(batch_size)]
        batches.append(([s[0] for s in chosen], [s[1] for s in chosen]))
    return batches


def to_device(batch: Batch, device: torch.device) -> Batch:
    images, targets = batch
    moved = [{k: v.to(device) if isinstance(v, Tensor) else v for k, v in t.items()} for t in targets]
    return [image.to(device) for image in images], moved


def peak_host_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores ({platform.machine()}), {torch.get_num_threads()} torch threads, no GPU"


MEASUREMENTS = ("train", "loader", "inference")


def config_overrides(args: argparse.Namespace) -> list[str]:
    """The script's own size/batch/worker flags as ``SegmentationCLI`` options, then the user's overrides."""
    overrides = []
    if args.image_size:
        sides = ("min_size_train", "max_size_train", "min_size_test", "max_size_test")
        overrides += [f"--data.{side}={args.image_size}" for side in sides]
    if args.batch_size:
        overrides.append(f"--data.batch_size={args.batch_size}")
    if args.workers is not None:
        overrides.append(f"--data.num_workers={args.workers}")
    return overrides + list(args.overrides)


def describe(args: argparse.Namespace, cfg: BenchmarkConfig, device: torch.device) -> dict[str, Any]:
    """The keys that say what was measured, where."""
    result: dict[str, Any] = {
        "config": str(args.config),
        "overrides": list(args.overrides),
        "device": device.type,
        "machine": machine_description(device),
        "batch_size": cfg.batch_size,
        "image_size": [cfg.min_size, cfg.max_size],
        "workers": cfg.num_workers,
        "stock_backbone": stock_backbone_name(cfg.arch),
        "stock_matches_architecture": stock_matches(cfg.arch),
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        result["card"] = torch.cuda.get_device_name(device)
        result["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure everything ``args`` asks for and return the result dict (the json line)."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no GPU")
    if args.ddp_processes > 1 and device.type != "cpu":
        raise SystemExit("--ddp-processes times gloo processes on CPU; use --device cpu")
    runtimes = list(RUNTIME_KEYS) if args.runtimes is None else args.runtimes
    if runtimes and device.type != "cpu":
        raise SystemExit("--runtimes run on the CPU; use --device cpu (or --runtimes with no name)")
    cfg = read_config(args.config, config_overrides(args))
    torch.backends.cudnn.benchmark = cfg.cudnn_benchmark if args.cudnn_benchmark is None else args.cudnn_benchmark
    result = describe(args, cfg, device)
    builds = {
        "ours": lambda: build_mask_rcnn(cfg.arch),
        "stock": lambda: build_stock(cfg.arch, cfg.min_size, cfg.max_size),
    }
    with tempfile.TemporaryDirectory() as tmp:
        datamodule = make_phantom_datamodule(Path(tmp), cfg)
        batches = training_batches(datamodule, cfg.batch_size, count=4)
        if "loader" in args.measure:
            result.update(loader_keys(datamodule, args.loader_batches))
        device_batches = {
            "ours": [to_device(b, device) for b in batches],
            "stock": [to_device(to_stock_input(b), device) for b in batches],
        }
        if "train" in args.measure:
            result.update(training_keys(builds, device_batches, args, device))
        if "inference" in args.measure:
            single_images = {name: [b[0][0] for b in device_batches[name]] for name in builds}
            ours, stock = (build_seeded(builds[name], device) for name in ("ours", "stock"))
            result.update(
                time_inference(ours, stock, single_images, runtimes, Path(tmp), device, args.warmup, args.steps)
            )
    if args.ddp_processes > 1:
        ddp = time_ddp(cfg.arch, batches, args.ddp_processes, args.warmup, args.steps)
        result["ddp_processes"] = args.ddp_processes
        result["ddp_train_images_per_s"] = ddp["images_per_s"]
    result["peak_host_rss_mb"] = peak_host_rss_mb()
    return result


def format_table(result: dict[str, Any]) -> str:
    """The human-readable summary printed above the json line."""
    rows = [("machine", result["machine"]), ("config", " ".join([result["config"], *result["overrides"]]))]
    sizes = f"{result['batch_size']} / {result['image_size']} / {result['workers']}"
    rows.append(("batch / image size / workers", sizes))
    stock = result["stock_backbone"] + ("" if result["stock_matches_architecture"] else " (closest; not our shapes)")
    rows.append(("stock torchvision backbone", stock))
    if "by_precision" in result:
        rows += training_rows(result)
    if "loader_images_per_s" in result:
        rows += loader_rows(result)
    if "inference_images_per_s" in result:
        rows += inference_rows(result)
    if "ddp_train_images_per_s" in result:
        ddp = f"DDP train images/s ({result['ddp_processes']} gloo procs)"
        rows.append((ddp, f"{result['ddp_train_images_per_s']:.3f}"))
    rows.append(("peak host RSS MB", f"{result['peak_host_rss_mb']:.0f}"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The script's flags; every other argument (``--model.*``, ``--data.*``, ...) goes to ``SegmentationCLI``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--config", required=True, help="our yaml config or a detectron2 one (as segmentation.fit)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["32"], help="one or more; first in json")
    parser.add_argument("--batch-size", type=int, default=None, help="images per step (default: data.batch_size)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each measurement")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: data.num_workers)")
    parser.add_argument(
        "--loader-batches",
        type=int,
        default=200,
        help="batches timed per loader round (fewer are noisy: 40 gave 0.87-1.05x)",
    )
    parser.add_argument("--image-size", type=int, default=None, help="phantom side and resize target (default: config)")
    parser.add_argument("--ddp-processes", type=int, default=1, help="also time DDP with N gloo CPU processes")
    parser.add_argument("--measure", nargs="+", choices=MEASUREMENTS, default=list(MEASUREMENTS), help="what to time")
    parser.add_argument(
        "--runtimes",
        nargs="*",
        choices=list(RUNTIME_KEYS),
        default=None,
        help="graph runtimes timed next to eager PyTorch (default on CPU: all; none on CUDA)",
    )
    parser.add_argument(
        "--cudnn-benchmark",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.backends.cudnn.benchmark (default: the config's trainer.benchmark)",
    )
    args, overrides = parser.parse_known_args(argv)
    args.overrides = overrides
    if args.runtimes is None and args.device != "cpu":
        args.runtimes = []
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    result = run(parse_args(argv))
    print(format_table(result))
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
