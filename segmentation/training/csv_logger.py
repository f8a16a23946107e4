"""A CSV logger whose ``metrics.csv`` survives ``--ckpt_path last``.

Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts, so a resumed run kept only the rows
logged after the resume. :class:`ResumableCSVLogger` keeps the earlier rows instead, dropping only those at or
after the first step the resumed run logs again (steps logged after the checkpoint, before a crash, are redone).
"""

from __future__ import annotations

import csv
from typing import Any

from lightning_fabric.loggers.csv_logs import _ExperimentWriter
from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter


class ResumedExperimentWriter(ExperimentWriter):
    """Lightning's writer, but starting from the rows already in ``metrics.csv`` rather than deleting them."""

    def __init__(self, log_dir: str) -> None:
        self._kept: list[dict[str, Any]] | None = None
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        """Read the existing rows (Lightning's version deletes the file here); they are written back on save."""
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                reader = csv.DictReader(file)
                self._kept = list(reader)
                self.metrics_keys = sorted(reader.fieldnames or [])

    def save(self) -> None:
        """On the first save, rewrite the file with the kept rows older than the first newly logged step."""
        if self._kept is not None and self.metrics:
            first_new = min(int(row["step"]) for row in self.metrics)
            kept = [row for row in self._kept if row.get("step") and int(float(row["step"])) < first_new]
            self._kept = None
            self._rewrite_rows(kept)
        super().save()

    def _rewrite_rows(self, rows: list[dict[str, Any]]) -> None:
        with self._fs.open(self.metrics_file_path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(rows)


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` that appends to ``metrics.csv`` when ``resume`` is set (a fresh run still starts a new file)."""

    def __init__(self, *args: Any, resume: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume = resume

    @property
    @rank_zero_experiment
    def experiment(self) -> _ExperimentWriter:
        """The writer, created on first use; one that keeps the existing rows when resuming."""
        if self._experiment is None and self.resume:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ResumedExperimentWriter(log_dir=self.log_dir)
        return super().experiment
