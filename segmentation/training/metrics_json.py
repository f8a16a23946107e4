"""detectron2's ``metrics.json``: the training curves in the format users' plotting scripts already read.

One json object per line with sorted keys: every ``period`` iterations (and after the last) the median over the
last ``window`` iterations of each loss and diagnostic, the raw ``lr`` and ``eta_seconds``, ``time`` and
``data_time``; after each evaluation a line with ``bbox/AP`` ... ``segm/APl`` at ``iteration = global step``.
The same values go to the Trainer's loggers (CSV, TensorBoard). Loss tensors stay on the device between writes:
there is one host transfer per ``period`` iterations, not one per loss per step.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from segmentation.training.csv_logger import ResumableCSVLogger


class MetricsJsonWriter(pl.Callback):
    """Write ``<log_dir>/metrics.json`` as detectron2's JSONWriter + PeriodicWriter do.

    Args:
        filename: file name inside ``dirpath``.
        dirpath: the run directory (fit links ``--output_dir``; None: ``trainer.log_dir``), whatever the loggers.
        period: write every ``period`` iterations (detectron2's PeriodicWriter period, 20).
        window: median window of smoothed values (detectron2's default, 20).
    """

    def __init__(
        self, filename: str = "metrics.json", period: int = 20, window: int = 20, dirpath: str | None = None
    ) -> None:
        self.filename = filename
        self.dirpath = dirpath
        self.period = period
        self.window = window
        self._scalars: dict[str, deque[torch.Tensor]] = defaultdict(lambda: deque(maxlen=window))
        self._times: deque[float] = deque(maxlen=1000)
        self._data_times: deque[float] = deque(maxlen=window)
        self._last_end: float | None = None
        self._lr = 0.0
        self._step_at_batch_start = 0
        self.path = Path(filename)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # trainer.log_dir is a collective call under DDP: resolve it here, where every rank runs.
        self.path = Path(self.dirpath or trainer.log_dir or trainer.default_root_dir) / self.filename

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Drop lines written after the starting step, so a resumed run continues the file without duplicates."""
        path = self.path
        if trainer.is_global_zero and path.exists():
            lines = [json.loads(line) for line in path.read_text().splitlines() if line]
            kept = [line for line in lines if written_at_step(line) <= trainer.global_step]
            path.write_text("".join(json.dumps(line, sort_keys=True) + "\n" for line in kept))
        for logger in trainer.loggers:  # the CSV log of a resumed run, trimmed by the same rule
            if isinstance(logger, ResumableCSVLogger):
                logger.drop_rows_after(trainer.global_step)
        self._last_end = time.perf_counter()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._last_end is not None:
            self._data_times.append(time.perf_counter() - self._last_end)
        self._step_at_batch_start = trainer.global_step
        # The scheduler steps before on_train_batch_end, so read the rate this step uses now.
        self._lr = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if self._last_end is not None:
            self._times.append(now - self._last_end)
        self._last_end = now
        for name, value in outputs["scalars"].items():
            self._scalars[name].append(value.detach())
        if trainer.global_step == self._step_at_batch_start:  # accumulating gradients: no iteration finished
            return
        iteration = trainer.global_step - 1
        if (iteration + 1) % self.period == 0 or iteration + 1 >= trainer.max_steps:
            self._write_training_line(trainer, iteration)

    def _write_training_line(self, trainer: pl.Trainer, iteration: int) -> None:
        names = sorted(self._scalars)
        # One host transfer for all windows; rows are padded with NaN where a window is still short.
        rows = torch.full((len(names), self.window), float("nan"), dtype=torch.float64)
        for i, name in enumerate(names):
            window = self._scalars[name]
            values = torch.stack([v.to(device=window[-1].device, dtype=torch.float64) for v in window]).cpu()
            rows[i, : len(values)] = values
        medians = np.nanmedian(rows.numpy(), axis=1)
        line: dict[str, float] = {name: float(m) for name, m in zip(names, medians, strict=True)}
        data_time = float(np.median(self._data_times)) if self._data_times else 0.0
        line["rank_data_time"] = data_time
        line["data_time"] = float(trainer.strategy.all_gather(torch.tensor(data_time)).max())
        if self._times:
            line["time"] = float(np.median(list(self._times)[-self.window :]))
            line["eta_seconds"] = float(np.median(self._times)) * max(trainer.max_steps - iteration - 1, 0)
        line["lr"] = self._lr
        if str(trainer.precision) in ("16-mixed", "16"):
            line["grad_scaler/skipped_steps"] = skipped_optimizer_steps(trainer)
        self._emit(trainer, iteration, line)

    def state_dict(self) -> dict[str, Any]:
        """The median windows, saved in checkpoints so that the lines after a resume equal an uninterrupted run's."""
        return {
            "scalars": {name: [float(v) for v in values] for name, values in self._scalars.items()},
            "times": list(self._times),
            "data_times": list(self._data_times),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for name, values in state_dict["scalars"].items():
            self._scalars[name].extend(torch.tensor(v, dtype=torch.float64) for v in values)
        self._times.extend(state_dict["times"])
        self._data_times.extend(state_dict["data_times"])

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Append the evaluation line (``bbox/AP`` ...) at the current global step, as detectron2's EvalHook does."""
        self._emit(trainer, trainer.global_step, pl_module.last_evaluation)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._emit(trainer, trainer.global_step, pl_module.last_evaluation)

    def _emit(self, trainer: pl.Trainer, iteration: int, values: dict[str, float]) -> None:
        if not trainer.is_global_zero:
            return
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps({"iteration": iteration, **values}, sort_keys=True) + "\n")
        for logger in trainer.loggers:
            logger.log_metrics(values, step=iteration)


def written_at_step(line: dict[str, Any]) -> int:
    """The global step after which a line was written: training lines name the 0-based iteration just finished."""
    return line["iteration"] + 1 if "lr" in line else line["iteration"]


def skipped_optimizer_steps(trainer: pl.Trainer) -> int:
    """Steps the fp16 grad scaler skipped: Adam counts only the updates it made (a CPU tensor, no device sync)."""
    optimizer = trainer.optimizers[0]
    state = next(
        (optimizer.state[p] for group in optimizer.param_groups for p in group["params"] if p in optimizer.state), None
    )
    return trainer.global_step - int(state["step"]) if state is not None else 0
