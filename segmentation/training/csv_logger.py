"""A CSV logger whose ``metrics.csv`` survives ``--ckpt_path last``.

Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts, so a resumed run kept only the rows
logged after the resume. :class:`ResumableCSVLogger` keeps the earlier rows instead; once the trainer knows the
step it resumes from, ``MetricsJsonWriter`` calls :meth:`ResumableCSVLogger.drop_rows_after`, which drops the rows
logged after that step by the interrupted run (they are logged again), exactly as it trims ``metrics.json``.
"""

from __future__ import annotations

import csv
import os
from typing import Any

from lightning_fabric.loggers.csv_logs import _ExperimentWriter
from lightning_fabric.loggers.logger import rank_zero_experiment
from lightning_fabric.utilities.rank_zero import rank_zero_only
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter


class ResumedExperimentWriter(ExperimentWriter):
    """Lightning's writer, but continuing the existing ``metrics.csv`` (and its columns) rather than deleting it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = sorted(csv.DictReader(file).fieldnames or [])


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` that continues ``metrics.csv`` when ``resume`` is set (a fresh run still starts a new file)."""

    def __init__(self, *args: Any, resume: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume = resume

    @property
    @rank_zero_experiment
    def experiment(self) -> _ExperimentWriter:
        """The writer, created on first use; when resuming, one that keeps the rows already written."""
        if self._experiment is None and self.resume:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ResumedExperimentWriter(log_dir=self.log_dir)
        return super().experiment

    @rank_zero_only
    def drop_rows_after(self, global_step: int) -> None:
        """Keep the rows written up to ``global_step`` (the resumed checkpoint's); later ones are logged again.

        A training row's ``step`` is the 0-based iteration just finished (written after step + 1), an evaluation
        row's the global step it ran at, the rule ``metrics.json`` is trimmed by.
        """
        path = os.path.join(self.log_dir, ExperimentWriter.NAME_METRICS_FILE)
        if not self.resume or not self._fs.isfile(path):
            return
        with self._fs.open(path, "r", newline="") as file:
            reader = csv.DictReader(file)
            rows, fieldnames = list(reader), reader.fieldnames or []
        kept = [row for row in rows if _written_at_step(row) <= global_step]
        with self._fs.open(path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(kept)


def _written_at_step(row: dict[str, str]) -> int:
    """The global step after which a CSV row was written (training rows carry ``lr``; see ``metrics_json``)."""
    return int(float(row["step"])) + (1 if row.get("lr") else 0)
