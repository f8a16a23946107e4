"""A detectron2 config written for N processes trains on M as detectron2 scales it (REFERENCE_WORLD_SIZE)."""

from __future__ import annotations

import pytest
from jsonargparse import Namespace

from segmentation.errors import ConfigError
from segmentation.training.world_size import planned_world_size, scale_to_world_size


def _config(reference: int) -> Namespace:
    return Namespace(
        reference_world_size=reference,
        data=Namespace(ims_per_batch=16),
        model=Namespace(
            optimizer=Namespace(class_path="torch.optim.SGD", init_args=Namespace(lr=0.02, momentum=0.9)),
            schedule=Namespace(warmup_iters=1000, milestones=[210000, 250000]),
        ),
        trainer=Namespace(max_steps=270000, val_check_interval=None),
        checkpoint_last=Namespace(every_n_train_steps=5000),
    )


def test_batch_and_lr_scale_up_and_iterations_down_with_detectron2s_rounding(capsys) -> None:
    config = _config(reference=8)
    scale_to_world_size(config, 3)  # 3 / 8 = 0.375
    assert config.data.ims_per_batch == 6
    assert config.model.optimizer.init_args.lr == pytest.approx(0.02 * 0.375)
    assert config.trainer.max_steps == 720000
    assert config.model.schedule.warmup_iters == 2667 and config.model.schedule.milestones == [560000, 666667]
    assert config.checkpoint_last.every_n_train_steps == 13333 and config.trainer.val_check_interval is None
    assert config.reference_world_size == 3
    assert "written for 8 processes, training on 3" in capsys.readouterr().err


@pytest.mark.parametrize("reference", [0, 4])
def test_no_reference_or_the_same_world_size_changes_nothing(reference: int) -> None:
    config = _config(reference)
    scale_to_world_size(config, 4)
    assert config == _config(reference)


def test_scaling_needs_the_global_batch() -> None:
    config = _config(reference=8)
    config.data.ims_per_batch = None
    with pytest.raises(ConfigError, match="--data.ims_per_batch"):
        scale_to_world_size(config, 2)


def test_the_planned_world_size_is_devices_times_nodes() -> None:
    assert planned_world_size(Namespace(devices=2, num_nodes=3, accelerator="cpu")) == 6
    assert planned_world_size(Namespace(devices=[0, 1, 2], num_nodes=1, accelerator="gpu")) == 3
    assert planned_world_size(Namespace(devices="auto", num_nodes=2, accelerator="cpu")) == 2
