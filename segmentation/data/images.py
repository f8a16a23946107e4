"""Reading an image file the way the model sees it: uint8 BGR, as detectron2's ``read_image(path, "BGR")``.

8-bit files (JPEG, 8-bit PNG, palette, RGBA, ...) give detectron2's array bit for bit. CT slices exported as 16-bit
PNG/TIFF are where detectron2 goes wrong silently: its ``convert("RGB")`` clips every value above 255 to white, and
a value/257 scaling would map ``HU + 1024`` to the grey levels 0-5, a black image. Here such images (PIL modes
``I;16*``, ``I`` and ``F``) are read as ``HU + intensity_offset`` and windowed like CT volumes (the lung window by
default), so slices and volumes reach the model the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

LUNG_WINDOW = (-600.0, 1500.0)  # (center, width) in HU
_EXIF_ORIENTATION = 0x0112
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


@dataclass(frozen=True)
class CtWindow:
    """How a 16-bit (or 32-bit) slice becomes 8-bit: ``HU = value - intensity_offset``, then the HU window.

    Attributes:
        center: window centre in HU (lung: -600).
        width: window width in HU (lung: 1500).
        intensity_offset: what the file adds to HU (1024 in the usual CT export, 0 when the file holds HU).
    """

    center: float = LUNG_WINDOW[0]
    width: float = LUNG_WINDOW[1]
    intensity_offset: float = 1024.0


LUNG_CT = CtWindow()  # the default: lung window on the usual HU + 1024 export


def window_to_uint8(values: np.ndarray, center: float = LUNG_WINDOW[0], width: float = LUNG_WINDOW[1]) -> np.ndarray:
    """Map HU ``[center - width/2, center + width/2]`` linearly onto 0..255 (round half to even), clipping outside."""
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    low = center - width / 2.0
    scaled = (values.astype(np.float32) - np.float32(low)) * np.float32(255.0 / width)
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def window_slice(values: np.ndarray, window: CtWindow = LUNG_CT) -> np.ndarray:
    """A 2-D array of stored values (``HU + intensity_offset``) -> uint8 ``(H, W, 3)`` BGR, grey in each channel."""
    hu = values.astype(np.float32) - np.float32(window.intensity_offset)
    gray = window_to_uint8(hu, window.center, window.width)
    return np.repeat(gray[:, :, None], 3, axis=2)


def read_image_bgr(path: str, window: CtWindow = LUNG_CT) -> np.ndarray:
    """Decode an image file to uint8 ``(H, W, 3)`` BGR.

    The EXIF orientation is applied first (as detectron2's ``_apply_exif_orientation``), then the image is
    converted to RGB by PIL and the channels are flipped: bit-identical to detectron2 for every 8-bit mode
    (grayscale, palette, RGBA/LA with alpha dropped, ...). 16-bit and 32-bit images are windowed with ``window``.
    """
    with Image.open(path) as image:
        image = _apply_exif_orientation(image)
        if image.mode in HIGH_BIT_DEPTH_MODES:
            return window_slice(np.asarray(image), window)
        rgb = np.asarray(image.convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])


def grey_levels(path: str, window: CtWindow = LUNG_CT) -> tuple[int, int] | None:
    """``(distinct stored values, distinct values after windowing)`` of a 16/32-bit image; None for 8-bit files.

    A slice whose values collapse to a few grey levels (a wrong offset or window) trains on a blank image.
    """
    with Image.open(path) as image:
        if image.mode not in HIGH_BIT_DEPTH_MODES:
            return None
        values = np.asarray(image)
    return int(np.unique(values).size), int(np.unique(window_slice(values, window)[:, :, 0]).size)


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    """Rotate/flip as the EXIF orientation tag says; an unreadable EXIF block is ignored, as detectron2 does."""
    try:
        exif = image.getexif()
    except Exception:  # detectron2 issue 1885: some files carry EXIF that PIL cannot parse
        return image
    method = _EXIF_TRANSPOSE.get(exif.get(_EXIF_ORIENTATION))
    return image.transpose(method) if method is not None else image
