"""A detectron2 config -> our LightningCLI config: what every command does with a ``--config`` that is detectron2's.

The translation is handed to the command's parser as yaml text and ends up in the run's saved ``config.yaml``, so a
detectron2 OUTPUT_DIR can be trained, evaluated, exported or predicted with, and the saved config shows every number
that came from it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pytorch_lightning.utilities import rank_zero_only

from segmentation.detectron2_config.files import detectron2_config_at
from segmentation.detectron2_config.keys import UnsupportedConfigError
from segmentation.detectron2_config.settings import Detectron2Settings, from_detectron2_config


def translate_detectron2_configs(args: list[str], training: bool = True) -> list[str]:
    """Replace each ``--config`` that is a detectron2 ``config.yaml`` by the equivalent config of ours.

    Each file is read once; nothing is written to disk (``--config`` takes yaml text as well as a path). ``training``
    is whether the command trains (see :func:`config_from_detectron2`).
    """
    translated = list(args)
    for i, arg in enumerate(translated):
        if arg in ("--config", "-c") and i + 1 < len(translated):
            index, path = i + 1, translated[i + 1]
        elif arg.startswith("--config="):
            index, path = i, arg.split("=", 1)[1]
        else:
            continue
        cfg = detectron2_config_at(path) if Path(path).is_file() else None
        if cfg is None:
            continue
        ours = config_from_detectron2(from_detectron2_config(cfg), training=training)
        if not any(a.split("=", 1)[0].startswith("--model.optimizer") for a in args):
            _say_optimizer(ours["model"]["optimizer"]["init_args"])
        text = yaml.safe_dump(ours, sort_keys=False)
        translated[index] = text if index != i else f"--config={text}"
    return translated


@rank_zero_only
def _say_optimizer(sgd: dict[str, Any]) -> None:
    """detectron2's DefaultTrainer builds SGD, and a dump does not name its optimizer: say which one trains."""
    print(
        f"detectron2 config: training with detectron2's default optimizer, torch.optim.SGD (momentum "
        f"{sgd['momentum']}, nesterov {sgd['nesterov']}); choose another with --model.optimizer, e.g. "
        "--model.optimizer torch.optim.Adam --model.optimizer.lr 1e-4 for the seed recipe's Adam",
        file=sys.stderr,
    )


def config_from_detectron2(settings: Detectron2Settings, training: bool = True) -> dict[str, Any]:
    """Our config for a detectron2 run: architecture, input sizes, augmentation, data loading and solver numbers.

    ``training`` adds what only ``segmentation.fit`` has options for: the periodic checkpoint (CHECKPOINT_PERIOD)
    and detectron2's automatic scaling to the number of processes (REFERENCE_WORLD_SIZE).
    """
    if settings.input_format != "BGR":
        raise UnsupportedConfigError(
            f"INPUT.FORMAT {settings.input_format!r} is not supported: the model reads BGR images"
        )
    config: dict[str, Any] = {
        "model": _model_section(settings),
        "data": _data_section(settings),
        "trainer": {
            "max_steps": settings.max_iter,
            "precision": "16-mixed" if settings.amp_enabled else "32-true",
            "val_check_interval": settings.eval_period or None,
        },
    }
    if settings.seed >= 0:  # SEED -1 draws a random seed, as Lightning does without seed_everything
        config["seed_everything"] = settings.seed
        config["data"]["seed"] = settings.seed
    if training:
        config["checkpoint_last"] = {"every_n_train_steps": settings.checkpoint_period}
        config["reference_world_size"] = settings.reference_world_size
    return config


def _model_section(settings: Detectron2Settings) -> dict[str, Any]:
    """``model``: the architecture, the weights, detectron2's SGD with its parameter-group rules, schedule, clipping."""
    return {
        "arch": json.loads(json.dumps(dataclasses.asdict(settings.model))),  # tuples -> lists for yaml
        "weights": settings.weights or None,
        "optimizer": {
            "class_path": "torch.optim.SGD",
            "init_args": {
                "lr": settings.base_lr,
                "momentum": settings.momentum,
                "nesterov": settings.nesterov,
                "weight_decay": settings.weight_decay,
            },
        },
        "bias_lr_factor": settings.bias_lr_factor,
        "weight_decay_bias": settings.weight_decay_bias,
        "weight_decay_norm": settings.weight_decay_norm,
        "schedule": {
            "name": settings.lr_scheduler_name,
            "warmup_method": settings.warmup_method,
            "warmup_iters": settings.warmup_iters,
            "warmup_factor": settings.warmup_factor,
            "milestones": list(settings.steps),
            "gamma": settings.gamma,
            "base_lr_end": settings.base_lr_end,
        },
        "gradient_clipping": settings.clip_gradients,
    }


def _data_section(settings: Detectron2Settings) -> dict[str, Any]:
    """``data``: the batch, the loaders, the input sizes and the augmentation."""
    return {
        "ims_per_batch": settings.ims_per_batch,  # global, as detectron2 means it: divided among processes
        "num_workers": settings.num_workers,
        "min_size_train": settings.min_size_train,
        "max_size_train": settings.max_size_train,
        "min_size_train_sampling": settings.min_size_train_sampling,
        "random_flip": settings.random_flip,
        "crop_type": settings.crop_type,
        "crop_size": settings.crop_size,
        "min_size_test": settings.min_size_test,
        "max_size_test": settings.max_size_test,
        "filter_empty_annotations": settings.filter_empty_annotations,
        "aspect_ratio_grouping": settings.aspect_ratio_grouping,
        "sampler_train": settings.sampler_train,
        "repeat_threshold": settings.repeat_threshold,
        "repeat_sqrt": settings.repeat_sqrt,
    }
