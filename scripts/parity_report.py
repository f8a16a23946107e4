"""Recompute the README's "How close we are to detectron2" table from detectron2's reference outputs.

The worst-observed column used to be read off the tests by hand, so it could drift from what the code does. This
script measures every row against ``../shared/parity`` (detectron2's own outputs, see its README.md) with the same
project code and the same comparisons as the tests in ``tests/parity``, ``tests/test_evaluate.py``,
``tests/data/test_mapper.py`` and ``tests/training``, and prints the markdown table
``| comparison | worst observed | tolerance |``. The tolerance column is what those tests enforce;
``tests/test_parity_report.py`` runs this script and fails when a row is missing or out of tolerance.

    python scripts/parity_report.py [--parity-dir ../shared/parity] [--json numbers.json] [--threads 2]

On 2 CPU cores it takes about a minute; the slowest row is the full-size X101 (431 MB of seeded weights, one
512x512 forward pass).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import json
import math
import pickle
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as ``python scripts/parity_report.py`` from a checkout
    sys.path.insert(0, str(REPO))

from segmentation.checkpoints.loading import load_weights  # noqa: E402
from segmentation.checkpoints.names import detectron2_names_to_ours  # noqa: E402
from segmentation.data.augmentation import ImageTransform, resized_shape  # noqa: E402
from segmentation.data.coco import load_coco_json  # noqa: E402
from segmentation.data.images import read_image_bgr  # noqa: E402
from segmentation.data.mapper import map_for_inference, map_for_training  # noqa: E402
from segmentation.evaluate import main as evaluate_main  # noqa: E402
from segmentation.evaluation.coco_evaluator import evaluate_results_file  # noqa: E402
from segmentation.model.config import MaskRCNNConfig  # noqa: E402
from segmentation.model.mask_rcnn import MaskRCNN, build_mask_rcnn  # noqa: E402
from segmentation.training.clipping import GradientClipping, clip_each_tensor  # noqa: E402
from segmentation.training.optim import build_optimizer, parameter_groups  # noqa: E402
from segmentation.training.schedule import Schedule, lr_multiplier  # noqa: E402

DEFAULT_PARITY_DIR = REPO.parent / "shared" / "parity"

# The tolerances the tests enforce (tests/test_parity_report.py checks they are the tests' own constants).
FEATURE_TOL = 1e-5  # x level std: tests/parity/test_tiny_lung_model.py and test_x101.py
BOX_TOL = 1e-3  # px: proposals and predictions
SCORE_TOL = 1e-5
LOGIT_TOL = 3e-5
LOSS_TOL = 1e-5  # relative
CLIP_RTOL = 1e-7  # tests/training/test_optim.py

TINY_LUNG = MaskRCNNConfig(
    num_classes=1,
    depth=50,
    num_groups=4,
    width_per_group=4,
    res2_out_channels=64,
    stride_in_1x1=False,
    norm="FrozenBN",
    freeze_at=0,
    fpn_out_channels=64,
    box_head_fc_dim=256,
    mask_head_conv_dim=64,
    roi_batch_size_per_image=128,
    pixel_std=(57.375, 57.12, 58.395),
)
X101 = MaskRCNNConfig(num_classes=80, depth=101, num_groups=32, width_per_group=8, pixel_std=(57.375, 57.12, 58.395))
SIZE = 512
LEVELS = {"p2": "0", "p3": "1", "p4": "2", "p5": "3", "p6": "pool"}
SCHEDULES = ("seed_recipe_multistep", "multistep_constant_warmup", "cosine_linear_warmup", "cosine_base_lr_end")
PARAM_GROUP_CONFIGS = ("defaults_bn", "bias_factor2_bias_wd0_norm_wd0_bn", "norm_wd_1e-5_bn_fpn_bn")
CLIPPINGS = ("value_0.1", "norm_1.0", "norm_inf_0.5")


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


def _fmt(value: float) -> str:
    """Two significant digits as the README writes them (``5.4e-6``, ``1e-3``), ``0`` for an exact match."""
    if value == 0 or math.isinf(value):
        return str(value if value else 0)
    if abs(value) >= 0.01:
        return f"{value:.2g}"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def _tiny_model(parity_dir: Path, cfg: MaskRCNNConfig = TINY_LUNG) -> MaskRCNN:
    model = build_mask_rcnn(cfg)
    load_weights(model, parity_dir / "tiny_lung" / "model_final.pkl")
    return model


def _mapped_image(expected: Path, i: int) -> torch.Tensor:
    gray = np.load(expected / "mapped_inputs.npz")[f"image_{i}"]
    return torch.from_numpy(np.stack([gray] * 3))


def mapped_inputs(parity_dir: Path) -> Row:
    """Decoded BGR bytes (md5) and resized sizes of the 24 val slices, and the 3 recorded mapped images in full."""
    root = parity_dir / "tiny_lung"
    expected = json.loads((root / "expected" / "inputs.json").read_text())["val_images_in_detectron2_order"]
    split = load_coco_json(root / "dataset" / "coco_val_lung.json", root / "dataset" / "val")
    mismatches = int([r.image_id for r in split.images] != [e["id"] for e in expected])
    for record, exp in zip(split.images, expected, strict=True):
        decoded = read_image_bgr(record.file_name)
        mismatches += hashlib.md5(decoded.tobytes()).hexdigest() != exp["md5_decoded_bgr_uint8"]
        image, info = map_for_inference(record, SIZE, SIZE)
        mismatches += list(image.shape[1:]) != exp["resized_hw"]
        mismatches += (info["height"], info["width"]) != (exp["height"], exp["width"])
    mapped = np.load(root / "expected" / "mapped_inputs.npz")
    by_name = {Path(r.file_name).name: r for r in split.images}
    for i in range(3):
        image, _ = map_for_inference(by_name[str(mapped[f"file_name_{i}"])], SIZE, SIZE)
        mismatches += sum(not np.array_equal(image[c].numpy(), mapped[f"image_{i}"]) for c in range(3))
    return Row(
        "mapped_inputs",
        f"mapped input images ({len(expected)} val slices, incl. non-square)",
        {"mismatches": float(mismatches)},
        {"mismatches": 0.0},
        "identical bytes" if mismatches == 0 else f"{mismatches} mismatches",
        "identical",
    )


def _worst_relative_to_std(name: str, ours: np.ndarray, ref: Any, *, full: bool = False) -> float:
    """The test's checks of one level (64 recorded positions, mean, std, and the whole map when recorded), as the
    largest difference divided by the level's std."""
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


