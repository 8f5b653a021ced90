"""The deterministic streams of sample references that reader slots draw from the data sources.

A reader slot is one dataloader worker of one training process: ``slot = rank * workers + worker``
out of ``world_size * workers``. Each slot draws an endless stream that depends only on (seed,
slot): per source, epoch after epoch, the shard order (reshuffled per epoch), the slot's share of
it (whole shards, or every n-th sample), a shuffle buffer of references; across sources, a seeded
weighted choice per draw. The slots' shares of an epoch are disjoint and together cover it. Since
only references are drawn, a stream can be replayed to any position without reading sample bytes:
that is how a resumed loader catches up.
"""

from __future__ import annotations

import bisect
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from data_tools.errors import UserFacingError
from magma.data.config import SourceConfig
from magma.data.shard_index import SampleRef, ShardIndex, expand_shards, index_shard

logger = logging.getLogger(__name__)

SPLITS = ("auto", "shards", "samples")
CORRUPT_SHARD = "corrupt shard"
SHARD_ORDER_STREAM, SHUFFLE_STREAM, MIXTURE_STREAM = 1, 2, 3  # keep the seeded random streams apart
T = TypeVar("T")


class DataSplitError(UserFacingError, ValueError):
    """A source too small to give every reader slot (processes x dataloader workers) some samples."""


@dataclass(frozen=True)
class ReaderSlots:
    """How a source is shared: ``world_size`` processes times ``workers`` readers each."""

    world_size: int
    workers: int  # dataloader workers per process; 1 when the process reads for itself

    @property
    def count(self) -> int:
        return self.world_size * self.workers

    def slot(self, rank: int, worker: int) -> int:
        return rank * self.workers + worker

    def describe(self) -> str:
        return f"{self.count} reader slots ({self.world_size} processes x {self.workers} dataloader workers)"


@dataclass(frozen=True)
class SourcePlan:
    """One source as the streams read it: its shard files, weight and how its epochs are split over slots."""

    name: str
    shards: tuple[Path, ...]
    weight: float
    split: str  # "shards": whole shards per slot; "samples": every slot takes every n-th sample


def seeded_rng(seed: int, *parts: int) -> np.random.Generator:
    """A random generator fixed by the seed and the parts that name its purpose (stream, slot, epoch...)."""
    return np.random.default_rng([seed % 2**64, *parts])


def plan_source(source: SourceConfig, split: str, slots: ReaderSlots) -> SourcePlan:
    """Expand the source's shards and settle its split; refuse a split that would leave a slot empty."""
    shards = tuple(expand_shards(list(source.shards)))
    if split not in SPLITS:
        raise DataSplitError(f"data.split is {split!r}; use one of {', '.join(SPLITS)}")
    if split == "auto":
        split = "shards" if len(shards) >= slots.count else "samples"
    if split == "shards" and len(shards) < slots.count:
        raise DataSplitError(
            f"source '{source.name}' has {len(shards)} shards for {slots.describe()}, so some slots would get none; "
            "set data.split=samples (or auto), use fewer dataloader workers (data.num_workers), or write more shards"
        )
    if split == "samples":
        samples = 0
        for shard in shards:
            samples += len(index_shard(shard).samples)
            if samples >= slots.count:
                break
        else:
            raise DataSplitError(
                f"source '{source.name}' has {samples} readable samples in {len(shards)} shards, fewer than "
                f"{slots.describe()}, so some slots would read nothing; use fewer dataloader workers "
                "(data.num_workers) or processes, or more data"
            )
    return SourcePlan(name=source.name, shards=shards, weight=float(source.weight), split=split)


def plan_evaluation_source(source: SourceConfig) -> SourcePlan:
    """An evaluation source: read once in shard order, every n-th sample per slot (a slot may get none)."""
    shards = tuple(expand_shards(list(source.shards)))
    return SourcePlan(name=source.name, shards=shards, weight=float(source.weight), split="samples")


