"""detectron2's ``detector_postprocess`` and ``paste_masks_in_image``: detections in the output frame.

torchvision rescales boxes without clipping and pastes masks on integer-rounded, expanded boxes with a "+1" size;
detectron2 scales and clips the float boxes, drops empty ones and pastes each ``M x M`` probability map with
``grid_sample`` over the float box (pixel centres), thresholding at 0.5. Mask IoU between the two pastes is only
0.86-0.99, so COCO mask AP needs detectron2's version.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def paste_masks_in_image(masks: Tensor, boxes: Tensor, image_hw: tuple[int, int], threshold: float = 0.5) -> Tensor:
    """Paste ``(N, 1, M, M)`` (or ``(N, M, M)``) probability maps into ``(N, h, w)`` bool masks.

    Each output pixel centre ``(x + 0.5, y + 0.5)`` is mapped into its box and the mask is sampled bilinearly
    (``grid_sample``, ``align_corners=False``, zero outside), then ``>= threshold``.

    Eagerly each mask is sampled only inside its box's window (:func:`_paste_window`), as detectron2's CPU path does;
    the rest of the image stays False. That equals sampling every pixel: see :func:`_paste_window` for why. A traced
    graph (ONNX export) samples every pixel of every mask in one call, since a loop would record the traced image's
    detections and windows.
    """
    h, w = int(image_hw[0]), int(image_hw[1])
    if masks.dim() == 3:
        masks = masks[:, None]
    if torch.jit.is_tracing():
        return _paste(masks, boxes, (0, h, 0, w), threshold)
    boxes = boxes.float()
    out = torch.zeros((masks.shape[0], h, w), dtype=torch.bool, device=masks.device)
    for i, box in enumerate(boxes.tolist()):
        top, bottom, left, right = window = _paste_window(box, h, w, threshold)
        if bottom > top and right > left:
            out[i, top:bottom, left:right] = _paste(masks[i : i + 1], boxes[i : i + 1], window, threshold)[0]
    return out


def _paste_window(box: list[float], h: int, w: int, threshold: float) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)``: the pixels where a mask pasted on ``box`` can reach ``threshold``.

    The window reaches one pixel past the box's outer integer bounds: ``floor(x0) - 1`` to ``ceil(x1) + 1`` (same
    for y), clipped to the image. A pixel left of it has its centre ``x + 0.5 <= floor(x0) - 1.5``, so more than one
    pixel left of the box. ``grid_sample`` maps it to mask column ``u = (x + 0.5 - x0) / (x1 - x0) * M - 0.5 <=
    -1.5 M / (x1 - x0) - 0.5 < -0.5``: column 0 gets weight ``u + 1 < 0.5``, the zero padding the rest, so with
    probabilities in [0, 1] the sample is below 0.5 (and ``u <= -1`` gives exactly 0). Right of the window, and above
    and below it, the same holds mirrored. Float rounding of ``u`` is about 1e-6 of the box's size, far below the
    ``1.5 M / (x1 - x0)`` to spare; without detectron2's extra pixel ``0.5 M / (x1 - x0)`` would still be spared.
    So for ``threshold >= 0.5`` (detectron2's) every pixel outside the window is False in a full paste too; a lower
    threshold gets the whole image.
    """
    if threshold < 0.5:
        return 0, h, 0, w
    x0, y0, x1, y1 = box
    left, top = max(math.floor(x0) - 1, 0), max(math.floor(y0) - 1, 0)
    right, bottom = min(math.ceil(x1) + 1, w), min(math.ceil(y1) + 1, h)
    return top, bottom, left, right


def _paste(masks: Tensor, boxes: Tensor, window: tuple[int, int, int, int], threshold: float) -> Tensor:
    """``(n, 1, M, M)`` maps sampled at the pixel centres of ``window`` (top, bottom, left, right), as bool."""
    top, bottom, left, right = window
    ys = torch.arange(top, bottom, device=boxes.device, dtype=torch.float32) + 0.5
    xs = torch.arange(left, right, device=boxes.device, dtype=torch.float32) + 0.5
    x0, y0, x1, y1 = boxes.float().split(1, dim=1)
    gy = (ys - y0) / (y1 - y0) * 2 - 1
    gx = (xs - x0) / (x1 - x0) * 2 - 1
    n, h, w = masks.shape[0], bottom - top, right - left
    grid = torch.stack([gx[:, None, :].expand(n, h, w), gy[:, :, None].expand(n, h, w)], dim=3)
    return F.grid_sample(masks.float(), grid, align_corners=False)[:, 0] >= threshold


def detector_postprocess(
    detections: dict[str, Tensor], input_hw: tuple[int, int], output_hw: tuple[int, int], mask_threshold: float = 0.5
) -> dict[str, Tensor]:
    """Rescale one image's detections from the model input frame to ``output_hw``.

    Args:
        detections: ``boxes`` xyxy in the input frame, ``scores``, ``labels`` and optionally ``masks``
            ``(N, 1, M, M)`` probabilities.
        input_hw: the (unpadded) size the model saw; output_hw: the size to report in (usually the original).
    Returns:
        ``boxes`` float32 scaled and clipped to ``output_hw`` (empty ones dropped), ``scores``, ``labels`` and
        ``masks`` bool ``(N, h, w)``.
    """
    out_h, out_w = int(output_hw[0]), int(output_hw[1])
    scale_x, scale_y = out_w / input_hw[1], out_h / input_hw[0]
    boxes = detections["boxes"].float().clone()
    boxes[:, 0::2] *= scale_x
    boxes[:, 1::2] *= scale_y
    boxes[:, 0::2] = boxes[:, 0::2].clamp(min=0, max=out_w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(min=0, max=out_h)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    result = {"boxes": boxes[keep], "scores": detections["scores"][keep], "labels": detections["labels"][keep]}
    if "masks" in detections:
        masks = detections["masks"][keep]
        result["masks"] = paste_masks_in_image(masks, result["boxes"], (out_h, out_w), mask_threshold)
    return result
