"""``scripts/parity_report.py``: the README's parity table is recomputed, complete, within tolerance and current.

This is how CI runs the report: one run of its ``main`` (about a minute on 2 cores), then checks of what it printed
and of the numbers it wrote.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.parity

REPO = Path(__file__).resolve().parents[1]
# the README's order; rows about the same outputs share a line
ROWS = [
    "mapped_inputs",
    *("tiny_features", "x101_outputs", "proposals", "predictions", "training_losses"),
    *("coco_ap", "detectron2_predictions_ap"),
    *("lr_schedules", "param_groups", "gradient_clipping"),
    "augmentation",
]


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report() -> ModuleType:
    return _load(REPO / "scripts" / "parity_report.py", "parity_report")


@pytest.fixture(scope="module")
def ran(report: ModuleType, parity_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, dict]:
    """Exit status, printed table and the ``--json`` numbers of one run."""
    out = tmp_path_factory.mktemp("report") / "parity.json"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = report.main(["--parity-dir", str(parity_dir), "--json", str(out)])
    return status, stdout.getvalue(), json.loads(out.read_text())


def test_every_row_is_measured_and_within_the_tests_tolerance(ran: tuple[int, str, dict]) -> None:
    status, _, numbers = ran
    assert list(numbers) == ROWS
    for key, row in numbers.items():
        assert row["within"], (key, row)
        for name, limit in row["tolerance"].items():
            assert row["observed"][name] is not None and row["observed"][name] <= limit, (key, name, row)
    assert status == 0


def test_the_printed_table_has_one_line_per_row(ran: tuple[int, str, dict]) -> None:
    _, printed, numbers = ran
    lines = printed.strip().splitlines()
    assert lines[:2] == ["| comparison | worst observed | tolerance |", "|---|---|---|"]
    assert [line.split(" | ")[0].removeprefix("| ") for line in lines[2:]] == [
        row["comparison"] for row in numbers.values()
    ]


def test_the_readme_quotes_the_table_the_script_prints(ran: tuple[int, str, dict]) -> None:
    """The comparison and tolerance columns must match exactly; the observed column may move in the last digits
    between machines, so only its wording (``identical``, units) is compared, numbers replaced."""
    _, printed, _ = ran
    readme = (REPO / "README.md").read_text()
    assert "python scripts/parity_report.py" in readme

    def shape(line: str) -> str:
        return re.sub(r"\d(\.\d+)?(e-?\d+)?", "#", line)

    table = printed.strip().splitlines()
    start = readme.index(table[0])
    quoted = readme[start:].splitlines()[: len(table)]
    assert [shape(line) for line in quoted] == [shape(line) for line in table]


def test_the_reports_tolerances_are_the_parity_tests_own(report: ModuleType) -> None:
    table = importlib.import_module("parity_rows.table")  # loading the report put scripts/ on sys.path
    tiny = _load(REPO / "tests" / "parity" / "test_tiny_lung_model.py", "_tiny_lung_tolerances")
    x101 = _load(REPO / "tests" / "parity" / "test_x101.py", "_x101_tolerances")
    assert table.FEATURE_TOL == tiny.FEATURE_TOL == x101.FEATURE_TOL
    assert (table.BOX_TOL, table.SCORE_TOL, table.LOGIT_TOL, table.LOSS_TOL) == (
        tiny.BOX_TOL,
        tiny.SCORE_TOL,
        tiny.LOGIT_TOL,
        tiny.LOSS_TOL,
    )
    assert "rtol=1e-7" in (REPO / "tests" / "training" / "test_optim.py").read_text()
    assert table.CLIP_RTOL == 1e-7
