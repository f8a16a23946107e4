"""``python -m segmentation.plot_metrics RUN_DIR``: a run's training curves, and its AP summary, as PNGs.

detectron2 users plot ``metrics.json`` with their own scripts; this gives every run the same two pictures:

* ``RUN_DIR/curves.png``: losses, learning rate and AP against the iteration, from ``RUN_DIR/metrics.json``;
* with ``--gt VAL.json``: ``RUN_DIR/pr_curves.png``, bbox and segm precision-recall curves at IoU 0.5 and 0.75 of
  ``--predictions`` (default ``RUN_DIR/inference/predictions.json``, the file ``segmentation.fit`` writes; give
  ``RUN_DIR/predictions.json`` for a ``segmentation.evaluate`` run).

Plots need matplotlib (the ``plots`` extra).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from segmentation.visualize import plot_precision_recall, plot_training_curves


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m segmentation.plot_metrics", description=__doc__)
    parser.add_argument("run_dir", type=Path, help="a run's --output_dir (holding metrics.json)")
    parser.add_argument("--gt", type=Path, help="ground-truth COCO json of the evaluated split: draws pr_curves.png")
    parser.add_argument("--predictions", type=Path, help="results json (default RUN_DIR/inference/predictions.json)")
    parser.add_argument("--out_dir", type=Path, help="where the PNGs go (default RUN_DIR)")
    options = parser.parse_args(args)
    out_dir = options.out_dir or options.run_dir
    metrics = options.run_dir / "metrics.json"
    if metrics.is_file():
        print(f"Wrote {plot_training_curves(metrics, out_dir / 'curves.png')}")
    elif options.gt is None:
        parser.error(f"{metrics} not found")
    if options.gt is not None:
        predictions = options.predictions or options.run_dir / "inference" / "predictions.json"
        print(f"Wrote {plot_precision_recall(predictions, options.gt, out_dir / 'pr_curves.png')}")


if __name__ == "__main__":
    main()
