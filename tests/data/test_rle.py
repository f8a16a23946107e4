"""COCO encodings: our encoder gives pycocotools' bytes, and measuring works for any number of masks."""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch

from segmentation.data import rle


def _pycocotools_encode(masks: np.ndarray) -> list[dict]:
    return mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))


def _edge_case_masks() -> np.ndarray:
    """Masks that touch every border and corner, runs that wrap from one column to the next, full and empty."""
    masks = np.zeros((9, 6, 5), dtype=bool)
    masks[1] = True
    masks[2, 0, 0] = True
    masks[3, -1, -1] = True
    masks[4, -1, 0] = masks[4, 0, 1] = True  # a run crossing from the bottom of column 0 to the top of column 1
    masks[5, :, 2] = True
    masks[6, 2:, :] = True
    masks[7, :3, 3:] = True
    masks[8, ::2, ::2] = True
    return masks


@pytest.mark.parametrize(
    "masks",
    [
        _edge_case_masks(),
        np.random.default_rng(0).random((40, 7, 9)) > 0.5,
        np.random.default_rng(1).random((20, 64, 48)) > 0.95,
    ],
    ids=["edge-cases", "noise", "sparse"],
)
def test_encode_gives_pycocotools_bytes(masks: np.ndarray) -> None:
    expected = _pycocotools_encode(masks)
    for given in (masks, torch.from_numpy(masks), masks.astype(np.uint8)):
        assert rle.encode(given) == expected


def test_encode_of_rectangles_at_image_size_gives_pycocotools_bytes() -> None:
    rng = np.random.default_rng(2)
    masks = np.zeros((50, 128, 96), dtype=bool)
    for mask in masks:
        y0, x0 = rng.integers(0, 128), rng.integers(0, 96)
        mask[y0 : y0 + rng.integers(1, 128), x0 : x0 + rng.integers(1, 96)] = True
    assert rle.encode(masks) == _pycocotools_encode(masks)


def test_encode_refuses_probabilities() -> None:
    with pytest.raises(TypeError, match="threshold probabilities first"):
        rle.encode(torch.rand(2, 4, 4))


def test_area_takes_more_masks_than_pycocotools_does_in_one_call() -> None:
    """pycocotools 2.0.11's area() overflows at 256 RLEs under numpy 2; a 300-slice CT volume has more."""
    masks = np.zeros((300, 8, 8), dtype=bool)
    for k, mask in enumerate(masks):
        mask.flat[: k % 64] = True
    encoded = rle.encode(masks)
    assert rle.area(encoded).tolist() == [k % 64 for k in range(300)]
    assert rle.area(encoded[5]) == 5


def test_rle_problem_reads_pycocotools_strings_and_names_what_does_not_fit_the_image() -> None:
    mask = np.zeros((6, 5), dtype=bool)
    mask[1:4, 2:5] = True
    compressed = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))

    assert rle.compressed_counts(compressed["counts"]) == rle.uncompressed_counts(mask)
    assert rle.rle_problem({**compressed, "counts": compressed["counts"].decode()}, 6, 5) is None
    assert "not a valid COCO RLE string" in rle.rle_problem({"size": [6, 5], "counts": "\x7f"}, 6, 5)
    assert "summing to 7, expected height*width = 30" in rle.rle_problem({"size": [6, 5], "counts": [3, 4]}, 6, 5)
    assert "RLE of size [7, 5]" in rle.rle_problem({"size": [7, 5], "counts": [35]}, 6, 5)
