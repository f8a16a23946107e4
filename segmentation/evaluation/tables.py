"""detectron2's printed evaluation output, character for character.

Users diff our logs against detectron2's and paste the ``copypaste:`` lines into spreadsheets, so the text must be
the same: COCOeval's ``summarize()`` block, "Evaluation results for <task>: " with ``create_small_table``'s pipe
table, the per-category AP table (only with more than one class), and ``print_csv_format``'s copypaste lines.
detectron2 draws its tables with ``tabulate(tablefmt="pipe")``; the small formatter below reproduces that layout
(column width = widest cell or header + 2, one space of padding, ``:`` alignment markers) without the dependency.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

from segmentation.evaluation.coco_stats import METRICS, STATS, percent


def format_results_table(results: Mapping[str, float]) -> str:
    """``create_small_table``: one header row of the keys, one row of the values (``%.3f``, centred)."""
    return _pipe_table(list(results), [list(results.values())], align="center")


def format_per_category_table(per_category_ap: Mapping[str, float]) -> str:
    """detectron2's "Per-category AP" table: up to 3 (category, AP) pairs per row, left aligned."""
    n_cols = min(6, len(per_category_ap) * 2)
    flat = list(itertools.chain(*per_category_ap.items()))
    rows = [list(row) for row in itertools.zip_longest(*[flat[i::n_cols] for i in range(n_cols)])]
    return _pipe_table(["category", "AP"] * (n_cols // 2), rows, align="left")


def format_coco_summary(stats: Sequence[float]) -> str:
    """The 12 lines ``COCOeval.summarize()`` prints for the 12 stats (fractions, -1 printed as -1.000)."""
    lines = []
    for stat, value in zip(STATS, stats, strict=True):
        title, kind = ("Average Precision", "(AP)") if stat.precision else ("Average Recall", "(AR)")
        iou_str = "0.50:0.95" if stat.iou is None else f"{stat.iou:0.2f}"
        where = f"IoU={iou_str:<9} | area={stat.area:>6s} | maxDets={stat.max_dets:>3d}"
        lines.append(f" {title:<18} {kind} @[ {where} ] = {value:0.3f}")
    return "\n".join(lines)


def format_task_report(task: str, stats: Sequence[float], per_category_ap: Mapping[str, float] | None = None) -> str:
    """What detectron2 prints for one task after COCOeval: summary, results table, per-category table (>1 class)."""
    results = {name: percent(stats[i]) for i, name in enumerate(METRICS)}
    text = format_coco_summary(stats) + "\n" + f"Evaluation results for {task}: \n" + format_results_table(results)
    if per_category_ap and len(per_category_ap) > 1:
        text += "\n" + f"Per-category {task} AP: \n" + format_per_category_table(per_category_ap)
    return text


def copypaste_lines(results: Mapping[str, Mapping[str, float]]) -> list[str]:
    """``print_csv_format``: per task, names and values (4 decimals) of the metrics without a "-" in their name.

    Only the COCO tasks (``bbox``, ``segm``) are printed; other entries of our result dict (``operating_point``) are
    not part of detectron2's output.
    """
    lines = []
    for task in ("bbox", "segm"):
        if task not in results:
            continue
        important = [(k, v) for k, v in results[task].items() if "-" not in k]
        lines.append(f"copypaste: Task: {task}")
        lines.append("copypaste: " + ",".join(k for k, _ in important))
        lines.append("copypaste: " + ",".join(f"{v:.4f}" for _, v in important))
    return lines


def _pipe_table(headers: list[str], rows: list[list], *, align: str) -> str:
    """tabulate's ``pipe`` format with ``floatfmt=".3f"``, ``missingval=""``, one alignment for every column."""
    cells = [["" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max([len(h) + 2] + [len(row[c]) for row in cells]) for c, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        padded = [f"{v:^{w}}" if align == "center" else f"{v:<{w}}" for v, w in zip(values, widths, strict=True)]
        return "| " + " | ".join(padded) + " |"

    marks = [(":" + "-" * w + ":") if align == "center" else (":" + "-" * (w + 1)) for w in widths]
    return "\n".join([line(headers), "|" + "|".join(marks) + "|", *(line(row) for row in cells)])
