"""Datasets, detectron2's training and inference sampling, and the LightningDataModule that wires them.

Why this exists: detectron2 does not train in epochs. Its training loader is an infinite stream of seeded random
permutations, split across ranks by striding, and batched per orientation (``w > h`` or not) so that a batch never
mixes landscape and portrait images (mixed batches pad to a square and add easy negative anchors, which changes
``loss_rpn_cls``). Its test loader gives every image to exactly one rank, in contiguous unpadded shards with batch
size 1 (padding shards with duplicates, as ``DistributedSampler`` does, changes AP). Lightning's defaults do
neither, so the trainer runs with ``use_distributed_sampler=False`` and the sharding is done here.

Sources: ``detectron2/data/samplers/distributed_sampler.py`` (TrainingSampler, InferenceSampler),
``detectron2/data/common.py`` (AspectRatioGroupedDataset), ``detectron2/data/build.py`` (FILTER_EMPTY_ANNOTATIONS).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from segmentation.data.coco import Category, CocoFormatError, CocoSplit, ImageRecord, load_coco_json, read_categories
from segmentation.data.images import LUNG_CT, CtWindow
from segmentation.data.mapper import map_for_inference, map_for_training
from segmentation.errors import ConfigError


def filter_images_without_annotations(images: Sequence[ImageRecord]) -> list[ImageRecord]:
    """detectron2's FILTER_EMPTY_ANNOTATIONS: drop images that have no non-crowd annotation.

    An image whose only annotation is an empty (area-0) mask still has a non-crowd annotation and is kept, as in
    detectron2; the mapper then drops that instance and the image trains with zero targets.
    """
    return [r for r in images if any(not a["iscrowd"] for a in r.annotations)]


class CocoInstanceDataset(Dataset):
    """Map-style dataset: index -> ``map_for_training`` or ``map_for_inference`` output for one image record."""

    def __init__(
        self,
        images: Sequence[ImageRecord],
        categories: Sequence[Category],
        *,
        training: bool,
        min_size: int,
        max_size: int,
        with_targets: bool = False,
        window: CtWindow = LUNG_CT,
    ) -> None:
        """Args:
        images: the records to serve, in index order.
        categories: the split's categories (json id -> label), used for training targets.
        training: build training targets (``map_for_training``) instead of inference info.
        min_size, max_size: detectron2's ResizeShortestEdge sizes.
        with_targets: in inference mode, also put the training target in ``info["target"]`` (validation loss).
        window: how 16-bit slices are windowed.
        """
        self.images = list(images)
        self.categories = list(categories)
        self.training = training
        self.min_size = min_size
        self.max_size = max_size
        self.with_targets = with_targets
        self.window = window

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        record = self.images[index]
        if self.training:
            return map_for_training(record, self.min_size, self.max_size, self.categories, self.window)
        categories = self.categories if self.with_targets else None
        return map_for_inference(record, self.min_size, self.max_size, categories, self.window)


def collate(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """``[(image, target), ...]`` -> ``([images], [targets])``; no padding (the model pads)."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


