"""docs/notebook.md is run, not just read: its Python cells execute in order, as a notebook would run them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "docs" / "notebook.md"


def python_cells(markdown: str) -> list[str]:
    """The bodies of the page's fenced ``python`` blocks, in page order."""
    return re.findall(r"^```python\n(.*?)^```$", markdown, flags=re.DOTALL | re.MULTILINE)


def run_cells(cells: list[str], workdir: Path) -> dict:
    """Execute ``cells`` one after the other in one namespace, as notebook cells share theirs."""
    namespace: dict = {"__name__": "__notebook__"}
    for number, cell in enumerate(cells, start=1):
        exec(compile(cell, f"{NOTEBOOK.name}, python cell {number}", "exec"), namespace)
    return namespace


def test_the_page_has_cells_for_each_step() -> None:
    cells = "\n".join(python_cells(NOTEBOOK.read_text()))
    for call in ("make_phantom(", "segmentation.train(", "Predictor(", "predictor(", ".draw(", 'runtime="onnxruntime"'):
        assert call in cells


def test_notebook_cells_run_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a fresh folder with the checkout's configs beside it, as a notebook started at the checkout root."""
    (tmp_path / "configs").symlink_to(REPO / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEGMENTATION_CACHE", str(tmp_path / "cache"))
    namespace = run_cells(python_cells(NOTEBOOK.read_text()), tmp_path)

    assert (tmp_path / "runs" / "notebook" / "checkpoints" / "last.ckpt").is_file()
    assert namespace["metrics"]["iteration"] == 4
    detections = namespace["detections"]
    assert set(detections) == {"boxes", "scores", "labels", "masks", "class_names"}
    assert detections["masks"].shape[1:] == (128, 128)
    assert (tmp_path / "overlay.png").is_file() and namespace["overlay"].size == (128, 128)
