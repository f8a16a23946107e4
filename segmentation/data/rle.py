"""COCO's encodings in one place: run-length encoded masks and the json files that hold them.

Every module that writes, measures or validates a COCO mask goes through here (the phantom, ``volumes_to_coco``,
the json loader, the results writer, evaluation), so there is one encoder, one RLE validator, one way to write a
dataset json and one set of pycocotools workarounds. pycocotools 2.0.11 under numpy 2 overflows in ``mask.area`` as
soon as one call gets 256 or more RLEs (it sizes its output from a uint8), so ``area`` measures in chunks that
pycocotools handles; and it decodes a wrong-sized or corrupt RLE without complaint, reading past its buffer, so
``rle_problem`` checks an RLE from a json before anything decodes it.
"""

from __future__ import annotations

import json
import numbers
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import torch
from torch import Tensor

# The largest number of RLEs pycocotools 2.0.11's area() takes in one call under numpy 2.
_AREA_CHUNK = 255


def encode(masks: Tensor | np.ndarray) -> list[dict]:
    """Bool ``(N, H, W)`` masks -> compressed RLEs ``{"size": [H, W], "counts": bytes}``, one per mask.

    The same bytes as pycocotools' (and detectron2's) ``mask_util.encode`` of each mask in Fortran order, 3x faster:
    pycocotools needs the whole ``(H, W, N)`` stack column-major, and transposing a stack of full-size masks is most
    of the cost of encoding it. A detection covers a small part of its image, so each mask's run boundaries are
    found in its bounding crop only (rows and columns that hold a pixel) and pycocotools compresses those counts.
    """
    if isinstance(masks, Tensor):
        if masks.dtype not in (torch.bool, torch.uint8):
            raise TypeError(f"masks must be bool (or uint8 0/1), got {masks.dtype}; threshold probabilities first")
        masks = masks.detach().cpu().numpy()
    if masks.dtype not in (np.bool_, np.uint8):
        raise TypeError(f"masks must be bool (or uint8 0/1), got {masks.dtype}; threshold probabilities first")
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {tuple(masks.shape)}")
    n, height, width = masks.shape
    if n == 0:
        return []
    masks = masks.astype(bool, copy=False)
    rows, columns = masks.any(axis=2), masks.any(axis=1)
    counts = [_column_major_counts(masks[k], rows[k], columns[k]) for k in range(n)]
    return mask_utils.frPyObjects([{"size": [height, width], "counts": c} for c in counts], height, width)


