"""Pictures a person reads at a glance: detection overlays, training curves and precision-recall curves.

Why this exists: numbers in ``predictions.json`` and ``metrics.json`` say whether a model is good; a picture says
why not (a mask that leaks into the body wall, a loss that stopped falling, an AP lost at high IoU). Overlays are
drawn with Pillow alone, so ``segmentation.predict`` needs nothing extra; the plots use matplotlib (the ``plots``
extra), imported only when a plot is made.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LOSS_KEYS = ("total_loss", "loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc")

# Distinct, colour-blind friendly instance colours (Okabe-Ito), cycled by detection rank.
PALETTE = [(230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0), (204, 121, 167)]


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """The pixels of a bool ``(H, W)`` mask that have a 4-neighbour outside it (image borders count as outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def draw_overlay(
    image_rgb: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    masks: np.ndarray,
    class_names: Sequence[str],
    alpha: float = 0.4,
) -> Image.Image:
    """Draw detections on an image: mask fill with ``alpha``, mask outline, box, and "<class> <score>" text.

    Args:
        image_rgb: uint8 ``(H, W, 3)`` RGB (or ``(H, W)`` gray) image.
        boxes: ``(N, 4)`` xyxy in image pixels.
        scores: ``(N,)``; labels: ``(N,)`` model labels 1..K, named by ``class_names[label - 1]``.
        masks: bool ``(N, H, W)``.
        class_names: one name per foreground class.
        alpha: opacity of the mask fill.

    Returns:
        The RGB overlay; instance ``i`` is drawn in ``PALETTE[i % len(PALETTE)]``, highest score on top.
    """
    rgb = np.repeat(image_rgb[:, :, None], 3, axis=2) if image_rgb.ndim == 2 else image_rgb
    canvas = rgb.astype(np.float32)
    order = np.argsort(-np.asarray(scores), kind="stable")[::-1]  # lowest score first, so the best ends on top
    for i in order:
        color = np.array(PALETTE[i % len(PALETTE)], dtype=np.float32)
        mask = masks[i].astype(bool)
        canvas[mask] = (1 - alpha) * canvas[mask] + alpha * color
        canvas[mask_outline(mask)] = color
    overlay = Image.fromarray(np.rint(canvas).astype(np.uint8))
    draw = ImageDraw.Draw(overlay)
    font = ImageFont.load_default(size=max(10, overlay.height // 40))
    for i in order:
        color = PALETTE[i % len(PALETTE)]
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        draw.rectangle((x0, y0, x1, y1), outline=color, width=max(1, overlay.height // 256))
        text = f"{class_names[int(labels[i]) - 1]} {float(scores[i]):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        text_y = y0 - (bottom - top) - 4 if y0 - (bottom - top) - 4 >= 0 else y0
        draw.rectangle((x0, text_y, x0 + right - left + 4, text_y + bottom - top + 4), fill=color)
        draw.text((x0 + 2 - left, text_y + 2 - top), text, fill=(0, 0, 0), font=font)
    return overlay


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend, or an ImportError that names the extra to install."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("plots need matplotlib: pip install 'segmentation[plots]' (or pip install matplotlib)") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics_json(path: str | Path) -> tuple[list[dict[str, float]], dict[int, dict[str, float]]]:
    """detectron2's ``metrics.json`` -> (training lines in file order, evaluation values by iteration).

    A line with any ``*/AP*`` key is an evaluation line; repeated evaluations at one iteration are merged (the last
    value of a key wins), which is also what a resumed run's duplicate lines need.
    """
    training: list[dict[str, float]] = []
    evaluations: dict[int, dict[str, float]] = {}
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if any("/AP" in key for key in record):
            evaluations.setdefault(int(record["iteration"]), {}).update(record)
        else:
            training.append(record)
    return training, evaluations


def plot_training_curves(metrics_json: str | Path, out_png: str | Path) -> Path:
    """Losses (log scale), learning rate and AP against the iteration, as one PNG of three panels.

    The AP panel shows ``bbox/AP`` and ``segm/AP`` of every evaluation (and the ``test/`` values as open markers).
    """
    plt = _pyplot()
    training, evaluations = read_metrics_json(metrics_json)
    fig, (ax_loss, ax_lr, ax_ap) = plt.subplots(1, 3, figsize=(12, 3.4), dpi=80)
    for key in LOSS_KEYS:
        points = [(r["iteration"], r[key]) for r in training if key in r and r[key] == r[key]]  # NaN-free
        if points:
            x, y = zip(*points, strict=True)
            ax_loss.plot(x, y, label=key, linewidth=2.0 if key == "total_loss" else 1.2)
    ax_loss.set(title="losses (20-iteration medians)", xlabel="iteration", yscale="log")
    ax_loss.legend(fontsize=7)
    lr_points = [(r["iteration"], r["lr"]) for r in training if "lr" in r]
    if lr_points:
        ax_lr.plot(*zip(*lr_points, strict=True), color="tab:purple")
    ax_lr.set(title="learning rate", xlabel="iteration")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    steps = sorted(evaluations)
    for prefix, style in (("", "o-"), ("test/", "s--")):
        for task, color in (("bbox", "tab:blue"), ("segm", "tab:orange")):
            key = f"{prefix}{task}/AP"
            points = [(step, evaluations[step][key]) for step in steps if key in evaluations[step]]
            if points:
                fill = "none" if prefix else color
                x, y = zip(*points, strict=True)
                ax_ap.plot(x, y, style, color=color, markerfacecolor=fill, label=f"{key} {y[-1]:.1f}")
    ax_ap.set(title="COCO AP (%)", xlabel="iteration", ylim=(0, 100))
    if steps:
        ax_ap.set_xlim(0, max(steps) * 1.05)
        ax_ap.legend(fontsize=7, loc="lower right")
    for ax in (ax_loss, ax_lr, ax_ap):
        ax.grid(alpha=0.3)
    return _save(fig, out_png)


def precision_recall(predictions_json: str | Path, ground_truth_json: str | Path) -> dict[str, dict[float, Any]]:
    """COCOeval precision-recall curves at IoU 0.5 and 0.75, all areas, 100 detections, averaged over classes.

    Returns:
        ``{task: {iou: (recall thresholds, precision)}}`` for task ``bbox`` and ``segm``. As in COCOeval, precision
        is 0 at recalls the detections do not reach; classes without ground truth (COCOeval's -1) are left out.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = json.loads(Path(predictions_json).read_text())
    if not results:
        raise ValueError(f"{predictions_json} holds no detections; there is no precision-recall curve to draw")
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its progress
        ground_truth = COCO(str(ground_truth_json))
        detections = ground_truth.loadRes(results)
        curves: dict[str, dict[float, Any]] = {}
        for task in ("bbox", "segm"):
            evaluator = COCOeval(ground_truth, detections, task)
            evaluator.evaluate()
            evaluator.accumulate()
            params = evaluator.params
            curves[task] = {}
            for iou in (0.5, 0.75):
                t = int(np.argmin(np.abs(params.iouThrs - iou)))
                precision = evaluator.eval["precision"][t, :, :, params.areaRngLbl.index("all"), -1]  # (R, K)
                precision = np.where(precision < 0, np.nan, precision)
                curves[task][iou] = (params.recThrs, np.nanmean(precision, axis=1))
    return curves


def plot_precision_recall(predictions_json: str | Path, ground_truth_json: str | Path, out_png: str | Path) -> Path:
    """The AP summary figure: bbox and segm precision-recall curves at IoU 0.5 and 0.75, AP in the legend.

    The legend's AP is COCO's: the mean precision over the 101 recall thresholds.
    """
    plt = _pyplot()
    curves = precision_recall(predictions_json, ground_truth_json)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6), dpi=80, sharey=True)
    for ax, (task, by_iou) in zip(axes, curves.items(), strict=True):
        for iou, (recall, precision) in by_iou.items():
            ap = 100 * float(np.nanmean(precision))
            ax.plot(recall, precision, label=f"IoU {iou:.2f}: AP {ap:.1f}")
        ax.set(title=f"{task} precision-recall", xlabel="recall", xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    axes[0].set_ylabel("precision")
    return _save(fig, out_png)


def _save(fig: Any, out_png: str | Path) -> Path:
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out_png)
    _pyplot().close(fig)
    return out_png
