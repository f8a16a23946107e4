"""The learning rate follows detectron2's WarmupMultiStepLR, step for step."""

import pytest

from segmentation.training.schedule import warmup_multistep_factor

BASE_LR = 1e-4


@pytest.mark.parametrize(
    ("step", "expected_lr"),
    [
        (0, 1e-4 * 0.001),
        (500, 1e-4 * (0.001 + 0.999 * 0.5)),
        (999, 1e-4 * (0.001 + 0.999 * 999 / 1000)),
        (1000, 1e-4),
        (2999, 1e-4),
    ],
)
def test_recipe_schedule_warms_up_linearly_for_1000_steps_then_stays_constant(step, expected_lr):
    assert BASE_LR * warmup_multistep_factor(step) == pytest.approx(expected_lr, rel=1e-12)


def test_milestones_multiply_by_gamma_after_warmup():
    def lr(step):
        return warmup_multistep_factor(step, warmup_iters=10, milestones=(100, 200), gamma=0.1)

    assert lr(99) == 1.0
    assert lr(100) == pytest.approx(0.1)
    assert lr(200) == pytest.approx(0.01)


def test_no_warmup_starts_at_full_rate():
    assert warmup_multistep_factor(0, warmup_iters=0) == 1.0