def _column_major_counts(mask: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> list[int]:
    """Uncompressed COCO counts of one bool ``(H, W)`` mask, computed inside the crop its pixels span."""
    height, width = mask.shape
    ys, xs = np.flatnonzero(rows), np.flatnonzero(columns)
    if ys.size == 0:
        return [height * width]
    y0, y1, x0, x1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
    # One zero row above and below each cropped column, so every run starts and ends inside the padded crop.
    padded = np.zeros((x1 - x0, y1 - y0 + 2), dtype=np.int8)
    padded[:, 1:-1] = mask[y0:y1, x0:x1].T
    column, row = np.nonzero(np.diff(padded, axis=1))
    changes = (x0 + column) * height + (y0 + row)  # flat column-major positions where the value changes
    # A run crossing from the bottom of one column to the top of the next is one run, not an end and a start.
    joined = np.flatnonzero(changes[1:] == changes[:-1])
    changes = np.delete(changes, np.concatenate([joined, joined + 1]))
    changes = changes[changes < height * width]  # a run that ends with the image ends the counts
    return np.diff(changes, prepend=0, append=height * width).tolist()


def area(rles: Sequence[dict] | dict) -> np.ndarray | int:
    """pycocotools' ``mask.area`` for any number of RLEs (an int for a single RLE dict, as pycocotools returns)."""
    if isinstance(rles, dict):
        return int(mask_utils.area(rles))
    rles = list(rles)
    if not rles:
        return np.zeros(0, dtype=np.uint32)
    return np.concatenate([mask_utils.area(rles[i : i + _AREA_CHUNK]) for i in range(0, len(rles), _AREA_CHUNK)])


def to_bbox(rles: Sequence[dict]) -> np.ndarray:
    """pycocotools' XYWH boxes of RLEs, ``(N, 4)`` float64."""
    rles = list(rles)
    return mask_utils.toBbox(rles) if rles else np.zeros((0, 4))


def decode(rles: Sequence[dict], height: int, width: int) -> Tensor:
    """RLEs -> bool ``(N, H, W)``; a view of pycocotools' ``(H, W, N)`` Fortran array, so each mask stays Fortran
    ordered and re-encoding it needs no copy."""
    rles = list(rles)
    if not rles:
        return torch.zeros((0, height, width), dtype=torch.bool)
    return torch.from_numpy(mask_utils.decode(rles)).permute(2, 0, 1).view(torch.bool)


def uncompressed_counts(mask: np.ndarray) -> list[int]:
    """COCO uncompressed RLE counts of a bool ``(H, W)`` mask: column-major runs, starting with a run of zeros."""
    flat = mask.T.reshape(-1).astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    return [0, *counts] if flat[0] else counts


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as json so that readers see the old file or the complete new one, never a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def annotation_fields(masks: np.ndarray) -> list[dict[str, Any]]:
    """``segmentation`` (uncompressed RLE), ``area`` and ``bbox`` of each bool mask of an ``(N, H, W)`` stack.

    The shape of the user's data: uncompressed counts (``counts`` a list, column-major, first count = leading
    zeros), area and bbox from pycocotools. pycocotools encodes the whole stack at once (its Fortran ``(H, W, N)``
    view, no copy beyond one transpose).
    """
    n, height, width = masks.shape
    if n == 0:
        return []
    columns = np.ascontiguousarray(masks.transpose(0, 2, 1), dtype=np.uint8)  # (N, W, H): column-major per mask
    rles = mask_utils.encode(columns.transpose(2, 1, 0))  # (H, W, N) Fortran-ordered view
    return [
        {
            "segmentation": {"size": [height, width], "counts": uncompressed_counts(column_mask.T)},
            "area": int(mask_area),
            "bbox": [float(v) for v in box],
        }
        for column_mask, mask_area, box in zip(columns, area(rles), mask_utils.toBbox(rles), strict=True)
    ]


def image_entry(image_id: int, file_name: str, height: int, width: int, **extra: Any) -> dict[str, Any]:
    """One ``images`` entry of a written dataset json (``extra``: fields of our own, e.g. the source volume)."""
    return {"id": image_id, "width": width, "height": height, "file_name": file_name, "license": 0, **extra}


def write_dataset_json(
    path: Path, info: dict[str, Any], images: list[dict], annotations: list[dict], categories: list[dict]
) -> None:
    """A COCO instance json with the keys in the order of the user's files: info, licenses, images, annotations,
    categories."""
    coco = {"info": info, "licenses": [], "images": images, "annotations": annotations, "categories": categories}
    path.write_text(json.dumps(coco))


def rle_problem(segmentation: dict[str, Any], height: int, width: int) -> str | None:
    """What makes a json RLE unusable for an image of ``height`` x ``width`` (``"has ..."``), or None if it fits.

    Checked: a ``[height, width]`` size equal to the image's, counts that are non-negative integers (uncompressed)
    or a valid COCO RLE string (compressed), and counts summing to height*width.
    """
    size = segmentation.get("size")
    counts = segmentation.get("counts")
    if not isinstance(size, list) or len(size) != 2 or not all(_is_real(v) for v in size) or counts is None:
        return "has an RLE without a [height, width] 'size' and 'counts'"
    if size != [height, width]:
        return f"has an RLE of size {size} [height, width], but its image is {height}x{width}"
    if isinstance(counts, list):
        if not all(isinstance(c, numbers.Integral) and not isinstance(c, bool) and c >= 0 for c in counts):
            return "has RLE counts that are not non-negative integers"
    elif isinstance(counts, (str, bytes)):
        counts = compressed_counts(counts.encode() if isinstance(counts, str) else counts)
        if counts is None:
            return "has compressed RLE counts that are not a valid COCO RLE string"
    else:
        return f"has RLE counts of type {type(counts).__name__}"
    if sum(counts) != height * width:
        return f"has RLE counts summing to {sum(counts)}, expected height*width = {height * width}"
    return None


def compressed_counts(counts: bytes) -> list[int] | None:
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``), or None if it is invalid."""
    runs: list[int] = []
    value = shift = 0
    for byte in counts:
        c = byte - 48
        if not 0 <= c < 64:
            return None
        value |= (c & 0x1F) << shift
        shift += 5
        if c & 0x20:
            continue
        if c & 0x10:
            value -= 1 << shift
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            return None
        runs.append(value)
        value = shift = 0
    return None if shift else runs


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
