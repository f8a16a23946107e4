"""The datasets and the LightningDataModule that serve detectron2's training stream and sharded inference loaders.

Why this exists: detectron2's loaders differ from Lightning's defaults (an endless seeded stream instead of epochs,
orientation-grouped batches, unpadded inference shards, augmentation drawn per image; see ``samplers.py`` and
``augmentation.py``), so the trainer runs with ``use_distributed_sampler=False`` and the sharding is done here.
Source: ``detectron2/data/build.py`` (FILTER_EMPTY_ANNOTATIONS, the training and test loaders).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal, NamedTuple

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from segmentation.data.augmentation import Augmentation, CropType, Flip, ImageTransform, Sampling
from segmentation.data.coco import Category, CocoFormatError, CocoSplit, ImageRecord, load_coco_json
from segmentation.data.images import LUNG_CT, CtWindow
from segmentation.data.mapper import map_for_inference, map_for_training
from segmentation.data.samplers import GroupedBatchSampler, InferenceSampler, StreamItem, repeat_factors
from segmentation.errors import ConfigError


def filter_images_without_annotations(images: Sequence[ImageRecord]) -> list[ImageRecord]:
    """detectron2's FILTER_EMPTY_ANNOTATIONS: drop images that have no non-crowd annotation.

    An image whose only annotation is an empty (area-0) mask still has a non-crowd annotation and is kept, as in
    detectron2; the mapper then drops that instance and the image trains with zero targets.
    """
    return [r for r in images if any(not a["iscrowd"] for a in r.annotations)]


class SplitSource(NamedTuple):
    """One split the datamodule was given: its name (train, val or test), its json and its image folder."""

    name: str
    json_path: str
    image_root: str


class CocoInstanceDataset(Dataset):
    """Map-style dataset of inference inputs: index -> ``map_for_inference`` output for one image record."""

    def __init__(
        self,
        images: Sequence[ImageRecord],
        categories: Sequence[Category],
        *,
        min_size: int,
        max_size: int,
        with_targets: bool = False,
        window: CtWindow = LUNG_CT,
    ) -> None:
        """Args:
        images: the records to serve, in index order.
        categories: the split's categories (json id -> label).
        min_size, max_size: detectron2's test-time ResizeShortestEdge sizes.
        with_targets: also put the training target in ``info["target"]`` (validation loss).
        window: how 16-bit slices are windowed.
        """
        self.images = list(images)
        self.categories = list(categories)
        self.min_size = min_size
        self.max_size = max_size
        self.with_targets = with_targets
        self.window = window

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        categories = self.categories if self.with_targets else None
        return map_for_inference(self.images[index], self.min_size, self.max_size, categories, self.window)


class TrainingDataset(Dataset):
    """Training samples: ``StreamItem(index, position)`` -> ``map_for_training`` under that sample's own draw.

    The crop, size and flip are drawn from a generator seeded with ``(seed, position)``: the same sample of the
    stream gets the same augmentation whichever worker maps it, and after a resume.
    """

    def __init__(
        self,
        images: Sequence[ImageRecord],
        categories: Sequence[Category],
        augmentation: Augmentation,
        *,
        seed: int = 0,
        window: CtWindow = LUNG_CT,
    ) -> None:
        self.images = list(images)
        self.categories = list(categories)
        self.augmentation = augmentation
        self.seed = seed
        self.window = window

    def __len__(self) -> int:
        return len(self.images)

    def transform(self, item: StreamItem) -> ImageTransform:
        """The geometry drawn for one sample of the stream."""
        record = self.images[item.index]
        rng = np.random.default_rng([self.seed, item.position])
        return self.augmentation.draw(record.height, record.width, rng)

    def __getitem__(self, item: StreamItem) -> tuple[torch.Tensor, dict[str, Any]]:
        return map_for_training(self.images[item.index], self.transform(item), self.categories, self.window)


def collate(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """``[(image, target), ...]`` -> ``([images], [targets])``; no padding (the model pads)."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


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
        ims_per_batch: int | None = None,
        num_workers: int = 2,
        min_size_train: int | list[int] = 512,
        max_size_train: int = 512,
        min_size_train_sampling: Sampling = "choice",
        random_flip: Flip = "none",
        crop_type: CropType | None = None,
        crop_size: tuple[float, float] = (0.9, 0.9),
        min_size_test: int = 512,
        max_size_test: int = 512,
        filter_empty_annotations: bool = True,
        aspect_ratio_grouping: bool = True,
        sampler_train: Literal["TrainingSampler", "RepeatFactorTrainingSampler"] = "TrainingSampler",
        repeat_threshold: float = 0.0,
        repeat_sqrt: bool = True,
        seed: int = 0,
        allow_outside_root: bool = False,
        window_center: float = LUNG_CT.center,
        window_width: float = LUNG_CT.width,
        intensity_offset: float = LUNG_CT.intensity_offset,
    ) -> None:
        """The ``--data.*`` options; each argument below is one option's ``--help`` text.

        Args:
            train_json: training COCO instance json.
            train_images: the folder the training json's file names are relative to.
            val_json: validation json (evaluated during and after training; its segm AP picks best.ckpt).
            val_images: the folder the validation json's file names are relative to.
            test_json: test json (evaluated with the final weights).
            test_images: the folder the test json's file names are relative to.
            batch_size: training images per batch per process.
            ims_per_batch: the global training batch, as detectron2's SOLVER.IMS_PER_BATCH: each process takes
                ims_per_batch / world size images (refused when it does not divide); replaces batch_size when given.
            num_workers: DataLoader worker processes per loader.
            min_size_train: training shortest-edge size, or sizes (INPUT.MIN_SIZE_TRAIN, e.g. [480, 512, 544]).
            max_size_train: longest-edge cap of the training resize (INPUT.MAX_SIZE_TRAIN).
            min_size_train_sampling: "choice" draws one of min_size_train per image, "range" a size in
                [min_size_train[0], min_size_train[1]] (INPUT.MIN_SIZE_TRAIN_SAMPLING).
            random_flip: "none", "horizontal" or "vertical": flip each training image with probability 0.5
                (INPUT.RANDOM_FLIP; detectron2's default is horizontal, the recipe's none).
            crop_type: random crop before the resize (INPUT.CROP.TYPE when INPUT.CROP.ENABLED): "relative_range",
                "relative", "absolute" or "absolute_range"; None: no crop. Boxes are then recomputed from the masks.
            crop_size: INPUT.CROP.SIZE: [h, w] fractions for the relative types, pixels ([min, max] for absolute_range).
            min_size_test: inference ResizeShortestEdge shortest-edge size (INPUT.MIN_SIZE_TEST).
            max_size_test: inference ResizeShortestEdge longest-edge cap (INPUT.MAX_SIZE_TEST).
            filter_empty_annotations: drop training images without a non-crowd annotation
                (DATALOADER.FILTER_EMPTY_ANNOTATIONS).
            aspect_ratio_grouping: never mix landscape and portrait images in a batch
                (DATALOADER.ASPECT_RATIO_GROUPING).
            sampler_train: DATALOADER.SAMPLER_TRAIN: "TrainingSampler" (seeded permutations) or
                "RepeatFactorTrainingSampler" (images of rare categories repeated, as for LVIS or imbalanced data).
            repeat_threshold: DATALOADER.REPEAT_THRESHOLD: categories in fewer than this fraction of images repeat.
            repeat_sqrt: DATALOADER.REPEAT_SQRT: repeat by sqrt(threshold / frequency) rather than the ratio itself.
            seed: seed of the training stream and of the augmentation draws (the same on every rank).
            allow_outside_root: accept json file names that resolve outside their image folder.
            window_center: the HU window centre of 16-bit (and 32-bit) slices; 8-bit images are read as they are.
            window_width: the HU window width of 16-bit (and 32-bit) slices.
            intensity_offset: 16-bit slices store HU + this value (1024 in the usual CT export).
        """
        super().__init__()
        given = {"train": (train_json, train_images), "val": (val_json, val_images), "test": (test_json, test_images)}
        for name, (json_path, images) in given.items():
            if (json_path is None) != (images is None):
                raise ConfigError(f"give both --data.{name}_json and --data.{name}_images, or neither")
        self._sources = {name: SplitSource(name, *paths) for name, paths in given.items() if paths[0] is not None}
        self.train_json, self.train_images = train_json, train_images
        self.val_json, self.val_images = val_json, val_images
        self.test_json, self.test_images = test_json, test_images
        self.batch_size = batch_size
        self.ims_per_batch = ims_per_batch
        self.num_workers = num_workers
        sizes = [min_size_train] if isinstance(min_size_train, int) else list(min_size_train)
        self.augmentation = Augmentation(
            tuple(sizes), max_size_train, min_size_train_sampling, random_flip, crop_type, tuple(crop_size)
        )
        self.min_size_test, self.max_size_test = min_size_test, max_size_test
        self.filter_empty_annotations = filter_empty_annotations
        self.aspect_ratio_grouping = aspect_ratio_grouping
        if sampler_train == "RepeatFactorTrainingSampler" and repeat_threshold <= 0:
            raise ConfigError("--data.sampler_train RepeatFactorTrainingSampler needs --data.repeat_threshold > 0")
        self.sampler_train, self.repeat_threshold, self.repeat_sqrt = sampler_train, repeat_threshold, repeat_sqrt
        self.seed = seed
        self.allow_outside_root = allow_outside_root
        self.window = CtWindow(window_center, window_width, intensity_offset)
        self._splits: dict[str, CocoSplit] = {}
        self._train_batches_consumed = 0

    def splits(self) -> list[SplitSource]:
        """The splits given, in train, val, test order."""
        return list(self._sources.values())

    @property
    def categories(self) -> list[Category]:
        """The categories with their model labels, from the first json given (train, else val, else test)."""
        splits = self.splits()
        if not splits:
            raise ConfigError("no dataset: give --data.train_json, --data.val_json or --data.test_json")
        return self._split(splits[0].name).categories

    @property
    def num_classes(self) -> int:
        """Number of foreground classes K (the model has K + 1 outputs with background)."""
        return len(self.categories)

    def keep_loaded(self, name: str, split: CocoSplit) -> None:
        """Serve split ``name`` from records already read (by the data check), instead of reading its json again.

        Raises:
            CocoFormatError: when its categories differ from the first split's (labels would not match).
        """
        first = self.splits()[0].name
        if name != first and split.categories != self.categories:
            raise CocoFormatError(
                f"{self._sources[name].json_path}: categories {[(c.id, c.name) for c in split.categories]} differ from "
                f"{[(c.id, c.name) for c in self.categories]} of the first json; labels would not match"
            )
        # Only val and test are scored against their json object; a training json is not held twice.
        self._splits[name] = replace(split, data=None) if name == "train" else split

    def _split(self, name: str) -> CocoSplit:
        if name not in self._splits:
            source = self._sources.get(name)
            if source is None:
                raise ConfigError(f"no {name} split: give --data.{name}_json and --data.{name}_images")
            split = load_coco_json(source.json_path, source.image_root, allow_outside_root=self.allow_outside_root)
            self.keep_loaded(name, split)
        return self._splits[name]

    def ground_truth(self, name: str) -> dict[str, Any]:
        """The parsed json of split ``val`` or ``test``, for the evaluator (which then does not read the file again)."""
        return self._split(name).data

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
            names = ["train"] + (["val"] if "val" in self._sources else [])
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

    def per_process_batch_size(self, world_size: int) -> int:
        """Training images per batch on each of ``world_size`` processes (from ims_per_batch when given)."""
        if self.ims_per_batch is None:
            return self.batch_size
        if self.ims_per_batch % world_size:
            raise ConfigError(
                f"--data.ims_per_batch {self.ims_per_batch} (detectron2's global SOLVER.IMS_PER_BATCH) does not "
                f"divide among {world_size} processes; choose a multiple of {world_size}"
            )
        return self.ims_per_batch // world_size

    def train_dataloader(self) -> DataLoader:
        """The endless, orientation-grouped training stream of this rank (resumes after consumed batches)."""
        split = self.train_split
        images = filter_images_without_annotations(split.images) if self.filter_empty_annotations else split.images
        dataset = TrainingDataset(images, split.categories, self.augmentation, seed=self.seed, window=self.window)
        rank, world_size = self._rank_world()
        factors = None
        if self.sampler_train == "RepeatFactorTrainingSampler":
            factors = repeat_factors(images, self.repeat_threshold, self.repeat_sqrt)
        sampler = GroupedBatchSampler(
            [r.width > r.height for r in images],
            self.per_process_batch_size(world_size),
            seed=self.seed,
            rank=rank,
            world_size=world_size,
            group_by_aspect=self.aspect_ratio_grouping,
            start_batch=self._train_batches_consumed,
            factors=factors,
        )
        return DataLoader(dataset, batch_sampler=sampler, **self._loader_kwargs())

    def _inference_loader(self, split: CocoSplit) -> DataLoader:
        dataset = CocoInstanceDataset(
            split.images,
            split.categories,
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
        return self._inference_loader(self.val_split) if "val" in self._sources else []

    def test_dataloader(self) -> DataLoader | list:
        """This rank's unpadded shard of the test images, batch size 1."""
        return self._inference_loader(self.test_split) if "test" in self._sources else []

    def state_dict(self) -> dict[str, int]:
        """Saved in Lightning checkpoints: how many training batches the loop has consumed (not just prefetched)."""
        consumed = self._train_batches_consumed
        if self.trainer is not None:
            consumed = max(consumed, self.trainer.fit_loop.epoch_loop.batch_progress.total.processed)
        return {"train_batches_consumed": consumed}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """On resume, the next ``train_dataloader`` continues the same stream after the consumed batches."""
        self._train_batches_consumed = int(state_dict["train_batches_consumed"])