def tiny_features(model: MaskRCNN, parity_dir: Path) -> Row:
    """FPN outputs p2-p6 of the first val image, relative to each level's std."""
    expected = parity_dir / "tiny_lung" / "expected"
    ref = np.load(expected / "features.npz")
    with torch.no_grad():
        image_list, _ = model.transform([_mapped_image(expected, 0)])
        features = model.backbone(image_list.tensors)
    worst = max(
        _worst_relative_to_std(level, features[name][0].numpy(), ref, full=level in ("p4", "p5", "p6"))
        for level, name in LEVELS.items()
    )
    return Row(
        "tiny_features",
        "tiny model FPN features p2-p6",
        {"x_level_std": worst},
        {"x_level_std": FEATURE_TOL},
        f"{_fmt(worst)} x level std",
        f"{_fmt(FEATURE_TOL)} x std",
    )


def _make_x101_weights(x101_dir: Path, out: Path) -> None:
    spec = importlib.util.spec_from_file_location("x101_make_weights", x101_dir / "make_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    weights = module.make(json.loads((x101_dir / "keys.json").read_text()))
    with out.open("wb") as f:
        pickle.dump({"model": weights, "__author__": "x101 parity fixture"}, f, protocol=4)


def x101_outputs(parity_dir: Path) -> Row:
    """p2-p6 and the RPN head's objectness and deltas per level of the seeded X101, relative to each level's std."""
    x101_dir = parity_dir / "x101"
    model = build_mask_rcnn(X101).eval()
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "x101_random.pkl"
        _make_x101_weights(x101_dir, weights)
        skipped = load_weights(model, weights).skipped
    rgb = np.asarray(Image.open(x101_dir / "input.png").convert("RGB"))
    image = torch.from_numpy(np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1)))
    ref = np.load(x101_dir / "expected" / "x101_outputs.npz")
    names = list(LEVELS.values())
    with torch.no_grad():
        image_list, _ = model.transform([image])
        features = model.backbone(image_list.tensors)
        logits, deltas = model.rpn.head([features[name] for name in names])
    worst = 0.0
    for level, name in enumerate(names, start=2):
        worst = max(
            worst,
            _worst_relative_to_std(f"p{level}", features[name][0].numpy(), ref),
            _worst_relative_to_std(f"objectness_p{level}", logits[level - 2][0].numpy(), ref),
            _worst_relative_to_std(f"deltas_p{level}", deltas[level - 2][0].numpy(), ref),
        )
    if skipped:
        worst = math.inf
    return Row(
        "x101_outputs",
        "full X101 FPN + RPN head outputs (seeded weights)",
        {"x_level_std": worst},
        {"x_level_std": FEATURE_TOL},
        f"{_fmt(worst)} x level std",
        f"{_fmt(FEATURE_TOL)} x std",
    )


