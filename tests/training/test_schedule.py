"""The learning rate of every iteration is detectron2's, for each schedule detectron2 builds."""

import json

import pytest
from parity_references import schedule_from_overrides

from segmentation.errors import ConfigError
from segmentation.training.schedule import Schedule, lr_multiplier


@pytest.fixture(scope="module")
def detectron2_schedules(parity_dir):
    return json.loads((parity_dir / "solver_and_augmentation" / "lr_schedules.json").read_text())


@pytest.mark.parametrize(
    "name", ["seed_recipe_multistep", "multistep_constant_warmup", "cosine_linear_warmup", "cosine_base_lr_end"]
)
def test_every_iterations_lr_is_detectron2s(detectron2_schedules, name):
    reference = detectron2_schedules[name]
    schedule, base_lr, max_iter = schedule_from_overrides(reference["config_overrides"])
    multiplier = lr_multiplier(schedule, base_lr=base_lr, max_iter=max_iter)
    expected = reference["lr_at_iteration"]
    assert len(expected) == max_iter
    ours = [base_lr * multiplier(i) for i in range(max_iter)]
    assert ours == expected  # bit for bit: the same float operations as fvcore's schedulers


def test_recipe_warms_up_linearly_for_1000_steps_then_stays_constant():
    multiplier = lr_multiplier(Schedule(), base_lr=1e-4, max_iter=3000)
    assert multiplier(0) == pytest.approx(0.001, rel=1e-12)
    assert multiplier(500) == pytest.approx(0.001 + 0.999 * 0.5, rel=1e-12)
    assert multiplier(1000) == multiplier(2999) == 1.0


def test_milestones_beyond_the_last_step_are_dropped_with_detectron2s_warning():
    with pytest.warns(UserWarning, match="SOLVER.STEPS contains values larger than SOLVER.MAX_ITER"):
        multiplier = lr_multiplier(Schedule(warmup_iters=0, milestones=[5, 50]), base_lr=1.0, max_iter=10)
    assert [multiplier(i) for i in (4, 5, 9)] == [1.0, pytest.approx(0.1), pytest.approx(0.1)]


def test_a_cosine_end_above_the_base_rate_is_refused():
    with pytest.raises(ConfigError, match="base_lr_end"):
        lr_multiplier(Schedule(name="WarmupCosineLR", base_lr_end=1.0), base_lr=0.1, max_iter=10)
