"""``python -m segmentation.fit``: train, then evaluate on val and test, like detectron2's ``train_net.py``.

Training runs for ``trainer.max_steps`` iterations; validation runs every ``trainer.val_check_interval`` steps and
always after the last one (detectron2's EvalHook), then the test split is evaluated with the final weights.
Predictions and AP of each evaluation go to ``<output_dir>/inference/``. The final weights are also exported as a
plain state dict, ``<output_dir>/model_final.pth``, next to ``checkpoints/last.ckpt`` (resumable) and
``checkpoints/best.ckpt`` (best val segm AP).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser
from pytorch_lightning.utilities.exceptions import SIGTERMException

from segmentation.cli import SegmentationCLI, refuse_partial_evaluation
from segmentation.data.check import check_datamodule_splits
from segmentation.errors import user_errors_exit
from segmentation.training.interruption import SaveOnInterrupt, interruption_message
from segmentation.training.metrics_json import MetricsJsonWriter
from segmentation.training.world_size import planned_world_size, scale_to_world_size

CHECKPOINT_DEFAULTS = {
    "checkpoint_last": {"filename": "last", "save_top_k": 1, "every_n_train_steps": 500},
    "checkpoint_best": {"monitor": "segm/AP", "mode": "max", "filename": "best", "save_top_k": 1},
}


class FitCLI(SegmentationCLI):
    """``SegmentationCLI`` plus what only training has: resuming, checkpoints, metrics.json, saving on interrupt."""

    training = True

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument(
            "--reference_world_size",
            type=int,
            default=0,
            help="detectron2's SOLVER.REFERENCE_WORLD_SIZE: the number of processes the batch, learning rate and "
            "iteration counts were written for; with another number they are scaled as detectron2 scales them "
            "(0: never scale).",
        )
        parser.add_argument(
            "--ckpt_path", type=str | None, default=None, help="Resume training from this checkpoint ('last' too)."
        )
        parser.add_lightning_class_args(MetricsJsonWriter, "metrics_json")
        parser.link_arguments("output_dir", "metrics_json.dirpath")
        parser.add_lightning_class_args(SaveOnInterrupt, "save_on_interrupt")
        parser.link_arguments("output_dir", "save_on_interrupt.dirpath", compute_fn=checkpoint_dir)
        for name, defaults in CHECKPOINT_DEFAULTS.items():
            parser.add_lightning_class_args(ModelCheckpoint, name)
            parser.link_arguments("output_dir", f"{name}.dirpath", compute_fn=checkpoint_dir)
            parser.set_defaults({f"{name}.{key}": value for key, value in defaults.items()})
            parser.set_defaults({f"{name}.enable_version_counter": False})

    def before_instantiate_classes(self) -> None:
        scale_to_world_size(self.config, planned_world_size(self.config.trainer))


def checkpoint_dir(output_dir: str) -> str:
    return f"{output_dir}/checkpoints"


def main(args: list[str] | None = None) -> None:
    with user_errors_exit():
        cli = FitCLI(args=args, description=__doc__, results_subdir="inference")
        trainer, module, data = cli.trainer, cli.model, cli.datamodule
        data.per_process_batch_size(trainer.world_size)  # a global batch that does not divide: before any step
        refuse_partial_evaluation(trainer, data)
        check_datamodule_splits(data, check_images=cli.config.check_images)  # every problem, before any step
        last = Path(cli.config_init["checkpoint_last"].dirpath) / "last.ckpt"
        try:
            trainer.fit(module, datamodule=data, ckpt_path=cli.config.ckpt_path)
        except (SIGTERMException, torch.OutOfMemoryError) as stop:  # SaveOnInterrupt has saved the last step
            raise SystemExit(interruption_message(stop, trainer.global_step, last)) from None
        # The periodic checkpoint may not fall on the last step; a resumable state of the finished run always exists.
        trainer.save_checkpoint(last, weights_only=False)
        if data.val_json is not None and module.last_evaluation_step != trainer.global_step:
            trainer.validate(module, datamodule=data)
        if data.test_json is not None:
            trainer.test(module, datamodule=data)
        if trainer.is_global_zero:
            export_state_dict(module.model.state_dict(), Path(cli.config.output_dir) / "model_final.pth")


def export_state_dict(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Write atomically: a temporary file renamed over the target, so a crash never leaves a truncated model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(state_dict, partial)
    os.replace(partial, path)


if __name__ == "__main__":
    main()
