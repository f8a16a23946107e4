"""``python -m segmentation.check_data``: check a dataset's jsons and images without starting a training run.

Why this exists: the person preparing the data should learn every problem in it in one go, minutes before a run
and without a GPU, rather than from a crash hours into training. The command line is ``segmentation.fit``'s (the
same ``SegmentationCLI``: ``--config``, including a detectron2 ``config.yaml``, ``--data.*``, ``--check_images``),
so a run's command line can be checked first; only the datamodule is built, no network and no trainer. Prints one
report per split and exits 0 when nothing is fatal, 1 otherwise; bad data never produces a traceback.
"""

from __future__ import annotations

import sys

from segmentation.cli import SegmentationCLI
from segmentation.data.check import check_splits
from segmentation.data.datamodule import CocoDataModule
from segmentation.errors import ConfigError, user_errors_exit


class CheckDataCLI(SegmentationCLI):
    """``SegmentationCLI`` that builds the datamodule only: checking data needs neither a network nor a trainer."""

    def instantiate_classes(self) -> None:
        self.datamodule = CocoDataModule(**self.config.data.as_dict())


def main(args: list[str] | None = None) -> int:
    """Parse ``args`` (default ``sys.argv[1:]``), check each split given, print the reports; return the exit code."""
    with user_errors_exit():
        cli = CheckDataCLI(args=args, description=__doc__)
        data = cli.datamodule
        splits = data.splits()
        if not splits:
            raise ConfigError("give at least one split, e.g. --data.train_json J --data.train_images D")
        reports = check_splits(
            splits, allow_outside_root=data.allow_outside_root, check_images=cli.config.check_images, window=data.window
        )
    print("\n\n".join(report.format() for report in reports))
    return 0 if all(report.ok for report in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
