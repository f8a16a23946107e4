"""``python -m segmentation.evaluate``: detectron2's ``--eval-only``, for any weights the project loads.

Two ways in, one scoring path (``CocoEvaluator``):

* a model: ``--config C --model.weights W --data.val_json J --data.val_images D --output_dir O`` runs inference
  in fp32 with batch 1 (on N processes with ``--trainer.devices N --trainer.strategy ddp``), prints detectron2's
  tables and writes ``O/predictions.json`` (detectron2's ``coco_instances_results.json`` format) and ``O/eval.json``.
  ``C`` is one of our configs or a detectron2 ``config.yaml`` dump; ``W`` a detectron2 ``.pkl``/``.pth``, one of
  our checkpoints, a URL or ``detectron2://...``.
* a results file: ``--predictions P.json --data.val_json J --output_dir O`` scores existing detections (ours or
  detectron2's) and writes the same ``O/eval.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segmentation.cli import SegmentationCLI, refuse_partial_evaluation
from segmentation.data.check import check_datamodule_splits
from segmentation.errors import ConfigError, user_errors_exit
from segmentation.evaluation.coco_evaluator import evaluate_results_file
from segmentation.evaluation.report import evaluation_report, write_evaluation


def main(args: list[str] | None = None) -> None:
    given = sys.argv[1:] if args is None else args
    with user_errors_exit():
        if any(arg == "--predictions" or arg.startswith("--predictions=") for arg in given):
            score_results_file(given)
            return
        cli = SegmentationCLI(args=args, description=__doc__, results_subdir="")
        if cli.datamodule.val_json is None:
            raise ConfigError("give the split to evaluate with --data.val_json and --data.val_images")
        refuse_partial_evaluation(cli.trainer, cli.datamodule)
        check_datamodule_splits(cli.datamodule, check_images=cli.config.check_images)
        cli.trainer.validate(cli.model, datamodule=cli.datamodule)


def score_results_file(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m segmentation.evaluate", description=__doc__)
    parser.add_argument("--predictions", required=True, help="COCO results json (coco_instances_results.json)")
    parser.add_argument("--data.val_json", dest="val_json", required=True, help="ground-truth COCO json")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--model.eval_backend", dest="backend", default="pycocotools")
    parser.add_argument("--model.score_threshold", dest="score_threshold", type=float, default=0.5)
    options = parser.parse_args(args)
    evaluation = evaluate_results_file(
        options.predictions, options.val_json, backend=options.backend, score_threshold=options.score_threshold
    )
    print(evaluation_report("val", evaluation), flush=True)
    write_evaluation(Path(options.output_dir), "val", evaluation, predictions=None)


if __name__ == "__main__":
    main()
