"""An out-of-memory error inside a step leaves the last finished step on disk and a message naming what to lower."""

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from segmentation.training.interruption import SaveOnInterrupt, interruption_message


class _RunsOutOfMemory(pl.LightningModule):
    def __init__(self, fail_at: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.fail_at = fail_at

    def training_step(self, batch, batch_idx):
        if self.global_step == self.fail_at:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return (self.weight - 1) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(range(100), batch_size=1)


def test_out_of_memory_saves_the_last_finished_step(tmp_path):
    trainer = pl.Trainer(
        default_root_dir=tmp_path, max_steps=10, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[SaveOnInterrupt(str(tmp_path / "checkpoints"))],
    )  # fmt: skip
    with pytest.raises(torch.OutOfMemoryError):
        trainer.fit(_RunsOutOfMemory(fail_at=3))
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 3
    weight_after_three_steps = 1 - 0.8**3  # SGD on (w - 1)^2 from 0 with lr 0.1
    assert checkpoint["state_dict"]["weight"].item() == pytest.approx(weight_after_three_steps)


def test_out_of_memory_message_names_the_settings_to_lower_and_how_to_resume(tmp_path):
    message = interruption_message(torch.OutOfMemoryError("oom"), 3, tmp_path / "last.ckpt")
    for setting in ("--data.batch_size", "--data.min_size_train", "roi_batch_size_per_image", "--ckpt_path last"):
        assert setting in message