def proposals(model: MaskRCNN, parity_dir: Path) -> Row:
    """RPN proposals of the first 3 val images as sets: every box of each side has one of the other's within the
    reported px on every coordinate; logits compared sorted (two near-equal logits may swap order)."""
    expected = parity_dir / "tiny_lung" / "expected"
    ref = np.load(expected / "proposals.npz")
    worst_px = worst_logit = 0.0
    for i in range(3):
        image = _mapped_image(expected, i)
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
        f"{_fmt(worst_px)} px, logits {_fmt(worst_logit)}",
        f"{_fmt(BOX_TOL)} px, logits {_fmt(LOGIT_TOL)} (16 float32 steps at logit -10; detectron2 across thread "
        "counts: 6.7e-6)",
    )


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two xywh boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 1.0


def predictions(model: MaskRCNN, parity_dir: Path) -> Row:
    """Detections of the 24 val images (score >= 0.05), each of detectron2's paired with its own of ours.

    The test accepts a pairing when class, box (xywh, original pixels, every coordinate within 1e-3 px), score and
    mask all agree; to report how close they are, each detectron2 detection is paired with the unused detection of
    ours of the same class with the smallest box error, and that pair's box error, IoU, score difference and mask
    equality are recorded.
    """
    dataset = parity_dir / "tiny_lung" / "dataset"
    split = load_coco_json(dataset / "coco_val_lung.json", dataset / "val")
    reference = json.loads((parity_dir / "tiny_lung" / "expected" / "predictions.json").read_text())
    worst_px = worst_score = 0.0
    min_iou = 1.0
    count_mismatches = mask_mismatches = paired = 0
    for record in split.images:
        image, info = map_for_inference(record, SIZE, SIZE)
        with torch.no_grad():
            (ours,) = model([image], output_sizes=[(info["height"], info["width"])])
        theirs = [r for r in reference if r["image_id"] == info["image_id"] and r["score"] >= 0.05]
        count_mismatches += int((ours["scores"] >= 0.05).sum()) != len(theirs)
        unused = set(range(len(ours["scores"])))
        for det in theirs:
            candidates = []
            for k in unused:
                if int(ours["labels"][k]) != det["category_id"]:
                    continue
                x0, y0, x1, y1 = ours["boxes"][k].tolist()
                xywh = np.array([x0, y0, x1 - x0, y1 - y0])
                candidates.append((float(np.abs(xywh - np.array(det["bbox"])).max()), k, xywh))
            if not candidates:
                count_mismatches += 1
                continue
            error, k, xywh = min(candidates)
            unused.remove(k)
            paired += 1
            worst_px = max(worst_px, error)
            worst_score = max(worst_score, abs(float(ours["scores"][k]) - det["score"]))
            min_iou = min(min_iou, _box_iou(xywh, np.array(det["bbox"])))
            ref_mask = mask_util.decode(det["segmentation"]).astype(bool)
            mask_mismatches += not np.array_equal(ours["masks"][k].numpy(), ref_mask)
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
        f"box {_fmt(worst_px)} px (IoU >= {min_iou:.7f}), score {_fmt(worst_score)}, {masks}{counts}",
        f"box {_fmt(BOX_TOL)} px / score {_fmt(SCORE_TOL)} / masks identical",
    )


