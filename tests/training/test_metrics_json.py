"""metrics.json is written in detectron2's JSONWriter format, so users' plotting scripts keep working."""

import json

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from segmentation.training.metrics_json import MetricsJsonWriter
from segmentation.training.schedule import Schedule, lr_multiplier

WARMUP_30 = Schedule(warmup_iters=30)


class _Recorder(pl.LightningModule):
    """Trains one weight; reports the step index as a loss so window medians are predictable."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.last_evaluation = {}

    def training_step(self, batch, batch_idx):
        step = torch.tensor(float(self.global_step))
        loss = (self.weight - 1) ** 2
        return {"loss": loss, "scalars": {"loss_cls": step, "rpn/num_pos_anchors": 2 * step, "total_loss": loss}}

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self):
        self.last_evaluation = {"bbox/AP": 50.0, "segm/AP": float("nan")}

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=1e-4)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(WARMUP_30, base_lr=1e-4, max_iter=50))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def train_dataloader(self):
        return DataLoader(range(1000), batch_size=1)

    def val_dataloader(self):
        return DataLoader(range(1), batch_size=1)


@pytest.fixture(scope="module")
def lines(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    _trainer(out, max_steps=50).fit(_Recorder())
    return [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]


def test_training_lines_every_20_iterations_and_after_the_last(lines):
    assert [line["iteration"] for line in lines] == [19, 39, 49, 50]


def test_lines_are_json_objects_with_sorted_keys(lines):
    for line in lines:
        assert list(line) == sorted(line)


def test_training_line_has_detectron2_keys(lines):
    assert set(lines[0]) == {
        "iteration",
        "loss_cls",
        "rpn/num_pos_anchors",
        "total_loss",
        "lr",
        "time",
        "data_time",
        "rank_data_time",
        "eta_seconds",
    }


def test_smoothed_values_are_medians_of_the_last_20_iterations(lines):
    assert lines[0]["loss_cls"] == np.median(np.arange(0, 20))
    assert lines[1]["loss_cls"] == np.median(np.arange(20, 40))
    assert lines[1]["rpn/num_pos_anchors"] == 2 * np.median(np.arange(20, 40))


def test_lr_is_the_rate_used_by_that_iteration(lines):
    assert lines[0]["lr"] == pytest.approx(1e-4 * lr_multiplier(WARMUP_30, base_lr=1e-4, max_iter=50)(19))
    assert lines[2]["lr"] == pytest.approx(1e-4)


def test_eta_reaches_zero_at_the_last_iteration(lines):
    assert lines[0]["eta_seconds"] > 0
    assert lines[2]["eta_seconds"] == 0


def test_evaluation_line_at_max_iter_with_nan_literal(lines):
    assert lines[3]["bbox/AP"] == 50.0
    assert np.isnan(lines[3]["segm/AP"])


def _trainer(out, max_steps):
    return pl.Trainer(
        default_root_dir=out,
        max_steps=max_steps,
        val_check_interval=50,
        num_sanity_val_steps=0,
        logger=pl.loggers.CSVLogger(out, name="", version=""),
        callbacks=[MetricsJsonWriter()],
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )


def test_resumed_run_continues_the_file_without_duplicates(tmp_path):
    first = _trainer(tmp_path, max_steps=40)
    first.fit(_Recorder())
    first.save_checkpoint(tmp_path / "step40.ckpt")
    with (tmp_path / "metrics.json").open("a") as f:  # a crashed run had written beyond the checkpoint
        f.write(json.dumps({"iteration": 45}) + "\n")
    _trainer(tmp_path, max_steps=50).fit(_Recorder(), ckpt_path=tmp_path / "step40.ckpt")
    lines = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [19, 39, 49, 50]
