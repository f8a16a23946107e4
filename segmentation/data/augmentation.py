"""detectron2's training augmentations: ``RandomCrop``, ``ResizeShortestEdge`` and ``RandomFlip``, drawn per image.

Why this exists: a detectron2 config trains with multi-scale resizing, flips and crops drawn inside its mapper
(``detectron2/data/transforms/augmentation_impl.py``, ``transform.py``, fvcore's ``transform.py``). Reproducing the
training means the same deterministic geometry (crop boxes, ``int(x + 0.5)`` sizes, PIL resampling, flip arithmetic
on coordinates) and the same distributions for the draws. The draws here come from a generator seeded per sample of
the training stream (not from a worker's global RNG as in detectron2), so a resumed run, or a run with another
number of workers, draws exactly what the uninterrupted run drew.

An ``Augmentation`` is the configuration (detectron2's ``INPUT.*`` keys); ``Augmentation.draw`` picks one image's
``ImageTransform``; the transform then applies to the image, its masks and its box coordinates, in detectron2's
order: crop, resize, flip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from segmentation.errors import ConfigError

Sampling = Literal["choice", "range"]
Flip = Literal["none", "horizontal", "vertical"]
CropType = Literal["relative_range", "relative", "absolute", "absolute_range"]


def resized_shape(h: int, w: int, min_size: int, max_size: int) -> tuple[int, int]:
    """detectron2's ``ResizeShortestEdge.get_output_shape``: short side to ``min_size``, long side at most ``max_size``.

    Sizes are rounded with ``int(x + 0.5)`` (torchvision floors), so 310x400 (h x w) becomes 397x512.
    """
    size = min_size * 1.0
    scale = size / min(h, w)
    if h < w:
        new_h, new_w = size, scale * w
    else:
        new_h, new_w = scale * h, size
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h = new_h * scale
        new_w = new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_uint8(array: np.ndarray, new_h: int, new_w: int, resample: Image.Resampling) -> np.ndarray:
    """PIL resize of a uint8 ``(H, W)`` or ``(H, W, 3)`` array, as detectron2's ``ResizeTransform.apply_image``."""
    if array.shape[:2] == (new_h, new_w):
        return array
    return np.asarray(Image.fromarray(array).resize((new_w, new_h), resample))


@dataclass(frozen=True)
class ImageTransform:
    """One image's geometry: an optional crop of the original, a resize, an optional flip of the result.

    Attributes:
        height, width: the original image size.
        crop: ``(x0, y0, w, h)`` of detectron2's ``CropTransform``, or None.
        new_height, new_width: the size after the resize (of the cropped image).
        flip: ``"none"``, ``"horizontal"`` or ``"vertical"``.
    """

    height: int
    width: int
    crop: tuple[int, int, int, int] | None
    new_height: int
    new_width: int
    flip: Flip = "none"

    @classmethod
    def resize(cls, height: int, width: int, min_size: int, max_size: int) -> ImageTransform:
        """The deterministic test-time (and single-size training) transform: ResizeShortestEdge only."""
        return cls(height, width, None, *resized_shape(height, width, min_size, max_size))

    def apply_image(self, array: np.ndarray, resample: Image.Resampling = Image.Resampling.BILINEAR) -> np.ndarray:
        """Crop, resize (PIL, bilinear for images, nearest for masks) and flip a uint8 ``(H, W[, C])`` array."""
        if self.crop is not None:
            x0, y0, w, h = self.crop
            array = array[y0 : y0 + h, x0 : x0 + w]
        array = resize_uint8(np.ascontiguousarray(array), self.new_height, self.new_width, resample)
        if self.flip == "horizontal":
            array = np.flip(array, axis=1)
        elif self.flip == "vertical":
            array = np.flip(array, axis=0)
        return array

    def apply_mask(self, mask: np.ndarray) -> np.ndarray:
        """An instance mask, uint8 ``(H, W)`` at the original size -> bool at the output size."""
        return self.apply_image(mask, Image.Resampling.NEAREST).astype(bool)

    def apply_coords(self, xy: np.ndarray) -> np.ndarray:
        """Map ``(N, 2)`` x/y coordinates in place, with detectron2's arithmetic and the array's own dtype.

        An integer array stays integer (numpy's in-place assignment truncates the scaled values, as in detectron2).
        """
        height, width = self.height, self.width
        if self.crop is not None:
            x0, y0, width, height = self.crop
            xy[:, 0] -= x0
            xy[:, 1] -= y0
        xy[:, 0] = xy[:, 0] * (self.new_width * 1.0 / width)
        xy[:, 1] = xy[:, 1] * (self.new_height * 1.0 / height)
        if self.flip == "horizontal":
            xy[:, 0] = self.new_width - xy[:, 0]
        elif self.flip == "vertical":
            xy[:, 1] = self.new_height - xy[:, 1]
        return xy

    def apply_box(self, xyxy: np.ndarray) -> np.ndarray:
        """An XYXY box (float64, or int64 for an all-integer json box) -> the box around its mapped corners,
        clipped to the output image, as detectron2's ``transform_instance_annotations``."""
        corners = xyxy[None, [0, 1, 2, 1, 0, 3, 2, 3]].reshape(-1, 2)
        corners = self.apply_coords(corners)
        box = np.concatenate([corners.min(axis=0), corners.max(axis=0)]).clip(min=0)
        return np.minimum(box, [self.new_width, self.new_height, self.new_width, self.new_height])


