"""CT + label volumes -> windowed slice images and COCO jsons: ``python -m segmentation.data.volumes_to_coco``.

Why this exists: users train on CT scans whose masks are label volumes, while the model reads a COCO json of 8-bit
slice images with RLE masks. Hand-written converters cut and window slices differently from ``segmentation.predict``
(so the model sees other pixels at inference) and build RLE with slow per-pixel Python loops. This converter reads
volumes with the same readers and window as ``predict`` (``data.volumes``) and writes the dataset shape of the
user's data and the phantom (``data.phantom``): 8-bit grayscale slices (JPEG, or lossless PNG), one category
"Lung", uncompressed RLE masks (``counts`` a list, column-major, first count = leading zeros), area and bbox from
pycocotools, and an area-0 annotation (``counts [h*w]``, bbox ``[0, 0, 0, 0]``) on slices without a label.

Masks are encoded per volume, not per pixel (``rle.annotation_fields``, shared with the phantom): pycocotools encodes
the whole ``(H, W, N)`` stack of instance masks in one call (area and bbox come from those RLEs, bbox with
pycocotools' own rules), and the uncompressed counts come from ``rle.uncompressed_counts``, a numpy run-length pass
over each mask's column-major pixels.

Instances: by default one annotation per slice and category, the union of its pixels; with ``per_component`` one
per 2-D connected component (8-connected, SimpleITK's ``ConnectedComponentImageFilter``), in SimpleITK's raster
order. Categories: by default every label value > 0 is category 1 "Lung"; a mapping ``{1: "Lung", 2: "Nodule"}``
makes each listed label value its own category (json id = the label value); unlisted values count as background.

Splits are made of whole volumes (no volume's slices leak between train/val/test), drawn from ``seed``; the same
arguments give the same files.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segmentation.data import rle
from segmentation.data.images import LUNG_WINDOW, window_to_uint8
from segmentation.data.phantom import JPEG_QUALITY
from segmentation.data.volumes import read_volume, sitk, volume_array, volume_name

AXES = {"z": 0, "y": 1, "x": 2}  # axis of SimpleITK's (z, y, x) array
GEOMETRY_TOLERANCE = 1e-4  # mm for spacing and origin, cosine for direction
DEFAULT_CATEGORY = "Lung"
SPLITS = ("train", "val", "test")


def parse_categories(text: str) -> dict[int, str]:
    """``"1:Lung,2:Nodule"`` -> ``{1: "Lung", 2: "Nodule"}`` (label value -> category name, values > 0)."""
    categories: dict[int, str] = {}
    for item in text.split(","):
        value, sep, name = item.partition(":")
        if not sep or not value.strip().isdigit() or int(value) <= 0 or not name.strip():
            raise ValueError(f"--categories: expected 'VALUE:NAME,...' with label values > 0, got {item!r}")
        if int(value) in categories:
            raise ValueError(f"--categories: label value {int(value)} appears twice")
        categories[int(value)] = name.strip()
    return categories


def check_same_geometry(image: Any, label: Any, image_path: str | Path, label_path: str | Path) -> None:
    """Raise ValueError, naming both files, unless the volumes share size, spacing, origin and direction."""
    if image.GetSize() != label.GetSize():
        raise ValueError(
            f"{label_path} does not match {image_path}: size {label.GetSize()} vs {image.GetSize()} (x, y, z)"
        )
    for prop in ("Spacing", "Origin", "Direction"):
        a, b = getattr(image, f"Get{prop}")(), getattr(label, f"Get{prop}")()
        if not np.allclose(a, b, rtol=0.0, atol=GEOMETRY_TOLERANCE):
            raise ValueError(f"{label_path} does not match {image_path}: {prop.lower()} {b} vs {a}")


def split_volumes(n_volumes: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[int]]:
    """Assign volume indices to splits: a seeded permutation, then test, val, train.

    A split with a positive fraction gets ``round(fraction * n)`` volumes, at least one; train must keep one.
    """
    for name, fraction in (("val", val_fraction), ("test", test_fraction)):
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"--{name}-fraction must be in [0, 1), got {fraction}")
    n_val, n_test = (max(1, round(f * n_volumes)) if f > 0 else 0 for f in (val_fraction, test_fraction))
    if n_val + n_test >= n_volumes:
        raise ValueError(
            f"{n_volumes} volume(s) cannot give {n_val} val and {n_test} test volume(s) and keep one for training"
        )
    order = np.random.default_rng(seed).permutation(n_volumes).tolist()
    return {
        "test": sorted(order[:n_test]),
        "val": sorted(order[n_test : n_test + n_val]),
        "train": sorted(order[n_test + n_val :]),
    }


def slice_instances(
    labels: np.ndarray, categories: dict[int, str] | None, *, per_component: bool, empty_annotations: bool
) -> tuple[list[tuple[int, int]], np.ndarray]:
    """The instances of an ``(N, H, W)`` label stack, slice by slice, then category, then component.

    Returns:
        ``[(slice index, category id), ...]`` and the matching bool ``(M, H, W)`` masks; a slice without pixels of
        a category gets one all-zero mask of that category when ``empty_annotations``.
    """
    if categories is None:
        category_masks = [(1, labels > 0)]
    else:
        category_masks = [(value, labels == value) for value in sorted(categories)]
    keys: list[tuple[int, int]] = []
    masks: list[np.ndarray] = []
    for s in range(labels.shape[0]):
        for category_id, volume_mask in category_masks:
            mask = volume_mask[s]
            if not mask.any():
                if empty_annotations:
                    keys.append((s, category_id))
                    masks.append(mask)
                continue
            parts = _components(mask) if per_component else [mask]
            keys.extend((s, category_id) for _ in parts)
            masks.extend(parts)
    stack = np.stack(masks) if masks else np.zeros((0, *labels.shape[1:]), dtype=bool)
    return keys, stack


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """The 8-connected components of a bool ``(H, W)`` mask, in SimpleITK's raster order."""
    lib = sitk()
    components = lib.ConnectedComponent(lib.GetImageFromArray(mask.astype(np.uint8)), True)
    ids = lib.GetArrayViewFromImage(components)
    return [ids == k for k in range(1, int(ids.max()) + 1)]


