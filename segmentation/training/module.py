"""The LightningModule: detectron2's training step, optimizer and schedule, and COCO evaluation in fp32.

It owns no data logic and no metric maths: batches come from ``segmentation.data``, the network from
``segmentation.model``, AP from ``segmentation.evaluation``. What it adds is the recipe: Adam over the trainable
parameters, detectron2's warmup schedule stepped every iteration, the summed losses, and evaluation that runs
outside autocast (detectron2 never evaluates in mixed precision) and prints detectron2's tables.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import OptimizerCallable
from pytorch_lightning.utilities import rank_zero_info

from segmentation.checkpoints.files import resolve
from segmentation.checkpoints.loading import load_weights
from segmentation.errors import ConfigError
from segmentation.evaluation.coco_evaluator import TASKS, CocoEvaluator
from segmentation.evaluation.report import evaluation_report, write_evaluation
from segmentation.model.config import MaskRCNNConfig
from segmentation.model.mask_rcnn import build_mask_rcnn
from segmentation.training.clipping import GradientClipping, clip_each_tensor
from segmentation.training.optim import build_optimizer, parameter_groups
from segmentation.training.schedule import Schedule, lr_multiplier


class MaskRCNNModule(pl.LightningModule):
    """Fine-tune a Mask R-CNN the way detectron2's DefaultTrainer (with an Adam override) does.

    Args:
        arch: the network's architecture options (detectron2's MODEL.* keys).
        weights: initial weights: a local path, URL or ``detectron2://`` name of a detectron2 ``.pkl``/``.pth``,
            one of our checkpoints, or ``null`` for detectron2's random initialisation. Predictor layers whose
            class count differs keep their fresh initialisation (the log lists them).
        backbone_weights: ImageNet initialisation of the backbone alone, as detectron2's base configs do it
            (``ImageNetPretrained/FAIR/X-101-32x8d.pkl`` and other Caffe2-named ``.pkl``, or a timm/torchvision
            ResNet/ResNeXt state dict); FPN and heads keep detectron2's initialisation. Applied before ``weights``.
        optimizer: any ``torch.optim`` class with its arguments (``--model.optimizer torch.optim.SGD
            --model.optimizer.momentum 0.9``). Its ``lr`` is the base learning rate (SOLVER.BASE_LR) and its
            ``weight_decay`` the base decay (SOLVER.WEIGHT_DECAY). The seed recipe uses Adam; detectron2's
            DefaultTrainer builds SGD.
        bias_lr_factor: biases train at this multiple of the base rate (SOLVER.BIAS_LR_FACTOR).
        weight_decay_bias: weight decay of biases, None for the base decay (SOLVER.WEIGHT_DECAY_BIAS).
        weight_decay_norm: weight decay of normalisation-layer parameters (SOLVER.WEIGHT_DECAY_NORM).
        schedule: detectron2's learning-rate schedule, stepped every iteration (SOLVER.LR_SCHEDULER_NAME, WARMUP_*,
            STEPS, GAMMA, BASE_LR_END).
        gradient_clipping: detectron2's per-tensor clipping (SOLVER.CLIP_GRADIENTS), None for off. Lightning's
            ``--trainer.gradient_clip_val`` (one global norm) applies on top when set.
        eval_backend: COCOeval implementation behind torchmetrics. ``pycocotools`` is COCOeval itself, bit for bit;
            ``faster_coco_eval`` is faster and agrees to ~1e-16 (precision computed without COCOeval's epsilon).
        score_threshold: score at which precision/recall/F1 and per-image Dice/IoU are reported.
        results_dir: where each evaluation writes ``predictions.json`` and ``eval.json`` (fit links
            ``<output_dir>/inference``, evaluate ``<output_dir>``); None writes no files.
    """

    def __init__(
        self,
        arch: MaskRCNNConfig | None = None,
        weights: str | None = None,
        backbone_weights: str | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        bias_lr_factor: float = 1.0,
        weight_decay_bias: float | None = None,
        weight_decay_norm: float = 0.0,
        schedule: Schedule | None = None,
        gradient_clipping: GradientClipping | None = None,
        results_dir: str | None = None,
        eval_backend: Literal["faster_coco_eval", "pycocotools"] = "pycocotools",
        score_threshold: float = 0.5,
    ) -> None:
        super().__init__()
        if isinstance(arch, dict):  # restored from a checkpoint's hyper-parameters
            arch = MaskRCNNConfig(**arch)
        if isinstance(schedule, dict):
            schedule = Schedule(**schedule)
        if isinstance(gradient_clipping, dict):
            gradient_clipping = GradientClipping(**gradient_clipping)
        self.arch = arch or MaskRCNNConfig()
        self.optimizer = optimizer
        self.schedule = schedule or Schedule()
        self.gradient_clipping = gradient_clipping
        # Plain containers only, so checkpoints load with torch.load(weights_only=True); the optimizer callable is
        # recorded by the saved config.yaml, its state by the checkpoint. A second save_hyperparameters call would
        # replace the first, so the dataclasses are added to the recorded dict.
        self.save_hyperparameters(ignore=["arch", "optimizer", "schedule", "gradient_clipping", "results_dir"])
        self.hparams["arch"] = dataclasses.asdict(self.arch)  # recorded in every .ckpt: load_trained needs no config
        self.hparams["schedule"] = dataclasses.asdict(self.schedule)
        if gradient_clipping is not None:
            self.hparams["gradient_clipping"] = dataclasses.asdict(gradient_clipping)
        self.model = build_mask_rcnn(self.arch)
        self.category_names: list[str] = []
        self.last_evaluation: dict[str, float] = {}
        self.last_evaluation_step = -1
        self._evaluators: dict[str, CocoEvaluator] = {}
        self._loss_sums: dict[str, torch.Tensor] = {}  # per split: [sum of batch losses, number of batches]
        self._weights_loaded = weights is None and backbone_weights is None
        self._rng_to_restore: dict[str, Any] | None = None
        self._resolved: dict[str, Path] = {}  # initial weights prepare_data found, by source
        self.results_dir = Path(results_dir) if results_dir is not None else None

    # ---- setup ---------------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Download the initial weights once per node (rank 0), before every rank loads them in ``setup``."""
        for source in (self.hparams.backbone_weights, self.hparams.weights):
            if source is not None:
                self._resolved[source] = resolve(source)

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        categories = datamodule.categories
        if len(categories) != self.arch.num_classes:
            raise ConfigError(
                f"model.arch.num_classes is {self.arch.num_classes} but the dataset json has {len(categories)} "
                f"categories ({', '.join(c.name for c in categories)}); set --model.arch.num_classes {len(categories)}"
            )
        self.category_names = [c.name for c in categories]
        if not self._weights_loaded:
            self.load_initial_weights()
        for split in {source.name for source in datamodule.splits()} & {"val", "test"}:
            if split not in self._evaluators:
                self._evaluators[split] = CocoEvaluator(
                    datamodule.ground_truth(split),
                    backend=self.hparams.eval_backend,
                    score_threshold=self.hparams.score_threshold,
                )

    def load_initial_weights(self) -> None:
        """Load ``backbone_weights`` then ``weights``, logging what was kept at its fresh initialisation."""
        for source, backbone_only in ((self.hparams.backbone_weights, True), (self.hparams.weights, False)):
            if source is None:
                continue
            # prepare_data resolved (and checked) it on this process already; other ranks resolve here
            report = load_weights(self.model, self._resolved.get(source, source), backbone_only=backbone_only)
            rank_zero_info(f"Loaded {len(report.loaded)} tensors from {source}")
            for name in report.skipped:
                rank_zero_info(f"Not loaded (class count differs, fresh init kept): {name}")
        self._weights_loaded = True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["category_names"] = list(self.category_names)
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.category_names = list(checkpoint.get("category_names", []))
        self._weights_loaded = True
        self._rng_to_restore = checkpoint.get("rng_states")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Restore the sampling RNG of a resumed run here, once the data loader has been (re)built: building it
        draws from the global RNG, and that draw happened before the checkpoint in the original run."""
        if self._rng_to_restore is not None:
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None

    # ---- training ------------------------------------------------------------------------------------------

    def training_step(self, batch: tuple[list[torch.Tensor], list[dict]], batch_idx: int) -> dict[str, Any]:
        images, targets = batch
        outputs = self.model(images, targets)
        total_loss = sum(value for name, value in outputs.items() if name.startswith("loss_"))
        # fp16 overflows are the grad scaler's business (it skips the step); elsewhere a non-finite loss is fatal,
        # as detectron2's FloatingPointError. This is the step's one host sync, as in detectron2.
        if str(self.trainer.precision) not in ("16-mixed", "16") and not torch.isfinite(total_loss):
            losses = {name: float(value) for name, value in outputs.items() if name.startswith("loss_")}
            raise FloatingPointError(
                f"Loss became infinite or NaN at iteration={self.global_step}, "
                f"images {[target['image_id'] for target in targets]}: {losses}"
            )
        scalars = {name: value.detach() for name, value in outputs.items()}
        scalars["total_loss"] = total_loss.detach()
        self.log("total_loss", scalars["total_loss"], prog_bar=True, logger=False)
        return {"loss": total_loss, "scalars": scalars}

    def configure_optimizers(self) -> dict[str, Any]:
        groups = parameter_groups(
            self.model,
            bias_lr_factor=self.hparams.bias_lr_factor,
            weight_decay_bias=self.hparams.weight_decay_bias,
            weight_decay_norm=self.hparams.weight_decay_norm,
        )
        optimizer = build_optimizer(self.optimizer, groups)
        multiplier = lr_multiplier(self.schedule, base_lr=optimizer.defaults["lr"], max_iter=self.trainer.max_steps)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """detectron2's per-tensor clipping first (gradients are unscaled here under fp16), then Lightning's own."""
        if self.gradient_clipping is not None:
            clip_each_tensor((p for group in optimizer.param_groups for p in group["params"]), self.gradient_clipping)
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ---- evaluation ----------------------------------------------------------------------------------------

    def predict_step(self, batch: tuple[list[torch.Tensor], list[dict]], batch_idx: int = 0) -> list[dict]:
        """Detections at each image's original size, computed in fp32 whatever the training precision."""
        images, infos = batch
        with torch.autocast(self.device.type, enabled=False):
            return self.model(
                [image.float() for image in images], output_sizes=[(info["height"], info["width"]) for info in infos]
            )

    def validation_step(self, batch: tuple[list[torch.Tensor], list[dict]], batch_idx: int) -> None:
        self._evaluate_batch("val", batch)

    def test_step(self, batch: tuple[list[torch.Tensor], list[dict]], batch_idx: int) -> None:
        self._evaluate_batch("test", batch)

    def _evaluate_batch(self, split: str, batch: tuple[list[torch.Tensor], list[dict]]) -> None:
        images, infos = batch
        for info, detections in zip(infos, self.predict_step(batch), strict=True):
            self._evaluators[split].update(info["image_id"], detections)
        if "target" in infos[0]:
            loss = self._loss_without_side_effects(images, [info["target"] for info in infos])
            self._loss_sums[split] = self._loss_sums.get(split, 0) + torch.stack([loss, torch.ones_like(loss)])

    def _loss_without_side_effects(self, images: list[torch.Tensor], targets: list[dict]) -> torch.Tensor:
        """The training loss of a batch (detectron2 users add a ValLossHook for it), leaving training untouched.

        The heads need train mode to compute losses; normalisation layers stay in eval mode (no running-statistics
        update) and the RNG used by the samplers is forked, so evaluating never changes the training that follows.
        """
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices), torch.autocast(self.device.type, enabled=False):
            self.model.train()
            for module in self.model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._NormBase):
                    module.eval()
            outputs = self.model([image.float() for image in images], targets)
            self.model.eval()
        return sum(value for name, value in outputs.items() if name.startswith("loss_")).float()

    def on_validation_epoch_end(self) -> None:
        self._finish_evaluation("val", prefix="")

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation("test", prefix="test/")

    def _finish_evaluation(self, split: str, prefix: str) -> None:
        """Compute AP over all ranks' images, print detectron2's report and log ``bbox/AP`` ... ``segm/APl``.

        With ``results_dir`` set, also writes detectron2's ``coco_instances_results.json`` as ``predictions.json``
        and the AP dict as ``eval.json`` (``test_predictions.json``/``test_eval.json`` for the test split).
        """
        evaluator = self._evaluators[split]
        evaluation = evaluator.evaluate()
        predictions = evaluator.coco_results() if self.results_dir is not None else []
        evaluator.reset()
        results = evaluation.results()
        if self.trainer.is_global_zero:
            print(evaluation_report(split, evaluation), flush=True)
            if self.results_dir is not None:
                write_evaluation(self.results_dir, split, evaluation, predictions)
        if split == "val":
            self.last_evaluation_step = self.global_step
        self.last_evaluation = {
            f"{prefix}{task}/{name}": value for task in TASKS for name, value in results[task].items()
        }
        self.last_evaluation.update(
            {f"{prefix}operating_point/{name}": value for name, value in evaluation.operating_point.items()}
        )
        # A rank whose shard was empty still joins the reduction (collective).
        local = self._loss_sums.pop(split, torch.zeros(2, device=self.device))
        loss_sum, batches = self.trainer.strategy.reduce(local, reduce_op="sum").tolist()
        if batches:
            self.last_evaluation[f"{prefix}validation_loss"] = loss_sum / batches
        # Every rank holds the same gathered numbers, so no reduction is needed.
        self.log_dict(self.last_evaluation, sync_dist=False, rank_zero_only=False)


def rng_states() -> dict[str, Any]:
    """The torch RNG states the samplers draw from (CPU and every CUDA device), as plain tensors."""
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["cpu"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
