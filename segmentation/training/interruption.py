"""Stop without losing work: a pre-empted node (SIGTERM), Ctrl-C or a GPU out of memory leaves a resumable run.

Lightning already turns SIGTERM into an exception raised between two steps; the first Ctrl-C is made to do the
same (a second one interrupts at once). At that point every state — weights, optimizer, schedule, grad scaler,
sampler position, RNG — belongs to the same finished step, so ``checkpoints/last.ckpt`` written then resumes the
run exactly with ``--ckpt_path last``. An out-of-memory error happens inside a step, before the optimizer has
changed anything, so the last finished step is saved as well and the error names the settings to lower.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from pytorch_lightning.utilities.exceptions import SIGTERMException


class SaveOnInterrupt(pl.Callback):
    """Write ``<dirpath>/last.ckpt`` when training stops on SIGTERM, SIGINT or CUDA out-of-memory.

    Args:
        dirpath: the run's checkpoint folder (the same as the periodic ``last.ckpt``).
    """

    def __init__(self, dirpath: str = "checkpoints") -> None:
        self.dirpath = dirpath
        self._previous_sigint: Any = None

    @property
    def path(self) -> Path:
        return Path(self.dirpath) / "last.ckpt"

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._previous_sigint = signal.getsignal(signal.SIGINT)

        def finish_step_then_stop(signum: int, frame: Any) -> None:
            rank_zero_info("\nInterrupted: finishing this step and saving a checkpoint (Ctrl-C again to abort).")
            signal.signal(signal.SIGINT, signal.default_int_handler)
            trainer._signal_connector.received_sigterm = True  # Lightning's own stop-between-steps flag

        signal.signal(signal.SIGINT, finish_step_then_stop)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_sigint()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_sigint()
        if isinstance(exception, torch.OutOfMemoryError):
            pl_module.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
        if isinstance(exception, (SIGTERMException, torch.OutOfMemoryError)):
            trainer.save_checkpoint(self.path, weights_only=False)

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None


def interruption_message(exception: BaseException, step: int, checkpoint: Path) -> str:
    """What the user reads instead of a traceback when training stopped on a signal or out of memory."""
    if isinstance(exception, torch.OutOfMemoryError):
        return (
            f"GPU out of memory at step {step}. Lower --data.batch_size, the image size (--data.min_size_train, "
            "--data.max_size_train) or --model.arch.roi_batch_size_per_image, or use --trainer.precision bf16-mixed. "
            f"The run was saved at its last finished step: resume with --ckpt_path last ({checkpoint})."
        )
    return f"Training stopped after step {step}; resume with --ckpt_path last ({checkpoint})."
