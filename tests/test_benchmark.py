"""scripts/benchmark.py end to end on a tiny config: 2 steps on CPU, DDP and the graph runtimes included, and the json
line it ends with."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import yaml
from tiny_model import tiny_arch

REPO = Path(__file__).resolve().parents[1]

TINY_ARCH = tiny_arch()
REQUIRED_KEYS = {
    "train_images_per_s",
    "stock_train_images_per_s",
    "ratio",
    "loader_images_per_s",
    "loader_images_per_s_per_worker",
    "loader_multiscale_flip_images_per_s",
    "loader_multiscale_flip_ratio",
    "inference_images_per_s",
    "peak_memory_mb",
    "peak_host_rss_mb",
    "device",
    "ddp_train_images_per_s",
    "onnxruntime_inference_images_per_s",
    "openvino_inference_images_per_s",
}


@pytest.fixture(scope="module")
def bench():
    """``scripts/benchmark.py`` imported by name, with ``scripts`` on the path the spawned DDP processes inherit."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO / "scripts"))
        yield importlib.import_module("benchmark")


def test_tiny_config_prints_the_json_line_last(bench, tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": {"arch": TINY_ARCH}, "data": {"batch_size": 2, "num_workers": 1}}))
    argv = ["--config", str(config), "--device", "cpu", "--image-size", "64", "--steps", "2", "--warmup", "0"]
    bench.main(argv + ["--loader-batches", "2", "--ddp-processes", "2"])

    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert REQUIRED_KEYS <= result.keys()
    assert result["device"] == "cpu" and result["peak_memory_mb"] == 0.0
    assert result["batch_size"] == 2 and result["image_size"] == [64, 64]
    assert result["stock_backbone"] == "resnet18" and not result["stock_matches_architecture"]
    for key in ("train_images_per_s", "stock_train_images_per_s", "loader_images_per_s", "inference_images_per_s"):
        assert result[key] > 0
    assert result["ratio"] == pytest.approx(result["train_images_per_s"] / result["stock_train_images_per_s"])
    for runtime in ("onnxruntime", "openvino"):
        ratio = result[f"{runtime}_inference_images_per_s"] / result["inference_images_per_s"]
        assert result[f"{runtime}_ratio"] == pytest.approx(ratio)
        assert result["runtime_agreement"][runtime]["equal_detections"]
        assert result["runtime_agreement"][runtime]["detections"] == result["inference_detections"]
        assert any(line.startswith(f"inference images/s, {runtime} ") for line in out)
    assert sum(result["inference_detections"]) > 0  # equal detections of something, not of nothing


def test_config_comes_from_the_cli_parser_with_overrides(bench, tmp_path):
    """The script reads a config as segmentation.fit does: overrides after the script's flags reach the model."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": {"arch": TINY_ARCH}}))
    args = bench.parse_args(["--config", str(config), "--image-size", "96", "--model.arch.fpn_out_channels", "8"])
    cfg = bench.read_config(args.config, bench.config_overrides(args))
    assert cfg.arch.fpn_out_channels == 8 and cfg.arch.depth == 18
    assert (cfg.min_size, cfg.max_size, cfg.data["min_size_test"]) == (96, 96, 96)


def test_the_recipe_is_compared_with_an_identical_stock_architecture(bench):
    cfg = bench.read_config(REPO / "configs" / "mask_rcnn_X_101_32x8d_FPN_3x.yaml")
    assert (cfg.min_size, cfg.max_size, cfg.batch_size, cfg.num_workers) == (512, 512, 4, 2)
    assert bench.stock_backbone_name(cfg.arch) == "resnext101_32x8d"
    assert bench.stock_matches(cfg.arch)
    quickstart = bench.read_config(REPO / "configs" / "quickstart.yaml")
    assert not bench.stock_matches(quickstart.arch)
