"""Recompute the README's "How close we are to detectron2" table from detectron2's reference outputs.

The worst-observed column used to be read off the tests by hand, so it could drift from what the code does. This
script measures every row against ``../shared/parity`` (detectron2's own outputs, see its README.md) with the same
project code and the same comparisons as the tests in ``tests/parity``, ``tests/test_evaluate.py``,
``tests/data/test_mapper.py`` and ``tests/training``, and prints the markdown table
``| comparison | worst observed | tolerance |``. The tolerance column is what those tests enforce;
``tests/test_parity_report.py`` runs this script and fails when a row is missing or out of tolerance. The rows are
measured in ``scripts/parity_rows/`` (one module per group of rows), on the models, inputs and settings that
``tests/parity_references.py`` builds for the tests as well.

    python scripts/parity_report.py [--parity-dir ../shared/parity] [--json numbers.json] [--threads 2]

On 2 CPU cores it takes about a minute; the slowest row is the full-size X101 (431 MB of seeded weights, one
512x512 forward pass).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
# Run as ``python scripts/parity_report.py`` from a checkout: the package, the parity set-up the tests share, the rows.
for folder in (REPO, REPO / "tests", REPO / "scripts"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from parity_references import load_tiny_lung  # noqa: E402
from parity_rows.evaluation import coco_ap  # noqa: E402
from parity_rows.inputs import augmentation, mapped_inputs  # noqa: E402
from parity_rows.model_outputs import predictions, proposals, tiny_features, training_losses, x101  # noqa: E402
from parity_rows.solver import gradient_clipping, lr_schedules, param_groups  # noqa: E402
from parity_rows.table import Row  # noqa: E402

DEFAULT_PARITY_DIR = REPO.parent / "shared" / "parity"


def measure(parity_dir: Path, *, threads: int = 2) -> list[Row]:
    """Every row of the table, in the README's order; ``threads`` as the parity tests set them."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rows = [mapped_inputs(parity_dir)]
        model = load_tiny_lung(parity_dir).eval()
        rows += [tiny_features(model, parity_dir), x101(parity_dir), proposals(model, parity_dir)]
        rows += [predictions(model, parity_dir), training_losses(parity_dir), *coco_ap(parity_dir)]
        rows += [lr_schedules(parity_dir), param_groups(parity_dir), gradient_clipping(parity_dir)]
        rows += [augmentation(parity_dir)]
    finally:
        torch.set_num_threads(previous)
    return rows


def markdown(rows: Sequence[Row]) -> str:
    """The README table."""
    lines = ["| comparison | worst observed | tolerance |", "|---|---|---|"]
    lines += [f"| {r.comparison} | {r.observed_text} | {r.tolerance_text} |" for r in rows]
    return "\n".join(lines)


def as_json(rows: Sequence[Row]) -> dict[str, Any]:
    """The numbers behind the table (inf written as null: JSON has no infinity)."""

    def number(value: float) -> float | None:
        return None if math.isinf(value) else value

    return {
        r.key: {
            "comparison": r.comparison,
            "observed": {k: number(v) for k, v in r.observed.items()},
            "tolerance": r.tolerance,
            "within": r.within,
        }
        for r in rows
    }


def main(argv: list[str] | None = None) -> int:
    """Print the table; exit status 1 when a row is out of tolerance."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parity-dir", type=Path, default=DEFAULT_PARITY_DIR, help="detectron2's reference outputs")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the parity tests use 2)")
    args = parser.parse_args(argv)
    if not (args.parity_dir / "tiny_lung").is_dir():
        parser.error(f"detectron2 parity fixtures not found at {args.parity_dir}")
    rows = measure(args.parity_dir, threads=args.threads)
    print(markdown(rows), flush=True)
    if args.json:
        args.json.write_text(json.dumps(as_json(rows), indent=1) + "\n")
    failed = [r.comparison for r in rows if not r.within]
    if failed:
        print(f"out of tolerance: {'; '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