class GroupedBatchSampler(Sampler[list[int]]):
    """detectron2's TrainingSampler + AspectRatioGroupedDataset as one deterministic, resumable batch sampler.

    The index stream is ``torch.randperm(n)`` epochs after epoch from a generator seeded with ``seed`` (the same
    on every rank); rank ``r`` of ``world_size`` takes stream positions ``r, r + world_size, ...``. With grouping on,
    each index goes to one of two buckets by the orientation of its ORIGINAL (json) size, ``w > h`` or not, and a
    bucket is emitted as a batch as soon as it holds ``batch_size`` indices. With grouping off, consecutive
    indices form batches.

    The stream is infinite, so the sampler has no ``__len__`` (Lightning then treats the loader as endless; train
    with ``max_steps``). ``state_dict()`` counts the batches this sampler has yielded; a sampler built with (or
    loaded with) ``start_batch=k`` reproduces the same stream from its ``k``-th batch. Note that a DataLoader
    prefetches, so the count of batches the *training loop consumed* should come from the trainer
    (``CocoDataModule`` does this).
    """

    def __init__(
        self,
        landscape: Sequence[bool],
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        group_by_aspect: bool = True,
        start_batch: int = 0,
    ) -> None:
        """Args:
        landscape: per dataset index, whether the image's original width > height.
        batch_size: images per batch on this rank.
        seed: seed of the shared permutation stream.
        rank, world_size: this process's shard of the stream.
        group_by_aspect: detectron2's ASPECT_RATIO_GROUPING.
        start_batch: number of batches already consumed; iteration resumes after them.
        """
        if not landscape:
            raise ValueError("cannot sample training batches from an empty dataset")
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"invalid batch_size={batch_size}, rank={rank}, world_size={world_size}")
        self.landscape = [bool(x) for x in landscape]
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.group_by_aspect = group_by_aspect
        self.batches_yielded = start_batch

    def _indices(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed)
        n = len(self.landscape)
        epochs = (torch.randperm(n, generator=generator).tolist() for _ in itertools.count())
        stream = itertools.chain.from_iterable(epochs)
        return itertools.islice(stream, self.rank, None, self.world_size)

    def _batches(self) -> Iterator[list[int]]:
        if not self.group_by_aspect:
            indices = self._indices()
            while True:
                yield list(itertools.islice(indices, self.batch_size))
        buckets: tuple[list[int], list[int]] = ([], [])
        for index in self._indices():
            bucket = buckets[0 if self.landscape[index] else 1]
            bucket.append(index)
            if len(bucket) == self.batch_size:
                yield bucket[:]
                bucket.clear()

    def __iter__(self) -> Iterator[list[int]]:
        for batch in itertools.islice(self._batches(), self.batches_yielded, None):
            self.batches_yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """``{"batches_yielded": k}``; loading it makes the next iteration start at batch ``k`` of the stream."""
        return {"batches_yielded": self.batches_yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batches_yielded = int(state["batches_yielded"])


def inference_shard(size: int, rank: int, world_size: int) -> range:
    """detectron2's InferenceSampler shard: contiguous, unpadded, sizes differ by at most one, earlier ranks larger."""
    shard, left = divmod(size, world_size)
    sizes = [shard + int(r < left) for r in range(world_size)]
    begin = sum(sizes[:rank])
    return range(begin, begin + sizes[rank])


class InferenceSampler(Sampler[int]):
    """Yields this rank's contiguous shard of ``range(size)``; over all ranks every index appears exactly once."""

    def __init__(self, size: int, *, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"invalid rank={rank}, world_size={world_size}")
        self.indices = inference_shard(size, rank, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class CocoDataModule(pl.LightningDataModule):
    """COCO instance-segmentation jsons -> detectron2-style training stream and sharded val/test loaders."""

    def __init__(
        self,
        train_json: str | None = None,
        train_images: str | None = None,
        val_json: str | None = None,
        val_images: str | None = None,
        test_json: str | None = None,
        test_images: str | None = None,
        batch_size: int = 4,
        num_workers: int = 2,
        min_size_train: int = 512,
        max_size_train: int = 512,
        min_size_test: int = 512,
        max_size_test: int = 512,
        filter_empty_annotations: bool = True,
        aspect_ratio_grouping: bool = True,
        seed: int = 0,
        allow_outside_root: bool = False,
        window_center: float = LUNG_CT.center,
        window_width: float = LUNG_CT.width,
        intensity_offset: float = LUNG_CT.intensity_offset,
    ) -> None:
        """Args:
        train_json, train_images: training json and the folder its file names are relative to.
        val_json, val_images: validation json and image folder (evaluated after training).
        test_json, test_images: test json and image folder.
        batch_size: training images per batch per process (detectron2's IMS_PER_BATCH / world size).
        num_workers: DataLoader worker processes per loader.
        min_size_train, max_size_train: training ResizeShortestEdge sizes (INPUT.MIN/MAX_SIZE_TRAIN).
        min_size_test, max_size_test: inference ResizeShortestEdge sizes (INPUT.MIN/MAX_SIZE_TEST).
        filter_empty_annotations: drop training images without a non-crowd annotation
            (DATALOADER.FILTER_EMPTY_ANNOTATIONS).
        aspect_ratio_grouping: never mix landscape and portrait images in a batch (DATALOADER.ASPECT_RATIO_GROUPING).
        seed: seed of the training permutation stream (the same on every rank).
        allow_outside_root: accept json file names that resolve outside their image folder.
        window_center, window_width: the HU window of 16-bit (and 32-bit) slices; 8-bit images are read as they are.
        intensity_offset: 16-bit slices store HU + this value (1024 in the usual CT export).
        """
        super().__init__()
        for name, json_path, images in (
            ("train", train_json, train_images),
            ("val", val_json, val_images),
            ("test", test_json, test_images),
        ):
            if (json_path is None) != (images is None):
                raise ConfigError(f"give both --data.{name}_json and --data.{name}_images, or neither")
        self.train_json, self.train_images = train_json, train_images
        self.val_json, self.val_images = val_json, val_images
        self.test_json, self.test_images = test_json, test_images
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.min_size_train, self.max_size_train = min_size_train, max_size_train
        self.min_size_test, self.max_size_test = min_size_test, max_size_test
        self.filter_empty_annotations = filter_empty_annotations
        self.aspect_ratio_grouping = aspect_ratio_grouping
        self.seed = seed
        self.allow_outside_root = allow_outside_root
        self.window = CtWindow(window_center, window_width, intensity_offset)
        self._categories: list[Category] | None = None
        self._splits: dict[str, CocoSplit] = {}
        self._train_batches_consumed = 0

    @property
    def categories(self) -> list[Category]:
        """The categories with their model labels, from the first json given (train, else val, else test)."""
        if self._categories is None:
            first = next((j for j in (self.train_json, self.val_json, self.test_json) if j is not None), None)
            if first is None:
                raise ConfigError("no dataset: give --data.train_json, --data.val_json or --data.test_json")
            self._categories = read_categories(first)
        return self._categories

    @property
    def num_classes(self) -> int:
        """Number of foreground classes K (the model has K + 1 outputs with background)."""
        return len(self.categories)

    def _split(self, name: str) -> CocoSplit:
        if name not in self._splits:
            json_path, images = getattr(self, f"{name}_json"), getattr(self, f"{name}_images")
            if json_path is None:
                raise ConfigError(f"no {name} split: give --data.{name}_json and --data.{name}_images")
            split = load_coco_json(json_path, images, allow_outside_root=self.allow_outside_root)
            if split.categories != self.categories:
                raise CocoFormatError(
                    f"{json_path}: categories {[(c.id, c.name) for c in split.categories]} differ from "
                    f"{[(c.id, c.name) for c in self.categories]} of the first json; labels would not match"
                )
            self._splits[name] = split
        return self._splits[name]

    @property
    def train_split(self) -> CocoSplit:
        return self._split("train")

    @property
    def val_split(self) -> CocoSplit:
        """The validation json as loaded (the evaluator reads its ground truth from ``val_split.json_path``)."""
        return self._split("val")

    @property
    def test_split(self) -> CocoSplit:
        """The test json as loaded (the evaluator reads its ground truth from ``test_split.json_path``)."""
        return self._split("test")

    def setup(self, stage: str) -> None:
        """Load (and validate) the jsons the stage needs; errors surface here rather than inside a worker."""
        if stage == "fit":
            names = ["train"] + (["val"] if self.val_json else [])
        elif stage == "validate":
            names = ["val"]
        else:
            names = ["test"]
        for name in names:
            self._split(name)

    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _loader_kwargs(self) -> dict[str, Any]:
        return {
            "num_workers": self.num_workers,
            "collate_fn": collate,
            "pin_memory": torch.cuda.is_available(),
            "persistent_workers": self.num_workers > 0,
        }

    def train_dataloader(self) -> DataLoader:
        """The endless, orientation-grouped training stream of this rank (resumes after consumed batches)."""
        split = self.train_split
        images = filter_images_without_annotations(split.images) if self.filter_empty_annotations else split.images
        dataset = CocoInstanceDataset(
            images,
            split.categories,
            training=True,
            min_size=self.min_size_train,
            max_size=self.max_size_train,
            window=self.window,
        )
        rank, world_size = self._rank_world()
        sampler = GroupedBatchSampler(
            [r.width > r.height for r in images],
            self.batch_size,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
            group_by_aspect=self.aspect_ratio_grouping,
            start_batch=self._train_batches_consumed,
        )
        return DataLoader(dataset, batch_sampler=sampler, **self._loader_kwargs())

    def _inference_loader(self, split: CocoSplit) -> DataLoader:
        dataset = CocoInstanceDataset(
            split.images,
            split.categories,
            training=False,
            min_size=self.min_size_test,
            max_size=self.max_size_test,
            with_targets=True,
            window=self.window,
        )
        rank, world_size = self._rank_world()
        sampler = InferenceSampler(len(dataset), rank=rank, world_size=world_size)
        return DataLoader(dataset, batch_size=1, sampler=sampler, **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader | list:
        """This rank's unpadded shard of the val images, batch size 1 (no loader, so no validation, without val)."""
        return self._inference_loader(self.val_split) if self.val_json is not None else []

    def test_dataloader(self) -> DataLoader | list:
        """This rank's unpadded shard of the test images, batch size 1."""
        return self._inference_loader(self.test_split) if self.test_json is not None else []

    def state_dict(self) -> dict[str, int]:
        """Saved in Lightning checkpoints: how many training batches the loop has consumed (not just prefetched)."""
        consumed = self._train_batches_consumed
        if self.trainer is not None:
            consumed = max(consumed, self.trainer.fit_loop.epoch_loop.batch_progress.total.processed)
        return {"train_batches_consumed": consumed}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """On resume, the next ``train_dataloader`` continues the same stream after the consumed batches."""
        self._train_batches_consumed = int(state_dict["train_batches_consumed"])