def training_losses(parity_dir: Path) -> Row:
    """Training-mode losses and event-storage scalars of the two fixed batches (every candidate sampled)."""
    cfg = dataclasses.replace(TINY_LUNG, rpn_batch_size_per_image=1_000_000, roi_batch_size_per_image=1_000_000)
    model = _tiny_model(parity_dir, cfg).train()
    references = json.loads((parity_dir / "tiny_lung" / "expected" / "losses.json").read_text())
    dataset = parity_dir / "tiny_lung" / "dataset"
    split = load_coco_json(dataset / "coco_train_lossbatch_lung.json", dataset / "train")
    by_name = {Path(r.file_name).name: r for r in split.images}
    worst = 0.0
    for batch in ("batch_A", "batch_B"):
        reference = references[batch]
        images, targets = [], []
        for name in reference["file_names"]:
            record = by_name[name]
            resize = ImageTransform.resize(record.height, record.width, SIZE, SIZE)
            image, target = map_for_training(record, resize, split.categories)
            images.append(image)
            targets.append(target)
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
        f"{_fmt(worst)} relative",
        f"{_fmt(LOSS_TOL)} relative",
    )


def _stats_diff(evaluation: Any, expected: dict) -> float:
    """Largest |ours - detectron2| over the 12 COCOeval stats of bbox and segm, in percent."""
    return max(
        abs(100 * ours - theirs)
        for task in ("bbox", "segm")
        for ours, theirs in zip(evaluation.stats[task], expected["stats12_percent"][task], strict=True)
    )


def _returned_diff(ours: dict, theirs: dict) -> float:
    """Largest |ours - detectron2| over the AP numbers COCOEvaluator returns (both tasks)."""
    if set(ours) != set(theirs) or any(set(ours[t]) != set(theirs[t]) for t in theirs):
        return math.inf
    return max(abs(ours[t][name] - theirs[t][name]) for t in theirs for name in theirs[t])


def coco_ap(parity_dir: Path) -> tuple[Row, Row]:
    """``python -m segmentation.evaluate`` on detectron2's config dump and checkpoint, and on its predictions file."""
    tiny = parity_dir / "tiny_lung"
    gt = tiny / "dataset" / "coco_val_lung.json"
    expected = json.loads((tiny / "expected" / "coco_eval.json").read_text())
    # segmentation.evaluate prints detectron2's tables to stdout: keep stdout for the report's table.
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        ours_dir, theirs_dir = Path(tmp) / "ours", Path(tmp) / "theirs"
        evaluate_main(["--config", str(tiny / "config.yaml"), "--model.weights", str(tiny / "model_final.pkl"),
                       "--data.val_json", str(gt), "--data.val_images", str(tiny / "dataset" / "val"),
                       "--output_dir", str(ours_dir), "--data.num_workers=0",
                       "--trainer.enable_progress_bar=false"])  # fmt: skip
        ours = max(
            _returned_diff(json.loads((ours_dir / "eval.json").read_text()), expected["returned_by_COCOEvaluator"]),
            _stats_diff(evaluate_results_file(ours_dir / "predictions.json", gt), expected),
        )
        evaluate_main(["--predictions", str(tiny / "expected" / "predictions.json"), "--data.val_json", str(gt),
                       "--output_dir", str(theirs_dir)])  # fmt: skip
        theirs = max(
            _returned_diff(json.loads((theirs_dir / "eval.json").read_text()), expected["returned_by_COCOEvaluator"]),
            _stats_diff(evaluate_results_file(tiny / "expected" / "predictions.json", gt), expected),
        )

    def text(diff: float) -> str:
        return "identical, all 24 numbers" if diff == 0 else f"max {_fmt(diff)} AP points off"

    return (
        Row("coco_ap", "COCO AP on the val split (12 bbox + 12 segm)", {"ap_points": ours}, {"ap_points": 0.0},
            text(ours), "exact"),
        Row("detectron2_predictions_ap", "AP of detectron2's own predictions file", {"ap_points": theirs},
            {"ap_points": 0.0}, text(theirs), "exact"),
    )  # fmt: skip


_SCHEDULE_KEYS = {
    "SOLVER.LR_SCHEDULER_NAME": "name",
    "SOLVER.WARMUP_METHOD": "warmup_method",
    "SOLVER.WARMUP_ITERS": "warmup_iters",
    "SOLVER.WARMUP_FACTOR": "warmup_factor",
    "SOLVER.STEPS": "milestones",
    "SOLVER.GAMMA": "gamma",
    "SOLVER.BASE_LR_END": "base_lr_end",
}


