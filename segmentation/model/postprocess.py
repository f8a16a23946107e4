"""detectron2's ``detector_postprocess`` and ``paste_masks_in_image``: detections in the output frame.

torchvision rescales boxes without clipping and pastes masks on integer-rounded, expanded boxes with a "+1" size;
detectron2 scales and clips the float boxes, drops empty ones and pastes each ``M x M`` probability map with
``grid_sample`` over the float box (pixel centres), thresholding at 0.5. Mask IoU between the two pastes is only
0.86-0.99, so COCO mask AP needs detectron2's version.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

PASTE_PIXELS_PER_CHUNK = 1 << 22  # output pixels per grid_sample call: bounds the sampling grid's memory


def paste_masks_in_image(masks: Tensor, boxes: Tensor, image_hw: tuple[int, int], threshold: float = 0.5) -> Tensor:
    """Paste ``(N, 1, M, M)`` (or ``(N, M, M)``) probability maps into ``(N, h, w)`` bool masks.

    Each output pixel centre ``(x + 0.5, y + 0.5)`` is mapped into its box and the mask is sampled bilinearly
    (``grid_sample``, ``align_corners=False``, zero outside), then ``>= threshold``.
    """
    h, w = int(image_hw[0]), int(image_hw[1])
    if masks.dim() == 3:
        masks = masks[:, None]
    if torch.jit.is_tracing():  # one paste: a chunk loop would record the traced image's number of detections
        return _paste(masks, boxes, h, w, threshold)
    out = torch.zeros((masks.shape[0], h, w), dtype=torch.bool, device=masks.device)
    chunk = max(1, PASTE_PIXELS_PER_CHUNK // max(h * w, 1))
    for start in range(0, masks.shape[0], chunk):
        end = start + chunk
        out[start:end] = _paste(masks[start:end], boxes[start:end], h, w, threshold)
    return out


def _paste(masks: Tensor, boxes: Tensor, h: int, w: int, threshold: float) -> Tensor:
    """``(n, 1, M, M)`` maps sampled at the output pixel centres of their boxes, as ``(n, h, w)`` bool."""
    ys = torch.arange(h, device=boxes.device, dtype=torch.float32) + 0.5
    xs = torch.arange(w, device=boxes.device, dtype=torch.float32) + 0.5
    x0, y0, x1, y1 = boxes.float().split(1, dim=1)
    gy = (ys - y0) / (y1 - y0) * 2 - 1
    gx = (xs - x0) / (x1 - x0) * 2 - 1
    n = masks.shape[0]
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
