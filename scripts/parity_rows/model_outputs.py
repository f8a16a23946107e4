"""Rows about the model's outputs: tiny_lung's features, proposals, predictions and training losses with
detectron2's trained weights, and the full-size X101's features and RPN head on seeded weights."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import torch
from parity_references import (
    SIZE,
    TINY_LUNG,
    fpn_features,
    load_tiny_lung,
    load_x101,
    loss_batch,
    mapped_image,
    tiny_lung_split,
    x101_outputs,
)

from segmentation.data.mapper import map_for_inference
from segmentation.model.mask_rcnn import MaskRCNN

from .table import BOX_TOL, LOGIT_TOL, LOSS_TOL, SCORE_TOL, Row, fmt, std_row, worst_relative_to_std


def tiny_features(model: MaskRCNN, parity_dir: Path) -> Row:
    """FPN outputs p2-p6 of the first val image, relative to each level's std."""
    expected = parity_dir / "tiny_lung" / "expected"
    ref = np.load(expected / "features.npz")
    worst = max(
        worst_relative_to_std(level, ours, ref, full=level in ("p4", "p5", "p6"))
        for level, ours in fpn_features(model, mapped_image(expected, 0)).items()
    )
    return std_row("tiny_features", "tiny model FPN features p2-p6", worst)


def x101(parity_dir: Path) -> Row:
    """p2-p6 and the RPN head's objectness and deltas per level of the seeded X101, relative to each level's std."""
    model, report = load_x101(parity_dir)
    ref = np.load(parity_dir / "x101" / "expected" / "x101_outputs.npz")
    worst = max(worst_relative_to_std(name, ours, ref) for name, ours in x101_outputs(model, parity_dir).items())
    if report.skipped:
        worst = math.inf
    return std_row("x101_outputs", "full X101 FPN + RPN head outputs (seeded weights)", worst)


def proposals(model: MaskRCNN, parity_dir: Path) -> Row:
    """RPN proposals of the first 3 val images as sets: every box of each side has one of the other's within the
    reported px on every coordinate; logits compared sorted (two near-equal logits may swap order)."""
    expected = parity_dir / "tiny_lung" / "expected"
    ref = np.load(expected / "proposals.npz")
    worst_px = worst_logit = 0.0
    for i in range(3):
        image = mapped_image(expected, i)
        with torch.no_grad():
            image_list, _ = model.transform([image])
            boxes, logits, *_ = model.rpn.propose(image_list, model.backbone(image_list.tensors))
        ours, theirs = boxes[0].numpy(), ref[f"boxes_{i}"]
        sizes_ok = tuple(image.shape[1:]) == tuple(ref[f"resized_hw_{i}"]) and tuple(
            image_list.tensors.shape[2:]
        ) == tuple(ref[f"padded_hw_{i}"])
        if ours.shape != theirs.shape or not sizes_ok:
            worst_px = worst_logit = math.inf
            continue
        dist = np.abs(ours[:, None, :] - theirs[None, :, :]).max(axis=2)
        worst_px = max(worst_px, float(dist.min(axis=0).max()), float(dist.min(axis=1).max()))
        sorted_diff = np.abs(np.sort(logits[0].numpy()) - np.sort(ref[f"logits_{i}"])).max()
        worst_logit = max(worst_logit, float(sorted_diff))
    return Row(
        "proposals",
        "RPN proposals (3 images, as sets)",
        {"px": worst_px, "logit": worst_logit},
        {"px": BOX_TOL, "logit": LOGIT_TOL},
        f"{fmt(worst_px)} px, logits {fmt(worst_logit)}",
        f"{fmt(BOX_TOL)} px, logits {fmt(LOGIT_TOL)} (16 float32 steps at logit -10; detectron2 across thread "
        "counts: 6.7e-6)",
    )


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two xywh boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 1.0


