"""COCO's encodings in one place: run-length encoded masks and the json files that hold them.

Every module that writes or measures a COCO mask goes through here (the phantom, ``volumes_to_coco``, the results
writer, evaluation), so there is one encoder and one set of pycocotools workarounds. pycocotools 2.0.11 under
numpy 2 overflows in ``mask.area`` as soon as one call gets 256 or more RLEs (it sizes its output from a uint8),
so ``area`` measures in chunks that pycocotools handles.
"""

from __future__ import annotations

import json
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

    Same bytes as detectron2's ``mask_util.encode(np.array(m[:, :, None], order="F", dtype="uint8"))``; the whole
    stack is encoded in one call, which is what ``(H, W, N)`` Fortran order is for.
    """
    if isinstance(masks, np.ndarray):
        masks = torch.from_numpy(masks)
    if masks.dtype not in (torch.bool, torch.uint8):
        raise TypeError(f"masks must be bool (or uint8 0/1), got {masks.dtype}; threshold probabilities first")
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {tuple(masks.shape)}")
    if masks.shape[0] == 0:
        return []
    # (N, W, H) C-contiguous is (H, W, N) Fortran-contiguous: one copy, no further temporary of the whole stack
    # (big temporaries fragment the host heap when many images are encoded in a row)
    stack = masks.detach().transpose(1, 2).to(device="cpu", dtype=torch.uint8, memory_format=torch.contiguous_format)
    return mask_utils.encode(stack.contiguous().numpy().transpose(2, 1, 0))


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
