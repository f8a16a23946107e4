"""detectron2's automatic scaling of a config to the number of processes (``DefaultTrainer.auto_scale_workers``).

Why this exists: a detectron2 config written for, say, 16 GPUs (``SOLVER.REFERENCE_WORLD_SIZE: 16``) trains on 8 as
detectron2 would: the global batch, the learning rate and every iteration count scale by ``8 / 16``, so the number
of images seen per schedule phase stays the same. The scaling happens on the parsed config, before the trainer, the
model and the data exist, so the number of processes is the one the trainer options ask for.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from jsonargparse import Namespace

from segmentation.errors import ConfigError


def planned_world_size(trainer: Namespace) -> int:
    """The number of processes ``--trainer.devices`` x ``--trainer.num_nodes`` will start."""
    devices = trainer.get("devices", "auto")
    if isinstance(devices, (list, tuple)):
        per_node = len(devices)
    elif isinstance(devices, str) and "," in devices:
        per_node = len([d for d in devices.split(",") if d.strip()])
    elif str(devices) in ("auto", "-1"):
        gpu = str(trainer.get("accelerator", "auto")) in ("auto", "gpu", "cuda")
        per_node = torch.cuda.device_count() if gpu and torch.cuda.is_available() else 1
    else:
        per_node = int(devices)
    return per_node * int(trainer.get("num_nodes", 1) or 1)


def scale_to_world_size(config: Namespace, world_size: int) -> None:
    """Scale ``config`` in place from ``config.reference_world_size`` processes to ``world_size``, as detectron2.

    The global batch (``data.ims_per_batch``) and the learning rate are multiplied by ``world_size / reference``;
    ``trainer.max_steps``, the warmup, the milestones, the evaluation and checkpoint periods are divided by it,
    each rounded as detectron2 rounds. Prints one line saying so. Nothing happens for a reference of 0 or equal to
    ``world_size``.
    """
    reference = config.get("reference_world_size", 0) or 0
    if reference in (0, world_size):
        return
    if config.data.get("ims_per_batch") is None:
        raise ConfigError("--reference_world_size scales the global batch: give it as --data.ims_per_batch")
    scale = world_size / reference

    def fewer(value: Any) -> Any:
        return int(round(value / scale)) if isinstance(value, int) and value > 0 else value

    config.data.ims_per_batch = int(round(config.data.ims_per_batch * scale))
    init_args = config.model.optimizer.init_args
    init_args.lr = init_args.get("lr", 1e-3) * scale
    config.trainer.max_steps = fewer(config.trainer.max_steps)
    config.trainer.val_check_interval = fewer(config.trainer.get("val_check_interval"))
    schedule = config.model.get("schedule")
    if schedule is not None:
        schedule.warmup_iters = fewer(schedule.warmup_iters)
        schedule.milestones = [int(round(m / scale)) for m in schedule.milestones]
    if config.get("checkpoint_last") is not None:
        config.checkpoint_last.every_n_train_steps = fewer(config.checkpoint_last.get("every_n_train_steps"))
    config.reference_world_size = world_size  # detectron2 keeps the invariant the same way
    print(
        f"detectron2 config written for {reference} processes, training on {world_size}: global batch "
        f"{config.data.ims_per_batch}, lr {init_args.lr:g}, max_steps {config.trainer.max_steps} "
        f"(SOLVER.REFERENCE_WORLD_SIZE scaling)",
        file=sys.stderr,
    )
