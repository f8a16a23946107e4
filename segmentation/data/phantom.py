"""Synthetic lung-CT phantom dataset, shaped like the first user's data: ``python -m segmentation.data.phantom``.

Why this exists: the user's CT data cannot ship with the project, yet a quickstart, the tests and CI need a dataset
with the same shape and quirks: 8-bit grayscale JPEG slices, one "Lung" category, exactly one annotation per slice
(the union of both lungs) as UNCOMPRESSED RLE (``counts`` a list, column-major, first count = leading zeros), area
and bbox from pycocotools, and slices above/below the lungs that keep an annotation with ``counts [h*w]``, area 0
and bbox ``[0, 0, 0, 0]`` (the case that tests detectron2's empty-instance rules). It matches the phantom that
produced ``shared/parity/tiny_lung``.

Each volume is a body ellipse of soft tissue (with a fat ring and a bright spine) holding two dark lung ellipsoids
whose cross-sections grow and shrink along z, with bright vessels inside the lungs and Gaussian noise. Shapes and
positions are drawn per volume; splits are made of whole volumes, so no volume leaks between train/val/test. The
output depends only on the arguments (same seed, same bytes).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from segmentation.data import rle

JPEG_QUALITY = 90


def make_phantom(
    out_dir: str | Path,
    *,
    seed: int = 0,
    n_train: int = 12,
    n_val: int = 3,
    n_test: int = 3,
    slices_per_volume: int = 20,
    size: int = 512,
) -> dict[str, Path]:
    """Write ``out_dir/{train,val,test}/PHANTOM_<volume>_<slice>.jpg`` and ``out_dir/{train,val,test}.json``.

    Volumes are numbered 1.. across train, then val, then test. The second val and the second test volume are
    ``size`` wide and ``3/4 size`` high, to exercise non-square images; all others are ``size`` x ``size``.

    Args:
        out_dir: output folder (created).
        seed: the only source of randomness; the same arguments give byte-identical files.
        n_train, n_val, n_test: volumes per split.
        slices_per_volume: axial slices per volume; the first and last few lie outside the lungs.
        size: image width in pixels.

    Returns:
        ``{"train_json", "train_images", "val_json", "val_images", "test_json", "test_images"}`` paths, named like
        ``CocoDataModule``'s arguments.
    """
    out_dir = Path(out_dir)
    paths: dict[str, Path] = {}
    volume = 0
    image_id = 0
    for split, n_volumes in (("train", n_train), ("val", n_val), ("test", n_test)):
        image_dir = out_dir / split
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for k in range(n_volumes):
            volume += 1
            height = size * 3 // 4 if split != "train" and k == 1 else size
            for s, (pixels, mask) in enumerate(_volume_slices(seed, volume, slices_per_volume, height, size)):
                image_id += 1
                file_name = f"PHANTOM_{volume:02d}_{s}.jpg"
                Image.fromarray(pixels).save(image_dir / file_name, quality=JPEG_QUALITY)
                images.append(rle.image_entry(image_id, file_name, height, size))
                (fields,) = rle.annotation_fields(mask[None])
                annotations.append({"id": image_id, "image_id": image_id, "category_id": 1, **fields, "iscrowd": 0})
        json_path = out_dir / f"{split}.json"
        info = {"description": "Lung CT phantom (synthetic)", "contributor": "phantom.py", "seed": seed}
        rle.write_dataset_json(json_path, info, images, annotations, [{"id": 1, "name": "Lung"}])
        paths[f"{split}_json"] = json_path
        paths[f"{split}_images"] = image_dir
    return paths


def _ellipse(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    return ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1.0


def _volume_slices(seed: int, volume: int, n_slices: int, height: int, width: int):
    """Yield ``(uint8 image, bool lung mask)`` for each slice of one volume, drawn from ``(seed, volume)``."""
    rng = np.random.default_rng([seed, volume])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    cx = width / 2 + rng.uniform(-0.03, 0.03) * width
    cy = height / 2 + rng.uniform(-0.03, 0.03) * height
    body_ax = rng.uniform(0.38, 0.45) * width
    body_ay = min(rng.uniform(0.28, 0.34) * width, 0.46 * height)
    tissue = rng.uniform(105, 135)
    body = _ellipse(xx, yy, cx, cy, body_ax, body_ay)
    fat = body & ~_ellipse(xx, yy, cx, cy, body_ax * 0.93, body_ay * 0.9)
    spine = _ellipse(xx, yy, cx, cy + 0.72 * body_ay, 0.06 * width, 0.05 * width)
    shading = (yy - cy) / body_ay * rng.uniform(-8, 8)
    base = np.where(body, tissue + shading, rng.uniform(5, 15)).astype(np.float32)
    base[fat] = tissue - rng.uniform(25, 40)
    base[spine] = rng.uniform(200, 230)

    z0, z1 = rng.uniform(0.03, 0.1), rng.uniform(0.9, 0.97)
    lungs = []
    for side in (-1, 1):
        lungs.append(
            {
                "cx": cx + side * rng.uniform(0.17, 0.21) * width,
                "cy": cy + rng.uniform(-0.1, 0.05) * body_ay,
                "ax": rng.uniform(0.10, 0.13) * width,
                "ay": min(rng.uniform(0.14, 0.19) * width, 0.75 * body_ay),
                "zc": (z0 + z1) / 2 + rng.uniform(-0.03, 0.03),
                "hz": (z1 - z0) / 2,
                "tilt": rng.uniform(-0.08, 0.08) * body_ay,
            }
        )
    lung_level = rng.uniform(25, 45)
    vessels = rng.uniform(-1, 1, size=(int(rng.integers(6, 13)), 5))  # x, y (lung-relative), dx, dy along z, radius

    for s in range(n_slices):
        z = s / max(n_slices - 1, 1)
        mask = np.zeros((height, width), dtype=bool)
        pixels = base.copy()
        for i, lung in enumerate(lungs):
            t = 1.0 - ((z - lung["zc"]) / lung["hz"]) ** 2
            if t <= 0:
                continue
            scale = float(np.sqrt(t))
            lcy = lung["cy"] + lung["tilt"] * (z - 0.5)
            ax, ay = lung["ax"] * scale, lung["ay"] * scale
            region = _ellipse(xx, yy, lung["cx"], lcy, ax, ay)
            mask |= region
            pixels[region] = lung_level
            for vx, vy, dx, dy, radius in vessels[i::2]:
                px = lung["cx"] + (vx + 0.3 * dx * z) * 0.7 * ax
                py = lcy + (vy + 0.3 * dy * z) * 0.7 * ay
                r = 3.5 + 1.5 * radius
                pixels[_ellipse(xx, yy, px, py, r, r) & region] = tissue - 20
        pixels += rng.normal(0.0, 5.0, size=pixels.shape).astype(np.float32)
        yield np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mask


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m segmentation.data.phantom --out data/phantom [--seed 0]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", dest="out_dir", metavar="OUT", required=True, type=Path, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=12, help="training volumes")
    parser.add_argument("--n-val", type=int, default=3, help="validation volumes")
    parser.add_argument("--n-test", type=int, default=3, help="test volumes")
    parser.add_argument(
        "--slices", dest="slices_per_volume", metavar="SLICES", type=int, default=20, help="slices per volume"
    )
    parser.add_argument("--size", type=int, default=512, help="image width in pixels")
    paths = make_phantom(**vars(parser.parse_args(argv)))  # each option's dest is make_phantom's argument
    print(" ".join(f"--data.{key} {path}" for key, path in paths.items()))


if __name__ == "__main__":
    main()