def lr_schedules(parity_dir: Path) -> Row:
    """The learning rate of every iteration of detectron2's 4 recorded schedules (tests/training/test_schedule.py)."""
    references = json.loads((parity_dir / "solver_and_augmentation" / "lr_schedules.json").read_text())
    worst = 0.0
    for name in SCHEDULES:
        reference = references[name]
        overrides = reference["config_overrides"]
        settings = dict(zip(overrides[::2], overrides[1::2], strict=True))
        fields = {_SCHEDULE_KEYS[k]: v for k, v in settings.items() if k in _SCHEDULE_KEYS}
        if isinstance(fields.get("milestones"), str):  # detectron2's fixture records the tuple as text
            fields["milestones"] = [int(v) for v in fields["milestones"].strip("()").split(",")]
        base_lr, max_iter = settings["SOLVER.BASE_LR"], settings["SOLVER.MAX_ITER"]
        multiplier = lr_multiplier(Schedule(**fields), base_lr=base_lr, max_iter=max_iter)
        expected = reference["lr_at_iteration"]
        if len(expected) != max_iter:
            worst = math.inf
            continue
        worst = max(worst, max(abs(base_lr * multiplier(i) - lr) for i, lr in enumerate(expected)))
    return Row(
        "lr_schedules",
        f"learning rate of every iteration, {len(SCHEDULES)} schedules (`solver_and_augmentation/`)",
        {"max_abs_diff": worst},
        {"max_abs_diff": 0.0},
        "identical" if worst == 0 else f"max {_fmt(worst)} off",
        "exact",
    )


def param_groups(parity_dir: Path) -> Row:
    """lr and weight decay of every trainable parameter, 3 configs (tests/training/test_optim.py)."""
    references = json.loads((parity_dir / "solver_and_augmentation" / "param_groups.json").read_text())
    tiny_arch = dict(depth=50, num_groups=4, width_per_group=4, res2_out_channels=64, fpn_out_channels=64,
                     box_head_fc_dim=256, mask_head_conv_dim=64)  # fmt: skip
    mismatches = 0
    for name in PARAM_GROUP_CONFIGS:
        reference = references[name]
        overrides = reference["config_overrides"]
        settings = {
            re.sub(r"^(SOLVER|MODEL\.(RESNETS|BACKBONE))\.|^MODEL\.", "", k): v
            for k, v in dict(zip(overrides[::2], overrides[1::2], strict=True)).items()
        }
        arch = MaskRCNNConfig(
            **tiny_arch, norm=settings["NORM"], freeze_at=settings["FREEZE_AT"], fpn_norm=settings.get("FPN.NORM", "")
        )
        model = build_mask_rcnn(arch)
        defaults = reference["defaults"]
        sgd = functools.partial(
            torch.optim.SGD, lr=defaults["lr"], momentum=defaults["momentum"], weight_decay=defaults["weight_decay"]
        )
        groups = parameter_groups(
            model,
            bias_lr_factor=settings.get("BIAS_LR_FACTOR", 1.0),
            weight_decay_bias=settings.get("WEIGHT_DECAY_BIAS"),
            weight_decay_norm=settings.get("WEIGHT_DECAY_NORM", 0.0),
        )
        names = {id(p): n for n, p in model.named_parameters()}
        ours = {
            names[id(p)]: {"lr": group["lr"], "weight_decay": group["weight_decay"]}
            for group in build_optimizer(sgd, groups).param_groups
            for p in group["params"]
        }
        to_ours = detectron2_names_to_ours(list(reference["trainable"]))
        expected = {to_ours[n]: hyper for n, hyper in reference["trainable"].items()}
        mismatches += sum(ours.get(n) != hyper for n, hyper in expected.items()) + len(set(ours) - set(expected))
        frozen = set(detectron2_names_to_ours(reference["frozen"]).values()) if reference["frozen"] else set()
        mismatches += len(frozen ^ {n for n, p in model.named_parameters() if not p.requires_grad})
        mismatches += abs(len(ours) - sum(p.requires_grad for p in model.parameters()))
    return Row(
        "param_groups",
        f"parameter groups (lr, weight decay per parameter), {len(PARAM_GROUP_CONFIGS)} configs",
        {"mismatches": float(mismatches)},
        {"mismatches": 0.0},
        "identical" if mismatches == 0 else f"{mismatches} parameters differ",
        "exact",
    )


