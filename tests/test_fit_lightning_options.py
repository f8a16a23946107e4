"""Lightning options users pass to fit keep detectron2's run semantics: iterations, one run directory."""

import json

import pytest

from segmentation.data.phantom import make_phantom
from segmentation.fit import main


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return make_phantom(tmp_path_factory.mktemp("phantom"), n_train=1, n_val=1, n_test=1, slices_per_volume=4, size=128)


def small_run(phantom, output_dir, *extra):
    data = [f"--data.{key}={path}" for key, path in phantom.items()]
    sizes = [f"--data.{k}=128" for k in ("min_size_train", "max_size_train", "min_size_test", "max_size_test")]
    options = ["--data.num_workers=0", "--trainer.enable_progress_bar=false", "--metrics_json.period=1"]
    return ["--config", "configs/quickstart.yaml", "--output_dir", str(output_dir), *data, *sizes, *options, *extra]


def metrics_lines(output_dir):
    return [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]


def test_accumulating_gradients_counts_iterations_and_evaluates_only_after_the_last(phantom, tmp_path):
    main(small_run(phantom, tmp_path, "--trainer.max_steps=2", "--trainer.accumulate_grad_batches=2"))
    lines = metrics_lines(tmp_path)
    assert [line["iteration"] for line in lines if "total_loss" in line] == [0, 1]
    assert [line["iteration"] for line in lines if "bbox/AP" in line] == [2]  # one val, after the last step
    assert [line["iteration"] for line in lines if "test/bbox/AP" in line] == [2]


def test_a_custom_logger_leaves_config_and_metrics_in_the_run_directory(phantom, tmp_path):
    elsewhere = tmp_path / "logger_store"
    run = tmp_path / "run"
    main(small_run(phantom, run, "--trainer.max_steps=1", "--trainer.logger=pytorch_lightning.loggers.CSVLogger",
                   f"--trainer.logger.save_dir={elsewhere}"))  # fmt: skip
    assert (run / "config.yaml").is_file() and (run / "metrics.json").is_file()
    assert not list(elsewhere.rglob("config.yaml")) and not list(elsewhere.rglob("metrics.json"))
    assert list(elsewhere.rglob("metrics.csv"))  # the logger still logs where it was told
