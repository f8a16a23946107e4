"""detectron2's training and inference sampling: which image each rank sees, in which order and batch.

Why this exists: detectron2 does not train in epochs. Its training loader is an infinite stream of seeded random
epochs (a permutation of the images, or with ``RepeatFactorTrainingSampler`` of the images repeated by the rarity of
their categories), split across ranks by striding, and batched per orientation (``w > h`` or not) so that a batch
never mixes landscape and portrait images (mixed batches pad to a square and add easy negative anchors, which
changes ``loss_rpn_cls``). Its test loader gives every image to exactly one rank, in contiguous unpadded shards
(padding shards with duplicates, as ``DistributedSampler`` does, changes AP).

Sources: ``detectron2/data/samplers/distributed_sampler.py`` (TrainingSampler, RepeatFactorTrainingSampler,
InferenceSampler), ``detectron2/data/common.py`` (AspectRatioGroupedDataset).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
from torch.utils.data import Sampler

from segmentation.data.coco import ImageRecord


class StreamItem(NamedTuple):
    """One training sample: the dataset index, and its position in the global stream (which seeds its draws)."""

    index: int
    position: int


def repeat_factors(images: Sequence[ImageRecord], threshold: float, sqrt: bool = True) -> list[float]:
    """detectron2's ``repeat_factors_from_category_frequency``: how often each image is repeated per epoch.

    A category present in a fraction ``f`` of the images gets ``r = max(1, sqrt(threshold / f))`` (without the square
    root when ``sqrt`` is False); an image takes the largest ``r`` of its categories, 1 with no annotation.
    """
    present = [{a["category_id"] for a in r.annotations} for r in images]
    frequency: dict[int, int] = {}
    for categories in present:
        for c in categories:
            frequency[c] = frequency.get(c, 0) + 1
    rate = {c: threshold / (n / len(images)) for c, n in frequency.items()}
    repeat = {c: max(1.0, math.sqrt(r) if sqrt else r) for c, r in rate.items()}
    return [max((repeat[c] for c in categories), default=1.0) for categories in present]


class GroupedBatchSampler(Sampler[list[StreamItem]]):
    """detectron2's TrainingSampler (or RepeatFactorTrainingSampler) + AspectRatioGroupedDataset, deterministic and
    resumable, as one batch sampler.

    The stream is epoch after epoch drawn from a generator seeded with ``seed`` (the same on every rank): a
    ``torch.randperm(n)`` of the indices, or, with ``factors``, each index repeated ``int(r)`` times plus once more
    with probability ``r - int(r)``, then shuffled, as detectron2 does. Rank ``r`` of ``world_size`` takes stream
    positions ``r, r + world_size, ...``. With grouping on, each index goes to one of two buckets by the orientation
    of its ORIGINAL (json) size, ``w > h`` or not, and a bucket is emitted as a batch as soon as it holds
    ``batch_size`` indices. With grouping off, consecutive indices form batches.

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
        factors: Sequence[float] | None = None,
    ) -> None:
        """Args:
        landscape: per dataset index, whether the image's original width > height.
        batch_size: images per batch on this rank.
        seed: seed of the shared stream.
        rank, world_size: this process's shard of the stream.
        group_by_aspect: detectron2's ASPECT_RATIO_GROUPING.
        start_batch: number of batches already consumed; iteration resumes after them.
        factors: per dataset index, RepeatFactorTrainingSampler's repeat factor (None: TrainingSampler).
        """
        if not landscape:
            raise ValueError("cannot sample training batches from an empty dataset")
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"invalid batch_size={batch_size}, rank={rank}, world_size={world_size}")
        if factors is not None and len(factors) != len(landscape):
            raise ValueError(f"{len(factors)} repeat factors for {len(landscape)} images")
        self.landscape = [bool(x) for x in landscape]
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.group_by_aspect = group_by_aspect
        self.batches_yielded = start_batch
        self.factors = None if factors is None else torch.tensor(factors, dtype=torch.float32)

    def _epoch(self, generator: torch.Generator) -> list[int]:
        if self.factors is None:
            return torch.randperm(len(self.landscape), generator=generator).tolist()
        whole = torch.trunc(self.factors)
        repeats = whole + (torch.rand(len(self.factors), generator=generator) < self.factors - whole).float()
        indices = torch.repeat_interleave(torch.arange(len(self.factors)), repeats.long())
        return indices[torch.randperm(len(indices), generator=generator)].tolist()

    def _stream(self) -> Iterator[StreamItem]:
        generator = torch.Generator()
        generator.manual_seed(self.seed)
        epochs = (self._epoch(generator) for _ in itertools.count())
        stream = (StreamItem(i, p) for p, i in enumerate(itertools.chain.from_iterable(epochs)))
        return itertools.islice(stream, self.rank, None, self.world_size)

    def _batches(self) -> Iterator[list[StreamItem]]:
        if not self.group_by_aspect:
            items = self._stream()
            while True:
                yield list(itertools.islice(items, self.batch_size))
        buckets: tuple[list[StreamItem], list[StreamItem]] = ([], [])
        for item in self._stream():
            bucket = buckets[0 if self.landscape[item.index] else 1]
            bucket.append(item)
            if len(bucket) == self.batch_size:
                yield bucket[:]
                bucket.clear()

    def __iter__(self) -> Iterator[list[StreamItem]]:
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