def augmentation(parity_dir: Path) -> Row:
    """Mapped image, masks and boxes under fixed resizes x flips, crops and a binding MAX_SIZE
    (tests/data/test_augmentation.py)."""
    dataset = parity_dir / "tiny_lung" / "dataset"
    split = load_coco_json(dataset / "coco_val_lung.json", dataset / "val")
    by_name = {Path(r.file_name).name: r for r in split.images}
    folder = parity_dir / "solver_and_augmentation"
    cases = [*json.loads((folder / "augmentation.json").read_text()).values()]
    cases += json.loads((folder / "augmentation_crop_maxsize_empty.json").read_text()).values()
    differing, worst_box = 0, 0.0
    for case in cases:
        record = by_name[case["file_name"]]
        crop = tuple(case["crop_xywh"]) if case.get("crop_xywh") else None
        h, w = (crop[3], crop[2]) if crop else (record.height, record.width)
        size = resized_shape(h, w, case["min_size"], case["max_size"])
        transform = ImageTransform(record.height, record.width, crop, *size, flip=case["flip"])
        image, target = map_for_training(record, transform, split.categories)
        image_md5 = hashlib.md5(np.ascontiguousarray(image.numpy()).tobytes()).hexdigest()
        mask_md5 = hashlib.md5(np.ascontiguousarray(target["masks"].numpy()).tobytes()).hexdigest()
        differing += (image_md5 != case["image_md5"]) + (mask_md5 != case["mask_md5"])
        expected = torch.tensor(case["gt_boxes"], dtype=torch.float32).reshape(-1, 4)
        if expected.shape != target["boxes"].shape:
            worst_box = math.inf
        elif len(expected):
            worst_box = max(worst_box, float((target["boxes"] - expected).abs().max()))
    return Row(
        "augmentation",
        f"training augmentation ({len(cases)} cases: resizes x flips, crops, MAX_SIZE, an empty slice)",
        {"differing_md5": float(differing), "box_px": worst_box},
        {"differing_md5": 0.0, "box_px": 1e-4},
        f"images and masks identical, boxes {worst_box:.1g} px" if differing == 0 else f"{differing} md5 differ",
        "identical / boxes 1e-4 px",
    )


def gradient_clipping(parity_dir: Path) -> Row:
    """Per-tensor clipping by value, L2 norm and inf norm, as the largest relative difference per element."""
    references = json.loads((parity_dir / "solver_and_augmentation" / "gradient_clipping.json").read_text())
    worst = 0.0
    for name in CLIPPINGS:
        reference = references[name]
        clip_type, clip_value, norm_type = reference["clip"]
        parameters = []
        for key, values in reference["grad_in"].items():
            parameter = torch.nn.Parameter(torch.zeros(reference["grad_shape"][key]))
            parameter.grad = torch.tensor(values).reshape(parameter.shape)
            parameters.append(parameter)
        clip_each_tensor(parameters, GradientClipping(clip_type, clip_value, float(norm_type)))
        for key, parameter in zip(reference["grad_in"], parameters, strict=True):
            expected = torch.tensor(reference["grad_out"][key]).reshape(parameter.shape)
            diff = (parameter.grad - expected).abs()
            # torch.testing.assert_close(rtol, atol=0) accepts |diff| <= rtol * |expected|
            ratio = torch.where(diff == 0, 0.0, diff / expected.abs())
            worst = max(worst, float(ratio.max()))
    return Row(
        "gradient_clipping",
        "per-tensor gradient clipping (value, L2 norm, inf norm)",
        {"relative": worst},
        {"relative": CLIP_RTOL},
        "identical" if worst == 0 else f"within {_fmt(worst)} relative",
        f"{_fmt(CLIP_RTOL)} relative",
    )


def measure(parity_dir: Path, *, threads: int = 2) -> list[Row]:
    """Every row of the table, in the README's order; ``threads`` as the parity tests set them."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rows = [mapped_inputs(parity_dir)]
        model = _tiny_model(parity_dir).eval()
        rows += [tiny_features(model, parity_dir), x101_outputs(parity_dir), proposals(model, parity_dir)]
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
