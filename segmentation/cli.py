"""The command line all commands share (fit, evaluate, predict, export, check_data): LightningCLI with a run directory.

Like detectron2's OUTPUT_DIR, ``--output_dir`` holds everything a run writes: the resolved ``config.yaml``,
``metrics.json``, the CSV/TensorBoard logs, ``checkpoints/`` and the final model. Everything else is a LightningCLI
option (``--model.*``, ``--data.*``, ``--trainer.*``) settable from yaml files and overridable on the command line;
a ``--config`` that is a detectron2 ``config.yaml`` is translated first (``segmentation.detectron2_config``).
Options only one command has are registered by that command (fit's checkpoints and metrics.json in ``fit.py``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning import LightningModule, Trainer
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.loggers import Logger, TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_warn

from segmentation.checkpoints.io import SafeCheckpointIO
from segmentation.data.datamodule import CocoDataModule
from segmentation.detectron2_config.translate import translate_detectron2_configs
from segmentation.errors import ConfigError
from segmentation.training.csv_logger import ResumableCSVLogger
from segmentation.training.module import MaskRCNNModule

TRAINER_DEFAULTS: dict[str, Any] = {
    "use_distributed_sampler": False,  # the datamodule shards itself, without padding duplicates
    "num_sanity_val_steps": 0,  # detectron2 evaluates only when asked; a sanity pass would print bogus tables
    "log_every_n_steps": 20,
    "check_val_every_n_epoch": None,  # iteration-based training over an infinite sampler, as detectron2
}


class SegmentationCLI(LightningCLI):
    """LightningCLI for :class:`MaskRCNNModule` on a :class:`CocoDataModule`, writing into ``--output_dir``."""

    training = False  # whether the command trains (and so takes a detectron2 config's training-only keys)

    def __init__(
        self, args: list[str] | None = None, *, description: str = "", results_subdir: str | None = None
    ) -> None:
        """``results_subdir``: where in ``--output_dir`` evaluations write predictions.json and eval.json
        (``""``: the run directory itself; None: the command writes no evaluation files)."""
        given = sys.argv[1:] if args is None else args
        refuse_top_level_optimizer(given)
        translated = translate_detectron2_configs(given, training=self.training)
        self.results_subdir = results_subdir
        super().__init__(
            MaskRCNNModule,
            CocoDataModule,
            args=None if args is None and translated == given else translated,
            run=False,
            auto_configure_optimizers=False,
            trainer_defaults=TRAINER_DEFAULTS,
            save_config_callback=SaveConfigToRunDir,
            save_config_kwargs={"overwrite": True, "save_to_log_dir": False},
            parser_kwargs={"description": description},
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--output_dir", type=str, default="runs/default", help="Where the run writes everything.")
        parser.add_argument(
            "--check_images",
            type=bool,
            default=True,
            help="Before starting, open every image of the given splits (the jsons are always checked).",
        )
        if self.results_subdir is not None:
            subdir = self.results_subdir
            parser.link_arguments("output_dir", "model.results_dir", compute_fn=lambda out: str(Path(out) / subdir))

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self._get(self.config_init, "trainer", default={})
        output_dir = self._get(self.config, "output_dir")
        kwargs["default_root_dir"] = output_dir
        if config.get("logger") in (None, True):
            kwargs["logger"] = default_loggers(output_dir, resume=bool(self.config.get("ckpt_path")))
        if config.get("val_check_interval") is None and config.get("max_steps", -1) > 0:
            # Evaluate once, after the last step: Lightning counts this interval in batches, not optimizer steps.
            kwargs["val_check_interval"] = config["max_steps"] * (config.get("accumulate_grad_batches") or 1)
        kwargs["precision"] = usable_precision(config.get("precision"), config.get("accelerator"))
        if not config.get("plugins"):
            kwargs["plugins"] = [SafeCheckpointIO()]  # --ckpt_path read like every weights file: safely
        return super().instantiate_trainer(**kwargs)


def refuse_top_level_optimizer(args: list[str]) -> None:
    """LightningCLI's top-level ``--optimizer``/``--lr_scheduler`` would bypass detectron2's parameter groups and
    schedule; the model owns both, so point to its options in one line instead of a usage dump."""
    for arg in args:
        option = arg.split("=", 1)[0].split(".", 1)[0]
        if option in ("--optimizer", "--lr_scheduler"):
            raise ConfigError(
                f"{option} is not an option here: the optimizer is --model.optimizer (e.g. --model.optimizer "
                "torch.optim.SGD --model.optimizer.lr 0.02 --model.optimizer.momentum 0.9) and the schedule "
                "--model.schedule.name (WarmupMultiStepLR or WarmupCosineLR)"
            )


class SaveConfigToRunDir(SaveConfigCallback):
    """``config.yaml`` goes into ``--output_dir`` whatever the logger (Lightning's follows ``trainer.log_dir``,
    which an MLflow logger points at its store, shared by every run)."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        path = Path(self.config["output_dir"]) / self.config_filename
        path.parent.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, str(path), skip_none=False, overwrite=self.overwrite, multifile=self.multifile)


def default_loggers(output_dir: str, *, resume: bool = False) -> list[Logger]:
    """CSV always, TensorBoard when installed, both writing straight into ``output_dir``; ``resume`` keeps the rows
    of ``metrics.csv`` from before a ``--ckpt_path`` resume (Lightning's CSVLogger would delete them)."""
    loggers: list[Logger] = [ResumableCSVLogger(output_dir, name="", version="", resume=resume)]
    if importlib.util.find_spec("tensorboard") is not None:
        loggers.append(TensorBoardLogger(output_dir, name="", version="", default_hp_metric=False))
    return loggers


def usable_precision(precision: Any, accelerator: Any) -> Any:
    """fp16 autocast exists only on CUDA: on a machine without a GPU the recipe's ``16-mixed`` runs in fp32."""
    if str(precision) in ("16-mixed", "16") and (accelerator == "cpu" or not torch.cuda.is_available()):
        rank_zero_warn(f"precision={precision!r} needs a CUDA GPU; running in 32-bit on the CPU instead.")
        return "32-true"
    return precision


def config_given(cli: SegmentationCLI) -> bool:
    """Whether the user passed ``--config`` (else a command may take the architecture from the checkpoint)."""
    return bool(cli.config.get("config"))


def refuse_partial_evaluation(trainer: Trainer, datamodule: CocoDataModule) -> None:
    """Refuse ``--trainer.limit_val_batches``/``limit_test_batches`` below all of a given split, before training.

    The evaluator scores against every image of the json, so predictions for only the first batches would count
    every other image as missed: an AP that looks real and is not. Evaluating a subset means a smaller json.
    """
    for split in ("val", "test"):
        limit = getattr(trainer, f"limit_{split}_batches")
        if getattr(datamodule, f"{split}_json") is not None and not (isinstance(limit, float) and limit == 1.0):
            raise ConfigError(
                f"--trainer.limit_{split}_batches {limit} would evaluate part of --data.{split}_json while its AP "
                f"counts every image of the json; leave it at 1.0 and give a smaller json to evaluate a subset"
            )
