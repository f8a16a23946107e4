"""Shared fixtures: where detectron2's reference outputs live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """``../shared/parity`` beside the checkout (CI lays it there), or ``$SEGMENTATION_PARITY_DIR``."""
    path = Path(os.environ.get("SEGMENTATION_PARITY_DIR", REPO.parent / "shared" / "parity"))
    if not (path / "tiny_lung").is_dir():
        pytest.fail(f"detectron2 parity fixtures not found at {path}; set SEGMENTATION_PARITY_DIR")
    return path