def _pairs(ours: dict[str, torch.Tensor], theirs: list[dict]) -> tuple[list[tuple[float, float, float, bool]], int]:
    """Each of ``theirs`` paired with the unused detection of ours of the same class with the smallest box error:
    (box error in px, score difference, box IoU, masks equal) per pair, and how many found no detection of ours."""
    unused = set(range(len(ours["scores"])))
    pairs, unpaired = [], 0
    for det in theirs:
        candidates = []
        for k in unused:
            if int(ours["labels"][k]) != det["category_id"]:
                continue
            x0, y0, x1, y1 = ours["boxes"][k].tolist()
            xywh = np.array([x0, y0, x1 - x0, y1 - y0])
            candidates.append((float(np.abs(xywh - np.array(det["bbox"])).max()), k, xywh))
        if not candidates:
            unpaired += 1
            continue
        error, k, xywh = min(candidates)
        unused.remove(k)
        score = abs(float(ours["scores"][k]) - det["score"])
        iou = _box_iou(xywh, np.array(det["bbox"]))
        same_mask = np.array_equal(ours["masks"][k].numpy(), mask_util.decode(det["segmentation"]).astype(bool))
        pairs.append((error, score, iou, same_mask))
    return pairs, unpaired


def predictions(model: MaskRCNN, parity_dir: Path) -> Row:
    """Detections of the 24 val images (score >= 0.05), each of detectron2's paired with its own of ours.

    The test accepts a pairing when class, box (xywh, original pixels, every coordinate within 1e-3 px), score and
    mask all agree; to report how close they are, each detectron2 detection is paired with the unused detection of
    ours of the same class with the smallest box error, and that pair's box error, IoU, score difference and mask
    equality are recorded.
    """
    split = tiny_lung_split(parity_dir)
    reference = json.loads((parity_dir / "tiny_lung" / "expected" / "predictions.json").read_text())
    pairs, count_mismatches = [], 0
    for record in split.images:
        image, info = map_for_inference(record, SIZE, SIZE)
        with torch.no_grad():
            (ours,) = model([image], output_sizes=[(info["height"], info["width"])])
        theirs = [r for r in reference if r["image_id"] == info["image_id"] and r["score"] >= 0.05]
        count_mismatches += int((ours["scores"] >= 0.05).sum()) != len(theirs)
        image_pairs, unpaired = _pairs(ours, theirs)
        pairs += image_pairs
        count_mismatches += unpaired
    worst_px = max((pair[0] for pair in pairs), default=0.0)
    worst_score = max((pair[1] for pair in pairs), default=0.0)
    min_iou = min((pair[2] for pair in pairs), default=1.0)
    mask_mismatches = sum(not pair[3] for pair in pairs)
    n_ref = sum(r["score"] >= 0.05 for r in reference)
    masks = "masks identical" if mask_mismatches == 0 else f"{mask_mismatches} masks differ"
    counts = "" if count_mismatches == 0 else f", {count_mismatches} count mismatches"
    return Row(
        "predictions",
        f"predictions ({len(split.images)} images, {n_ref} detections), matched one to one",
        {
            "box_px": worst_px,
            "score": worst_score,
            "mask_mismatches": float(mask_mismatches),
            "count_mismatches": float(count_mismatches),
            "one_minus_min_box_iou": 1.0 - min_iou,
        },
        {"box_px": BOX_TOL, "score": SCORE_TOL, "mask_mismatches": 0.0, "count_mismatches": 0.0},
        f"box {fmt(worst_px)} px (IoU >= {min_iou:.7f}), score {fmt(worst_score)}, {masks}{counts}",
        f"box {fmt(BOX_TOL)} px / score {fmt(SCORE_TOL)} / masks identical",
    )


def training_losses(parity_dir: Path) -> Row:
    """Training-mode losses and event-storage scalars of the two fixed batches (every candidate sampled)."""
    cfg = dataclasses.replace(TINY_LUNG, rpn_batch_size_per_image=1_000_000, roi_batch_size_per_image=1_000_000)
    model = load_tiny_lung(parity_dir, cfg).train()
    references = json.loads((parity_dir / "tiny_lung" / "expected" / "losses.json").read_text())
    worst = 0.0
    for batch in ("batch_A", "batch_B"):
        reference = references[batch]
        images, targets = loss_batch(parity_dir, reference["file_names"])
        if [len(t["labels"]) for t in targets] != reference["gt_instances_after_mapper"]:
            worst = math.inf
        torch.manual_seed(0)
        with torch.no_grad():
            out = model(images, targets)
        for key, value in {**reference["losses"], **reference["event_storage_scalars"]}.items():
            worst = max(worst, abs(float(out[key]) - value) / abs(value) if value else abs(float(out[key])))
    return Row(
        "training_losses",
        "training losses of two fixed batches",
        {"relative": worst},
        {"relative": LOSS_TOL},
        f"{fmt(worst)} relative",
        f"{fmt(LOSS_TOL)} relative",
    )
