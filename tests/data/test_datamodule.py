"""Training batches and inference shards as detectron2 makes them, and the LightningDataModule that serves them."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from segmentation.data.coco import ImageRecord
from segmentation.data.datamodule import CocoDataModule, filter_images_without_annotations
from segmentation.data.phantom import make_phantom
from segmentation.data.samplers import GroupedBatchSampler, InferenceSampler, inference_shard, repeat_factors

LANDSCAPE = [True, False, False, True, False, True, False, False, True, False, False]


def _take(sampler: GroupedBatchSampler, n: int) -> list[list[int]]:
    """The dataset indices of the first ``n`` batches."""
    return [[item.index for item in batch] for batch in itertools.islice(iter(sampler), n)]


def _record(image_id: int, annotations: list[dict]) -> ImageRecord:
    return ImageRecord(
        image_id=image_id, file_name=f"/x/{image_id}.jpg", height=8, width=8, annotations=tuple(annotations)
    )


def test_filter_empty_annotations_keeps_images_with_a_non_crowd_annotation_even_if_its_mask_is_empty():
    empty_mask = {"iscrowd": 0, "segmentation": {"size": [8, 8], "counts": [64]}, "area": 0.0}
    crowd = {"iscrowd": 1, "segmentation": {"size": [8, 8], "counts": [0, 64]}, "area": 64.0}
    images = [_record(1, []), _record(2, [crowd]), _record(3, [empty_mask]), _record(4, [crowd, empty_mask])]
    assert [r.image_id for r in filter_images_without_annotations(images)] == [3, 4]


def test_batches_never_mix_orientations_and_draw_from_seeded_permutations():
    batches = _take(GroupedBatchSampler(LANDSCAPE, 3, seed=5), 40)

    assert all(len(b) == 3 and len({LANDSCAPE[i] for i in b}) == 1 for b in batches)
    assert {LANDSCAPE[b[0]] for b in batches} == {True, False}
    assert batches == _take(GroupedBatchSampler(LANDSCAPE, 3, seed=5), 40)
    assert batches != _take(GroupedBatchSampler(LANDSCAPE, 3, seed=6), 40)
    stream = [i for b in _take(GroupedBatchSampler(LANDSCAPE, 1, seed=5, group_by_aspect=False), 33) for i in b]
    n = len(LANDSCAPE)
    assert all(sorted(stream[k : k + n]) == list(range(n)) for k in range(0, 33, n))  # epochs are permutations


def test_the_stream_resumes_mid_way_with_the_same_batches():
    full = _take(GroupedBatchSampler(LANDSCAPE, 2, seed=1), 30)

    assert _take(GroupedBatchSampler(LANDSCAPE, 2, seed=1, start_batch=11), 19) == full[11:]
    running = GroupedBatchSampler(LANDSCAPE, 2, seed=1)
    assert _take(running, 11) == full[:11]
    assert running.state_dict() == {"batches_yielded": 11}
    resumed = GroupedBatchSampler(LANDSCAPE, 2, seed=1)
    resumed.load_state_dict(running.state_dict())
    assert _take(resumed, 19) == full[11:]


def test_each_rank_takes_every_world_size_th_index_of_the_shared_stream():
    def indices(rank: int, world_size: int, n: int) -> list[int]:
        sampler = GroupedBatchSampler(LANDSCAPE, 1, seed=3, rank=rank, world_size=world_size, group_by_aspect=False)
        return [b[0] for b in _take(sampler, n)]

    shared = indices(0, 1, 60)
    assert [indices(r, 3, 20) for r in range(3)] == [shared[r::3] for r in range(3)]
    grouped = [_take(GroupedBatchSampler(LANDSCAPE, 2, seed=3, rank=r, world_size=2), 10) for r in range(2)]
    assert grouped[0] != grouped[1]
    assert all(len({LANDSCAPE[i] for i in b}) == 1 for batches in grouped for b in batches)


def test_every_sample_has_its_own_stream_position_across_ranks():
    def positions(rank: int) -> list[int]:
        sampler = GroupedBatchSampler(LANDSCAPE, 2, seed=3, rank=rank, world_size=2)
        return [item.position for batch in itertools.islice(iter(sampler), 10) for item in batch]

    ranks = [positions(0), positions(1)]
    assert all(p % 2 == 0 for p in ranks[0]) and all(p % 2 == 1 for p in ranks[1])
    assert len(set(ranks[0] + ranks[1])) == 40


def _annotated(image_id: int, categories: list[int]) -> ImageRecord:
    return _record(image_id, [{"iscrowd": 0, "category_id": c} for c in categories])


def test_repeat_factors_follow_detectron2s_category_frequency_rule():
    images = [_annotated(i, [1, 2] if i == 0 else [1]) for i in range(10)] + [_annotated(10, [])]
    # category 1 is in 10 of 11 images, category 2 in 1 of 11: f = 1/11, threshold 0.4 -> sqrt(0.4 * 11) = 2.098
    factors = repeat_factors(images, 0.4)
    assert factors[0] == pytest.approx((0.4 * 11) ** 0.5) and factors[1:] == [1.0] * 10
    assert repeat_factors(images, 0.4, sqrt=False)[0] == pytest.approx(0.4 * 11)


def test_repeat_factor_sampling_repeats_images_by_their_factor_on_average():
    factors = [1.0, 2.0, 1.5, 1.0]
    sampler = GroupedBatchSampler([True] * 4, 1, seed=0, group_by_aspect=False, factors=factors)
    counts = Counter(i for b in _take(sampler, 11000) for i in b)
    assert [counts[i] / counts[0] for i in range(4)] == pytest.approx(factors, rel=0.05)
    assert _take(sampler, 50) != _take(GroupedBatchSampler([True] * 4, 1, seed=0, group_by_aspect=False), 50)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_inference_shards_cover_every_image_exactly_once(world_size: int):
    shards = [list(InferenceSampler(7, rank=r, world_size=world_size)) for r in range(world_size)]

    assert [i for shard in shards for i in shard] == list(range(7))  # contiguous, in order, no padding
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert [len(s) for s in shards] == [len(inference_shard(7, r, world_size)) for r in range(world_size)]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("phantom")
    return make_phantom(out, n_train=2, n_val=2, n_test=1, slices_per_volume=4, size=64)


def _datamodule(paths: dict[str, Path], **kwargs) -> CocoDataModule:
    args = {key: str(value) for key, value in paths.items()}
    sizes = {"min_size_train": 64, "max_size_train": 64, "min_size_test": 64, "max_size_test": 64}
    return CocoDataModule(**args, **{"num_workers": 0, "batch_size": 2, **sizes, **kwargs})


def test_datamodule_serves_grouped_training_batches_and_unpadded_val_shards(phantom: dict[str, Path]):
    dm = _datamodule(phantom)
    assert dm.num_classes == 1 and dm.categories[0].name == "Lung"  # usable before setup, for LightningCLI links
    dm.setup("fit")

    images, targets = next(iter(dm.train_dataloader()))
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) == 2
    assert images[0].dtype == torch.uint8 and set(targets[0]) == {"boxes", "labels", "masks", "image_id"}

    val = dm.val_dataloader()
    assert len(val) == len(dm.val_split.images) == 8
    assert {tuple(images[0].shape[1:]) for images, _ in val} == {(64, 64), (48, 64)}  # one 64x48 val volume
    _, infos = next(iter(val))
    assert set(infos[0]) == {"image_id", "height", "width", "file_name", "target"}  # target: validation loss

    dm.trainer = SimpleNamespace(global_rank=1, world_size=3)
    assert list(dm.val_dataloader().sampler) == [3, 4, 5]
    assert dm.train_dataloader().batch_sampler.rank == 1


def test_datamodule_state_resumes_the_training_stream(phantom: dict[str, Path]):
    fresh = _datamodule(phantom, seed=4).train_dataloader().batch_sampler
    expected = _take(fresh, 8)[5:]

    resumed = _datamodule(phantom, seed=4)
    resumed.load_state_dict({"train_batches_consumed": 5})
    assert resumed.state_dict() == {"train_batches_consumed": 5}
    assert _take(resumed.train_dataloader().batch_sampler, 3) == expected


def test_the_splits_given_are_listed_once_in_train_val_test_order():
    datamodule = CocoDataModule(test_json="t.json", test_images="t", train_json="a.json", train_images="a")

    assert [(s.name, s.json_path, s.image_root) for s in datamodule.splits()] == [
        ("train", "a.json", "a"),
        ("test", "t.json", "t"),
    ]
    assert datamodule.val_dataloader() == []


def test_datamodule_rejects_a_json_without_its_image_folder():
    with pytest.raises(ValueError, match="--data.val_json and --data.val_images"):
        CocoDataModule(val_json="val.json")


def test_the_global_batch_is_split_across_processes_or_refused(phantom: dict[str, Path]):
    dm = _datamodule(phantom, ims_per_batch=4)
    assert [dm.per_process_batch_size(n) for n in (1, 2, 4)] == [4, 2, 1]
    with pytest.raises(ValueError, match="ims_per_batch 4 .* does not divide among 3 processes"):
        dm.per_process_batch_size(3)
    assert _datamodule(phantom).per_process_batch_size(3) == 2  # batch_size is already per process


def test_multi_scale_flip_and_crop_options_reach_the_training_images(phantom: dict[str, Path]):
    dm = _datamodule(phantom, min_size_train=[48, 56, 64], max_size_train=100, random_flip="horizontal",
                     crop_type="relative_range", crop_size=[0.5, 0.5])  # fmt: skip
    dm.setup("fit")
    loader = iter(dm.train_dataloader())
    shapes = {tuple(image.shape[1:]) for _ in range(12) for image in next(loader)[0]}
    assert {min(hw) for hw in shapes} == {48, 56, 64}
    with pytest.raises(ValueError, match="RepeatFactorTrainingSampler needs --data.repeat_threshold"):
        _datamodule(phantom, sampler_train="RepeatFactorTrainingSampler")
