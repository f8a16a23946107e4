"""``metrics.csv`` across ``--ckpt_path`` resumes: earlier rows kept, rows logged after the checkpoint dropped."""

import csv
from pathlib import Path

from segmentation.training.csv_logger import ResumableCSVLogger

HEADER = ["bbox/AP", "lr", "step", "total_loss"]
ROWS = [  # training rows (with lr) at 0-based iterations 0..3, an evaluation after step 2
    {"step": "0", "lr": "0.1", "total_loss": "2.0", "bbox/AP": ""},
    {"step": "1", "lr": "0.1", "total_loss": "1.5", "bbox/AP": ""},
    {"step": "2", "lr": "", "total_loss": "", "bbox/AP": "10.0"},
    {"step": "2", "lr": "0.1", "total_loss": "1.2", "bbox/AP": ""},
    {"step": "3", "lr": "0.1", "total_loss": "1.1", "bbox/AP": ""},
]


def write_metrics(directory: Path) -> Path:
    path = directory / "metrics.csv"
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=HEADER)
        writer.writeheader()
        writer.writerows(ROWS)
    return path


def read_metrics(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def test_resuming_at_step_2_keeps_the_two_iterations_and_the_evaluation_before_it(tmp_path):
    """A checkpoint at global step 2 holds iterations 0 and 1 and the evaluation run after them; the rest is redone."""
    path = write_metrics(tmp_path)
    logger = ResumableCSVLogger(tmp_path, name="", version="", resume=True)
    assert logger.experiment is not None  # the writer opens the existing file: Lightning's would delete it here
    logger.drop_rows_after(2)
    assert read_metrics(path) == ROWS[:3]
    logger.log_metrics({"total_loss": 1.3, "lr": 0.1}, step=2)
    logger.save()
    assert [row["step"] for row in read_metrics(path)] == ["0", "1", "2", "2"]


def test_a_fresh_run_in_the_same_directory_starts_a_new_file(tmp_path):
    """Without a resume, old rows belong to another run: Lightning's behaviour (start over) is kept."""
    path = write_metrics(tmp_path)
    logger = ResumableCSVLogger(tmp_path, name="", version="")
    logger.log_metrics({"total_loss": 3.0}, step=0)
    logger.save()
    assert [row["step"] for row in read_metrics(path)] == ["0"]
