"""Training augmentation is detectron2's: the same pixels, masks and boxes under each resize, flip and crop, and
draws that follow detectron2's distributions from a per-sample seed."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from segmentation.data.augmentation import Augmentation, ImageTransform, resized_shape
from segmentation.data.coco import ImageRecord, load_coco_json
from segmentation.data.datamodule import TrainingDataset
from segmentation.data.mapper import map_for_training
from segmentation.data.samplers import StreamItem
from segmentation.errors import ConfigError

pytestmark = pytest.mark.parity


def _md5(array: torch.Tensor) -> str:
    return hashlib.md5(np.ascontiguousarray(array.numpy()).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def val(parity_dir: Path):
    dataset = parity_dir / "tiny_lung" / "dataset"
    split = load_coco_json(dataset / "coco_val_lung.json", dataset / "val")
    return split, {Path(r.file_name).name: r for r in split.images}


def _references(parity_dir: Path, name: str) -> list[dict]:
    return list(json.loads((parity_dir / "solver_and_augmentation" / name).read_text()).values())


def _check(val, case: dict, transform: ImageTransform) -> None:
    split, by_name = val
    image, target = map_for_training(by_name[case["file_name"]], transform, split.categories)
    assert list(image.shape) == case["image_chw_shape"]
    assert _md5(image) == case["image_md5"], "image bytes differ from detectron2's"
    assert _md5(target["masks"]) == case["mask_md5"], "masks differ from detectron2's"
    assert target["masks"].flatten(1).sum(1).tolist() == case["mask_sums"]
    assert (target["labels"] - 1).tolist() == case["gt_classes"]
    expected = torch.tensor(case["gt_boxes"], dtype=torch.float32).reshape(-1, 4)
    torch.testing.assert_close(target["boxes"], expected, rtol=0, atol=1e-4)


def test_resize_and_flips_match_detectron2(parity_dir: Path, val) -> None:
    cases = _references(parity_dir, "augmentation.json")
    assert len(cases) == 27
    for case in cases:
        record: ImageRecord = val[1][case["file_name"]]
        size = resized_shape(record.height, record.width, case["min_size"], case["max_size"])
        _check(val, case, ImageTransform(record.height, record.width, None, *size, flip=case["flip"]))


def test_crops_with_recomputed_boxes_binding_max_size_and_an_empty_slice_match_detectron2(parity_dir: Path, val):
    cases = _references(parity_dir, "augmentation_crop_maxsize_empty.json")
    assert {c["case"] for c in cases} == {"crop_rel_0.6_topleft", "crop_abs_256_center", "maxsize_binds_576_640"}
    assert any(c["mask_sums"] == [] for c in cases)  # the empty slice: its area-0 annotation is dropped
    for case in cases:
        record: ImageRecord = val[1][case["file_name"]]
        crop = tuple(case["crop_xywh"]) if case["crop_xywh"] else None
        h, w = (crop[3], crop[2]) if crop else (record.height, record.width)
        size = resized_shape(h, w, case["min_size"], case["max_size"])
        _check(val, case, ImageTransform(record.height, record.width, crop, *size, flip=case["flip"]))


def _draws(augmentation: Augmentation, n: int = 4000, hw: tuple[int, int] = (300, 400)) -> list[ImageTransform]:
    return [augmentation.draw(*hw, np.random.default_rng([0, i])) for i in range(n)]


def test_choice_draws_each_size_and_range_draws_every_integer_in_its_bounds() -> None:
    choice = Counter(t.new_height for t in _draws(Augmentation((480, 512, 544), 1333)))
    assert set(choice) == {480, 512, 544} and min(choice.values()) > 1200  # uniform over 3: ~1333 each
    ranged = Counter(t.new_height for t in _draws(Augmentation((500, 503), 1333, "range")))
    assert set(ranged) == {500, 501, 502, 503}


@pytest.mark.parametrize("flip", ["horizontal", "vertical"])
def test_flips_happen_half_of_the_time_in_the_chosen_direction(flip: str) -> None:
    flips = Counter(t.flip for t in _draws(Augmentation((512,), 512, flip=flip)))
    assert set(flips) == {"none", flip} and abs(flips[flip] / 4000 - 0.5) < 0.03


def test_crop_sizes_follow_detectron2s_crop_types() -> None:
    def sizes(crop_type: str, crop_size: tuple[float, float]) -> set[tuple[int, int]]:
        augmentation = Augmentation((512,), 1333, crop_type=crop_type, crop_size=crop_size)
        return {(t.crop[3], t.crop[2]) for t in _draws(augmentation, 3000)}

    assert sizes("relative", (0.5, 0.25)) == {(150, 100)}
    assert sizes("absolute", (256, 1000)) == {(256, 400)}  # capped at the image
    relative_range = sizes("relative_range", (0.9, 0.9))
    assert {h for h, _ in relative_range} == set(range(270, 301)) and {w for _, w in relative_range} <= set(
        range(360, 401)
    )
    assert {h for h, _ in sizes("absolute_range", (200, 350))} == set(range(200, 301))


def test_crop_positions_stay_inside_the_image() -> None:
    for t in _draws(Augmentation((512,), 1333, crop_type="absolute", crop_size=(100, 100)), 1000):
        x0, y0, w, h = t.crop
        assert 0 <= x0 <= 400 - w and 0 <= y0 <= 300 - h
    corners = {t.crop[:2] for t in _draws(Augmentation((512,), 1333, crop_type="absolute", crop_size=(299, 399)), 200)}
    assert corners == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_the_same_sample_position_draws_the_same_augmentation(val) -> None:
    split = val[0]
    augmentation = Augmentation((448, 512, 576), 1024, flip="horizontal", crop_type="relative_range")
    a = TrainingDataset(split.images, split.categories, augmentation, seed=3)
    b = TrainingDataset(split.images, split.categories, augmentation, seed=3)
    items = [StreamItem(p % len(split.images), p) for p in range(50)]
    assert [a.transform(x) for x in items] == [b.transform(x) for x in items]
    assert len({a.transform(x) for x in items}) > 40  # positions draw independently
    other_seed = TrainingDataset(split.images, split.categories, augmentation, seed=4)
    assert [a.transform(x) for x in items] != [other_seed.transform(x) for x in items]


def test_the_recipe_without_augmentation_resizes_every_image_the_same_way(val) -> None:
    split = val[0]
    plain = TrainingDataset(split.images, split.categories, Augmentation((512,), 512))
    record = split.images[0]
    assert {plain.transform(StreamItem(0, p)) for p in range(20)} == {
        ImageTransform.resize(record.height, record.width, 512, 512)
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"min_sizes": (512, 480), "sampling": "range"}, "give \\[low, high\\]"),
     ({"min_sizes": ()}, "at least one size"),
     ({"crop_type": "relative", "crop_size": (1.5, 0.5)}, "fractions"),
     ({"crop_type": "absolute_range", "crop_size": (300, 200)}, "\\[min, max\\]")],
)  # fmt: skip
def test_impossible_settings_are_refused_by_name(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Augmentation(**kwargs)