def shard_order(plan: SourcePlan, source_index: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The order in which the shards of ``plan`` are read in ``epoch`` (the same for every slot)."""
    if not shuffle:
        return list(range(len(plan.shards)))
    return seeded_rng(seed, SHARD_ORDER_STREAM, source_index, epoch).permutation(len(plan.shards)).tolist()


class ShardOpener:
    """Opens a source's shards for one slot, and counts a damaged shard once over all slots: only its
    owner counts it, the slot its position in the epoch-0 shard order gives it to."""

    def __init__(self, plan: SourcePlan, first_order: Sequence[int], slot: int, slots: int, skipped: Counter) -> None:
        self.plan = plan
        self.skipped = skipped
        self._owned = set(first_order[slot::slots])
        self._reported: set[int] = set()

    def __call__(self, shard: int) -> ShardIndex:
        index = index_shard(self.plan.shards[shard])
        if index.problem is not None and shard in self._owned and shard not in self._reported:
            self._reported.add(shard)
            self.skipped[CORRUPT_SHARD] += 1
            logger.warning(
                "skipping the damaged part of shard '%s' (source '%s'): %s; %d samples before the damage are read",
                index.path,
                self.plan.name,
                index.problem,
                len(index.samples),
            )
        return index


def slot_share(
    plan: SourcePlan, order: Sequence[int], slot: int, slots: int, open_shard: Callable[[int], ShardIndex]
) -> Iterator[SampleRef]:
    """The references of one pass over the shards in ``order`` that belong to ``slot``."""
    if plan.split == "shards":
        for position in range(slot, len(order), slots):
            index = open_shard(order[position])
            for sample in index.samples:
                yield SampleRef(plan.name, index.path, sample)
        return
    seen = 0  # samples of the epoch before this shard
    for shard in order:
        index = open_shard(shard)
        for sample in index.samples[(slot - seen) % slots :: slots]:
            yield SampleRef(plan.name, index.path, sample)
        seen += len(index.samples)


def shuffle_buffered(items: Iterator[T], size: int, rng: np.random.Generator) -> Iterator[T]:
    """Shuffle a stream through a buffer of ``size`` items (0 or 1: keep the stream order)."""
    if size <= 1:
        yield from items
        return
    buffer: list[T] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        pick = int(rng.integers(size))
        yield buffer[pick]
        buffer[pick] = item
    for pick in rng.permutation(len(buffer)).tolist():
        yield buffer[pick]


class SourceStream:
    """The endless references one slot draws from one source, epoch after epoch."""

    def __init__(
        self,
        plan: SourcePlan,
        source_index: int,
        slot: int,
        slots: ReaderSlots,
        seed: int,
        shuffle_shards: bool,
        shuffle_buffer: int,
        skipped: Counter,
    ) -> None:
        self.plan = plan
        self.source_index = source_index
        self.slot = slot
        self.slots = slots
        self.seed = seed
        self.shuffle_shards = shuffle_shards
        self.shuffle_buffer = shuffle_buffer
        self.epoch = 0  # the epoch of the last reference drawn
        self._open = ShardOpener(plan, self._order(0), slot, slots.count, skipped)
        self._refs = self._generate()

    def _order(self, epoch: int) -> list[int]:
        return shard_order(self.plan, self.source_index, self.seed, epoch, self.shuffle_shards)

    def _generate(self) -> Iterator[SampleRef]:
        while True:
            share = slot_share(self.plan, self._order(self.epoch), self.slot, self.slots.count, self._open)
            rng = seeded_rng(self.seed, SHUFFLE_STREAM, self.source_index, self.slot, self.epoch)
            drawn = 0
            for ref in shuffle_buffered(share, self.shuffle_buffer, rng):
                drawn += 1
                yield ref
            if drawn == 0:
                raise DataSplitError(
                    f"source '{self.plan.name}' gave reader slot {self.slot} of {self.slots.describe()} no samples "
                    f"in epoch {self.epoch} ({len(self.plan.shards)} shards, split by {self.plan.split}; they may be "
                    "empty or damaged); use fewer dataloader workers (data.num_workers), more shards, or "
                    "data.split=samples"
                )
            self.epoch += 1

    def __iter__(self) -> Iterator[SampleRef]:
        return self

    def __next__(self) -> SampleRef:
        return next(self._refs)


class MixtureStream:
    """One slot's draws over all sources: each draw picks a source with probability proportional to its
    weight (seeded per slot), then takes that source's next reference."""

    def __init__(self, sources: list[SourceStream], seed: int, slot: int) -> None:
        self.sources = sources
        weights = np.array([stream.plan.weight for stream in sources], dtype=np.float64)
        self._cumulative = (np.cumsum(weights) / weights.sum()).tolist()
        self._rng = seeded_rng(seed, MIXTURE_STREAM, slot)
        self.draws = 0

    def draw(self) -> tuple[SourceStream, SampleRef]:
        """The next reference and the source stream it came from."""
        pick = min(bisect.bisect_right(self._cumulative, float(self._rng.random())), len(self.sources) - 1)
        self.draws += 1
        stream = self.sources[pick]
        return stream, next(stream)

    def skip(self, draws: int) -> None:
        """Replay ``draws`` draws (references only, no sample bytes): the catch-up of a resumed stream."""
        for _ in range(draws):
            self.draw()


def evaluation_share(plan: SourcePlan, slot: int, slots: int, skipped: Counter) -> Iterator[SampleRef]:
    """One pass, in shard order, over the samples of an evaluation source that belong to ``slot``."""
    order = list(range(len(plan.shards)))
    yield from slot_share(plan, order, slot, slots, ShardOpener(plan, order, slot, slots, skipped))
