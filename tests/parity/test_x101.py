"""The full-size ResNeXt-101 32x8d FPN and RPN head against detectron2 on seeded random weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from parity_references import load_x101, x101_outputs

pytestmark = pytest.mark.parity

# detectron2 against itself, 1 vs 2 threads, agrees to 6.3e-6 of each level's std (../shared/parity/tolerances.json).
FEATURE_TOL = 1e-5


def _close(name: str, ours: np.ndarray, ref: np.lib.npyio.NpzFile) -> None:
    std = float(ref[f"{name}_std"])
    assert list(ours.shape) == list(ref[f"{name}_shape"]), name
    c, y, x = ref[f"{name}_pos"].T
    assert np.abs(ours[c, y, x] - ref[f"{name}_vals"]).max() <= FEATURE_TOL * std, name
    assert abs(float(ours.mean(dtype=np.float64)) - float(ref[f"{name}_mean"])) <= FEATURE_TOL * std, name
    assert abs(float(ours.std(dtype=np.float64)) - std) <= FEATURE_TOL * std, name


def test_x101_fpn_and_rpn_head_match_detectron2(parity_dir: Path) -> None:
    model, report = load_x101(parity_dir)
    assert not report.skipped
    ref = np.load(parity_dir / "x101" / "expected" / "x101_outputs.npz")
    for name, ours in x101_outputs(model, parity_dir).items():
        _close(name, ours, ref)