@dataclass(frozen=True)
class Augmentation:
    """detectron2's training augmentation settings, and the draw of one image's transform.

    Attributes:
        min_sizes: INPUT.MIN_SIZE_TRAIN: sizes to choose from (``choice``), or ``(low, high)`` (``range``).
        max_size: INPUT.MAX_SIZE_TRAIN.
        sampling: INPUT.MIN_SIZE_TRAIN_SAMPLING.
        flip: INPUT.RANDOM_FLIP (applied with probability 0.5, as detectron2's ``RandomFlip``).
        crop_type: INPUT.CROP.TYPE when INPUT.CROP.ENABLED, else None.
        crop_size: INPUT.CROP.SIZE: ``(h, w)`` fractions for the relative types, pixels for the absolute ones.
    """

    min_sizes: tuple[int, ...] = (512,)
    max_size: int = 512
    sampling: Sampling = "choice"
    flip: Flip = "none"
    crop_type: CropType | None = None
    crop_size: tuple[float, float] = (0.9, 0.9)

    def __post_init__(self) -> None:
        if not self.min_sizes:
            raise ConfigError("min_size_train: give at least one size")
        if self.sampling == "range" and (len(self.min_sizes) != 2 or self.min_sizes[0] > self.min_sizes[1]):
            raise ConfigError(f"min_size_train {list(self.min_sizes)} with range sampling: give [low, high]")
        if self.crop_type in ("relative", "relative_range") and not all(0 < s <= 1 for s in self.crop_size):
            raise ConfigError(f"crop_size {list(self.crop_size)} for {self.crop_type} crops: fractions in (0, 1]")
        if self.crop_type == "absolute_range" and self.crop_size[0] > self.crop_size[1]:
            raise ConfigError(f"crop_size {list(self.crop_size)} for absolute_range crops: give [min, max]")

    def draw(self, height: int, width: int, rng: np.random.Generator) -> ImageTransform:
        """Draw crop, size and flip for an image of ``height x width``, in detectron2's order and distributions."""
        crop = self._draw_crop(height, width, rng) if self.crop_type is not None else None
        h, w = (crop[3], crop[2]) if crop is not None else (height, width)
        if self.sampling == "range":
            size = int(rng.integers(self.min_sizes[0], self.min_sizes[1] + 1))
        else:
            size = int(self.min_sizes[rng.integers(len(self.min_sizes))])
        flip: Flip = self.flip if self.flip != "none" and rng.random() < 0.5 else "none"
        return ImageTransform(height, width, crop, *resized_shape(h, w, size, self.max_size), flip=flip)

    def _draw_crop(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """detectron2's ``RandomCrop.get_crop_size`` then a uniform position (``get_transform``)."""
        size_h, size_w = self.crop_size
        if self.crop_type == "relative":
            crop_h, crop_w = int(h * size_h + 0.5), int(w * size_w + 0.5)
        elif self.crop_type == "relative_range":
            low = np.asarray(self.crop_size, dtype=np.float32)
            frac_h, frac_w = low + rng.random(2) * (1 - low)
            crop_h, crop_w = int(h * frac_h + 0.5), int(w * frac_w + 0.5)
        elif self.crop_type == "absolute":
            crop_h, crop_w = min(int(size_h), h), min(int(size_w), w)
        else:  # absolute_range
            low, high = int(size_h), int(size_w)
            crop_h = int(rng.integers(min(h, low), min(h, high) + 1))
            crop_w = int(rng.integers(min(w, low), min(w, high) + 1))
        y0 = int(rng.integers(h - crop_h + 1))
        x0 = int(rng.integers(w - crop_w + 1))
        return x0, y0, crop_w, crop_h
