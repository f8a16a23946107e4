"""One row of the parity table, the number format the README uses, and the tolerances the parity tests enforce."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# The tolerances the tests enforce (tests/test_parity_report.py checks they are the tests' own constants).
FEATURE_TOL = 1e-5  # x level std: tests/parity/test_tiny_lung_model.py and test_x101.py
BOX_TOL = 1e-3  # px: proposals and predictions
SCORE_TOL = 1e-5
LOGIT_TOL = 3e-5
LOSS_TOL = 1e-5  # relative
CLIP_RTOL = 1e-7  # tests/training/test_optim.py


@dataclass
class Row:
    """One line of the table: what was compared, the worst numbers observed, and whether they are within tolerance.

    ``observed`` maps a quantity to its worst value and ``tolerance`` the same quantities to the largest value the
    tests accept (``within`` holds when every observed value is <= its tolerance), so the JSON output and the test
    can check the numbers rather than the wording.
    """

    key: str
    comparison: str
    observed: dict[str, float]
    tolerance: dict[str, float]
    observed_text: str
    tolerance_text: str

    @property
    def within(self) -> bool:
        return all(self.observed[name] <= limit for name, limit in self.tolerance.items())


def fmt(value: float) -> str:
    """Two significant digits as the README writes them (``5.4e-6``, ``1e-3``), ``0`` for an exact match."""
    if value == 0 or math.isinf(value):
        return str(value if value else 0)
    if abs(value) >= 0.01:
        return f"{value:.2g}"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def worst_relative_to_std(name: str, ours: np.ndarray, ref: Any, *, full: bool = False) -> float:
    """The parity tests' checks of one recorded array (64 recorded positions, mean, std, and the whole array when
    recorded), as the largest difference divided by the array's std."""
    std = float(ref[f"{name}_std"])
    if list(ours.shape) != list(ref[f"{name}_shape"]):
        return math.inf
    c, y, x = ref[f"{name}_pos"].T
    diffs = [
        float(np.abs(ours[c, y, x] - ref[f"{name}_vals"]).max()),
        abs(float(ours.mean(dtype=np.float64)) - float(ref[f"{name}_mean"])),
        abs(float(ours.std(dtype=np.float64)) - std),
    ]
    if full:
        diffs.append(float(np.abs(ours - ref[name]).max()))
    return max(diffs) / std


def std_row(key: str, comparison: str, worst: float) -> Row:
    """A row of feature-like outputs, compared relative to each level's std."""
    return Row(
        key,
        comparison,
        {"x_level_std": worst},
        {"x_level_std": FEATURE_TOL},
        f"{fmt(worst)} x level std",
        f"{fmt(FEATURE_TOL)} x std",
    )


def exact_row(key: str, comparison: str, quantity: str, observed: float, observed_text: str) -> Row:
    """A row the tests require to match exactly: ``quantity`` (a count or a difference) must be 0."""
    return Row(key, comparison, {quantity: observed}, {quantity: 0.0}, observed_text, "exact")