def convert_volumes(
    images: Sequence[str | Path],
    labels: Sequence[str | Path],
    out_dir: str | Path,
    *,
    categories: dict[int, str] | None = None,
    per_component: bool = False,
    window_center: float = LUNG_WINDOW[0],
    window_width: float = LUNG_WINDOW[1],
    val_fraction: float = 0.0,
    test_fraction: float = 0.0,
    seed: int = 0,
    axis: str = "z",
    image_format: str = "jpg",
    empty_annotations: bool = True,
) -> dict[str, Path]:
    """Write ``out_dir/<split>/<volume>_<slice>.<jpg|png>`` and ``out_dir/<split>.json`` for each non-empty split.

    Args:
        images: CT volumes (volume files or DICOM series folders), read with ``data.volumes.read_volume``.
        labels: one label volume per image, same order, same size, spacing, origin and direction.
        out_dir: output folder (created; files of the same name are overwritten).
        categories: label value -> category name; ``None``: every value > 0 is category 1 "Lung".
        per_component: one annotation per 2-D connected component instead of one per slice and category.
        window_center, window_width: HU window mapped to 0..255 (default: the lung window, as ``predict``).
        val_fraction, test_fraction: share of volumes in val and test (see ``split_volumes``).
        seed: the only source of randomness (the split).
        axis: slicing axis, ``z`` (axial, as ``predict``), ``y`` or ``x``; image rows follow the first remaining
            axis of the ``(z, y, x)`` array, without resampling.
        image_format: ``jpg`` (8-bit grayscale, quality 90 like the user's data) or ``png`` (lossless).
        empty_annotations: give each slice without a category's pixels an area-0 annotation of that category.

    Returns:
        ``{"train_json", "train_images", ...}`` for the splits written, named like ``CocoDataModule``'s arguments.

    Raises:
        ValueError: unequal numbers of images and labels, two volumes with the same name, a label volume whose
            geometry differs from its image (naming both files), or fractions that leave no training volume.
    """
    names = _volume_names(images, labels, axis, image_format)
    splits = split_volumes(len(images), val_fraction, test_fraction, seed)
    categories_json = [{"id": v, "name": n} for v, n in sorted((categories or {1: DEFAULT_CATEGORY}).items())]
    info = {"description": "CT volumes converted by segmentation.data.volumes_to_coco", "seed": seed}
    writer = _SliceWriter(
        categories, per_component, empty_annotations, AXES[axis], (window_center, window_width), image_format
    )
    paths: dict[str, Path] = {}
    for split in (name for name in SPLITS if splits[name]):
        image_dir, json_path = Path(out_dir) / split, Path(out_dir) / f"{split}.json"
        volumes = [(names[v], images[v], labels[v]) for v in splits[split]]
        coco_images, coco_annotations = writer.write_split(volumes, image_dir)
        rle.write_dataset_json(json_path, info, coco_images, coco_annotations, categories_json)
        paths.update({f"{split}_json": json_path, f"{split}_images": image_dir})
    return paths


class _SliceWriter:
    """Cuts volume pairs into slice images and COCO entries, numbering images and annotations on across splits."""

    def __init__(
        self,
        categories: dict[int, str] | None,
        per_component: bool,
        empty_annotations: bool,
        axis: int,
        window: tuple[float, float],
        image_format: str,
    ) -> None:
        self.categories, self.per_component, self.empty_annotations = categories, per_component, empty_annotations
        self.axis, self.window, self.image_format = axis, window, image_format
        self.save_options = {"quality": JPEG_QUALITY} if image_format == "jpg" else {}
        self.images_written = self.annotations_written = 0

    def write_split(
        self, volumes: Sequence[tuple[str, str | Path, str | Path]], image_dir: Path
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Write the slices of ``(name, image, label)`` volumes into ``image_dir``; their images and annotations."""
        image_dir.mkdir(parents=True, exist_ok=True)
        coco_images, coco_annotations = [], []
        for name, image_path, label_path in volumes:
            pixels, labels = _read_pair(image_path, label_path, self.axis, *self.window)
            first_image = self.images_written + 1
            coco_images += self._write_slices(pixels, name, image_dir)
            coco_annotations += self._annotations(labels, first_image)
        return coco_images, coco_annotations

    def _write_slices(self, pixels: np.ndarray, name: str, image_dir: Path) -> list[dict[str, Any]]:
        """Save each slice as ``<name>_<slice>.<format>``; their ``images`` entries."""
        height, width = pixels.shape[1:]
        entries = []
        for s, slice_pixels in enumerate(pixels):
            file_name = f"{name}_{s}.{self.image_format}"
            Image.fromarray(slice_pixels).save(image_dir / file_name, **self.save_options)
            self.images_written += 1
            entries.append(rle.image_entry(self.images_written, file_name, height, width, volume=name, slice=s))
        return entries

    def _annotations(self, labels: np.ndarray, first_image: int) -> list[dict[str, Any]]:
        """The ``annotations`` entries of one volume's label slices, the first slice being image ``first_image``."""
        keys, masks = slice_instances(
            labels, self.categories, per_component=self.per_component, empty_annotations=self.empty_annotations
        )
        entries = []
        for (s, category_id), fields in zip(keys, rle.annotation_fields(masks), strict=True):
            self.annotations_written += 1
            entry = {"id": self.annotations_written, "image_id": first_image + s, "category_id": category_id}
            entries.append({**entry, **fields, "iscrowd": 0})
        return entries


def _volume_names(
    images: Sequence[str | Path], labels: Sequence[str | Path], axis: str, image_format: str
) -> list[str]:
    """The volumes' names (they name the slice files), once the arguments are known to fit together."""
    if len(images) != len(labels):
        raise ValueError(f"got {len(images)} image volume(s) but {len(labels)} label volume(s)")
    if axis not in AXES:
        raise ValueError(f"axis must be one of {sorted(AXES)}, got {axis!r}")
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    names = [volume_name(p) for p in images]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"volume names must be unique (they name the slice files): {duplicates}")
    return names


def _read_pair(
    image_path: str | Path, label_path: str | Path, axis: int, center: float, width: float
) -> tuple[np.ndarray, np.ndarray]:
    """Windowed uint8 slices and the label slices of one volume pair, both ``(N, H, W)`` along ``axis``."""
    image, label = read_volume(image_path), read_volume(label_path)
    check_same_geometry(image, label, image_path, label_path)
    pixels = window_to_uint8(volume_array(image), center=center, width=width)
    return np.moveaxis(pixels, axis, 0), np.moveaxis(volume_array(label), axis, 0)


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m segmentation.data.volumes_to_coco --images ... --labels ... --out DIR``."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--images", nargs="+", required=True, help="CT volumes (files or DICOM series folders)")
    parser.add_argument("--labels", nargs="+", required=True, help="label volumes, in the order of --images")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--per-component", action="store_true", help="one annotation per 2-D connected component")
    parser.add_argument("--categories", type=parse_categories, help="label value:name pairs, e.g. 1:Lung,2:Nodule")
    parser.add_argument("--window-center", type=float, default=LUNG_WINDOW[0], help="HU")
    parser.add_argument("--window-width", type=float, default=LUNG_WINDOW[1], help="HU")
    parser.add_argument("--val-fraction", type=float, default=0.0, help="share of volumes for validation")
    parser.add_argument("--test-fraction", type=float, default=0.0, help="share of volumes for test")
    parser.add_argument("--seed", type=int, default=0, help="seed of the volume split")
    parser.add_argument("--axis", choices=sorted(AXES), default="z", help="slicing axis (z: axial)")
    parser.add_argument("--format", choices=("jpg", "png"), default="jpg", help="png is lossless")
    parser.add_argument("--no-empty-annotations", action="store_true", help="no area-0 annotation on empty slices")
    args = parser.parse_args(argv)
    try:
        paths = convert_volumes(
            args.images,
            args.labels,
            args.out,
            categories=args.categories,
            per_component=args.per_component,
            window_center=args.window_center,
            window_width=args.window_width,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            seed=args.seed,
            axis=args.axis,
            image_format=args.format,
            empty_annotations=not args.no_empty_annotations,
        )
    except ValueError as e:
        parser.error(str(e))
    print(" ".join(f"--data.{key} {path}" for key, path in paths.items()))


if __name__ == "__main__":
    main()
