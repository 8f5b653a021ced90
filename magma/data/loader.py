"""The training and evaluation data loaders: reference streams (``magma.data.stream``) read, encoded
and collated into batches in torch dataloader workers.

Each worker plays one reader slot and reports, with every batch, how many references it has drawn
and what it has skipped. The main process keeps the report of the last batch it received from each
worker: that is the resume state. A resumed worker replays its stream's references up to that point
(no sample bytes read), and since a torch DataLoader takes batches from workers 0, 1, ..., W-1 in
turn, after k batches the new worker i plays the role of old worker (i + k) % W, so the next batch
comes from where the uninterrupted run would have taken it.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_tools.config_files import ConfigError
from data_tools.errors import UserFacingError
from magma.data.config import DataConfig, SourceConfig
from magma.data.records import RawSample, SampleRejected, TrainBatch
from magma.data.shard_index import SampleRef, read_raw_sample
from magma.data.stream import (
    MixtureStream,
    ReaderSlots,
    SourcePlan,
    SourceStream,
    evaluation_share,
    plan_evaluation_source,
    plan_source,
)
from magma.processor import EncodedSample, ModelInputs

Encode = Callable[[RawSample], EncodedSample]
Collate = Callable[[list[EncodedSample]], ModelInputs]
STATE_FORMAT = "magma.data.TrainLoader/1"


class DataConfigError(ConfigError):
    """A data setting the loader cannot work with."""


class DataStateMismatchError(UserFacingError, ValueError):
    """A saved loader state from another data setup than the one it is given to."""


class AllSamplesRejectedError(UserFacingError, RuntimeError):
    """A source of which a reader slot rejected every sample for a whole epoch: no batch could ever come."""


@dataclass
class WorkerProgress:
    """Where one worker stands as of the last batch the main process received from it."""

    draws: int = 0  # references drawn, rejected ones included
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> samples skipped


@dataclass
class Delivery:
    """What a worker sends the main process: a batch (None for the last report of an evaluation pass)
    with the worker's progress, or the error that stopped it."""

    role: int
    progress: WorkerProgress
    batch: TrainBatch | None = None
    error: UserFacingError | None = None


def encode_reference(ref: SampleRef, encode: Encode, skipped: Counter) -> tuple[RawSample, EncodedSample] | None:
    """Read and encode one sample; a rejected sample is counted under its reason and gives None."""
    try:
        raw = read_raw_sample(ref)
        return raw, encode(raw)
    except SampleRejected as rejected:
        skipped[rejected.reason] += 1
        return None


def collate_batch(samples: list[tuple[RawSample, EncodedSample]], collate: Collate) -> TrainBatch:
    return TrainBatch(
        inputs=collate([encoded for _, encoded in samples]),
        sample_ids=[raw.sample_id for raw, _ in samples],
        sources=[raw.source for raw, _ in samples],
    )


def sum_skipped(reports: Iterable[dict[str, int]]) -> dict[str, int]:
    total: Counter = Counter()
    for report in reports:
        total.update(report)
    return dict(sorted(total.items()))


def _quiet_tokenizers(worker_id: int) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # a forked worker must not start tokenizer threads


def _delivered(delivery: Delivery) -> Delivery:
    return delivery


def torch_data_loader(dataset: IterableDataset, data: DataConfig, persistent: bool) -> DataLoader:
    """A DataLoader that runs ``dataset`` (which batches by itself) in ``data.num_workers`` workers."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    workers = data.num_workers
    return DataLoader(
        dataset,
        batch_size=None,
        collate_fn=_delivered,
        num_workers=workers,
        prefetch_factor=data.prefetch_factor if workers else None,
        persistent_workers=persistent and workers > 0,
        worker_init_fn=_quiet_tokenizers if workers else None,
    )


def _worker_id() -> int:
    info = get_worker_info()
    return info.id if info is not None else 0


class TrainStreamDataset(IterableDataset):
    """The endless batches of the reader slots of one process; worker i plays role (i + role_offset) % W."""

    def __init__(
        self,
        plans: list[SourcePlan],
        data: DataConfig,
        rank: int,
        slots: ReaderSlots,
        role_offset: int,
        progress: list[WorkerProgress],
        encode: Encode,
        collate: Collate,
    ) -> None:
        self.plans = plans
        self.data = data
        self.rank = rank
        self.slots = slots
        self.role_offset = role_offset
        self.progress = progress
        self.encode = encode
        self.collate = collate

    def __iter__(self) -> Iterator[Delivery]:
        role = (_worker_id() + self.role_offset) % self.slots.workers
        start = self.progress[role]
        try:
            yield from self._batches(role, start)
        except UserFacingError as err:  # sent, not raised, so the main process shows the message alone
            yield Delivery(role=role, progress=start, error=err)

    def _batches(self, role: int, start: WorkerProgress) -> Iterator[Delivery]:
        data, slot = self.data, self.slots.slot(self.rank, role)
        skipped: Counter = Counter()
        streams = [
            SourceStream(plan, index, slot, self.slots, data.seed, data.shuffle_shards, data.shuffle_buffer, skipped)
            for index, plan in enumerate(self.plans)
        ]
        mixture = MixtureStream(streams, data.seed, slot)
        mixture.skip(start.draws)
        skipped.clear()
        skipped.update(start.skipped)
        accepted_epoch = [stream.epoch for stream in streams]  # last epoch in which each source gave a sample
        while True:
            samples = []
            while len(samples) < data.batch_size:
                stream, ref = mixture.draw()
                sample = encode_reference(ref, self.encode, skipped)
                if sample is not None:
                    accepted_epoch[stream.source_index] = stream.epoch
                    samples.append(sample)
                elif stream.epoch > accepted_epoch[stream.source_index] + 1:
                    reasons = ", ".join(f"{reason}: {count}" for reason, count in skipped.most_common(3))
                    raise AllSamplesRejectedError(
                        f"reader slot {slot} rejected every sample of source '{stream.plan.name}' for a whole epoch "
                        f"(skipped so far: {reasons}); fix or rewrite that source's shards, or remove it from "
                        "data.sources"
                    )
            progress = WorkerProgress(draws=mixture.draws, skipped=dict(skipped))
            yield Delivery(role=role, progress=progress, batch=collate_batch(samples, self.collate))


def _check_data(data: DataConfig, rank: int, world_size: int) -> None:
    checks = [
        (data.batch_size >= 1, f"data.batch_size is {data.batch_size}; use 1 or more"),
        (data.num_workers >= 0, f"data.num_workers is {data.num_workers}; use 0 (read in the process) or more"),
        (data.prefetch_factor >= 1, f"data.prefetch_factor is {data.prefetch_factor}; use 1 or more"),
        (data.shuffle_buffer >= 0, f"data.shuffle_buffer is {data.shuffle_buffer}; use 0 (stream order) or more"),
        (world_size >= 1, f"world_size is {world_size}; use 1 or more"),
        (0 <= rank < world_size, f"rank is {rank} with world_size {world_size}; use 0 <= rank < world_size"),
    ]
    for passed, message in checks:
        if not passed:
            raise DataConfigError(message)


def check_sources(sources: list[SourceConfig], field_name: str, weighted: bool) -> None:
    names = [source.name for source in sources]
    for source in sources:
        if not source.name or source.name == "???":
            raise DataConfigError(f"a source in {field_name} has no name; give every source a unique `name`")
        if not source.shards:
            raise DataConfigError(f"source '{source.name}' lists no shards; set its `shards` (paths, globs or braces)")
        if names.count(source.name) > 1:
            raise DataConfigError(f"{field_name} names '{source.name}' twice; give every source a unique `name`")
        if weighted and not (math.isfinite(source.weight) and source.weight > 0):
            raise DataConfigError(
                f"source '{source.name}' has weight {source.weight}; weights are sampling proportions and must be "
                "positive: give it a weight > 0, or remove the source from data.sources"
            )


def _shard_list_digest(plan: SourcePlan) -> str:
    return hashlib.sha1("\n".join(path.name for path in plan.shards).encode()).hexdigest()[:16]


class TrainLoader:
    """Endless training batches for one process; ``state_dict()`` after k batches lets a new loader
    continue with batch k + 1 exactly."""

    def __init__(
        self,
        plans: list[SourcePlan],
        data: DataConfig,
        encode: Encode,
        collate: Collate,
        rank: int,
        world_size: int,
        state: dict[str, Any] | None = None,
    ) -> None:
        self.plans = plans
        self.data = data
        self.encode = encode
        self.collate = collate
        self.rank = rank
        self.slots = ReaderSlots(world_size=world_size, workers=max(data.num_workers, 1))
        self.batches_yielded = 0
        self.samples_by_source: dict[str, int] = {plan.name: 0 for plan in plans}
        self._progress = [WorkerProgress() for _ in range(self.slots.workers)]
        if state is not None:
            self._load(state)

    @property
    def skipped(self) -> dict[str, int]:
        """Samples skipped so far by reason, as of the batches this process has received."""
        return sum_skipped(progress.skipped for progress in self._progress)

    def __iter__(self) -> Iterator[TrainBatch]:
        dataset = TrainStreamDataset(
            self.plans,
            self.data,
            self.rank,
            self.slots,
            role_offset=self.batches_yielded % self.slots.workers,
            progress=list(self._progress),
            encode=self.encode,
            collate=self.collate,
        )
        for delivery in torch_data_loader(dataset, self.data, persistent=False):
            if delivery.error is not None:
                raise delivery.error
            self._progress[delivery.role] = delivery.progress
            self.batches_yielded += 1
            for source in delivery.batch.sources:
                self.samples_by_source[source] += 1
            yield delivery.batch

    def setup(self) -> dict[str, Any]:
        """What a saved state is only valid for: the data settings, sources and process layout."""
        data = self.data
        return {
            "rank": self.rank,
            "world_size": self.slots.world_size,
            "num_workers": data.num_workers,
            "batch_size": data.batch_size,
            "seed": data.seed,
            "split": data.split,
            "shuffle_shards": data.shuffle_shards,
            "shuffle_buffer": data.shuffle_buffer,
            "max_length": data.max_length,
            "sources": [
                {
                    "name": plan.name,
                    "weight": plan.weight,
                    "shards": len(plan.shards),
                    "names": _shard_list_digest(plan),
                }
                for plan in self.plans
            ],
        }

    def state_dict(self) -> dict[str, Any]:
        """A JSON-able resume position: batches yielded, and per worker role its draws and skip counts."""
        return {
            "format": STATE_FORMAT,
            "setup": self.setup(),
            "batches": self.batches_yielded,
            "samples_by_source": dict(self.samples_by_source),
            "workers": [{"draws": progress.draws, "skipped": dict(progress.skipped)} for progress in self._progress],
        }

    def _load(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise DataStateMismatchError(
                f"the data-loader state has format {found!r}, not {STATE_FORMAT!r}; pass the dict that "
                "TrainLoader.state_dict() returned, or start the data stream afresh (no state)"
            )
        saved, current = state["setup"], self.setup()
        differences = [
            f"{name}: saved {saved.get(name)!r}, now {value!r}"
            for name, value in current.items()
            if saved.get(name) != value
        ]
        if differences:
            raise DataStateMismatchError(
                f"the data-loader state was saved with another setup ({'; '.join(differences)}); resume with the "
                "same data settings, world size and data.num_workers, or start the data stream afresh (no state)"
            )
        self.batches_yielded = int(state["batches"])
        self.samples_by_source.update({name: int(count) for name, count in state["samples_by_source"].items()})
        self._progress = [
            WorkerProgress(draws=int(worker["draws"]), skipped={k: int(v) for k, v in worker["skipped"].items()})
            for worker in state["workers"]
        ]


class EvalStreamDataset(IterableDataset):
    """One pass over this process's share of each evaluation source, batched per source."""

    def __init__(
        self, plans: list[SourcePlan], data: DataConfig, rank: int, slots: ReaderSlots, encode: Encode, collate: Collate
    ) -> None:
        self.plans = plans
        self.data = data
        self.rank = rank
        self.slots = slots
        self.encode = encode
        self.collate = collate

    def __iter__(self) -> Iterator[Delivery]:
        role = _worker_id()
        slot = self.slots.slot(self.rank, role)
        skipped: Counter = Counter()
        drawn = 0
        for plan in self.plans:
            samples = []
            for ref in evaluation_share(plan, slot, self.slots.count, skipped):
                drawn += 1
                sample = encode_reference(ref, self.encode, skipped)
                if sample is not None:
                    samples.append(sample)
                if len(samples) == self.data.batch_size:
                    yield Delivery(role, WorkerProgress(drawn, dict(skipped)), collate_batch(samples, self.collate))
                    samples = []
            if samples:
                yield Delivery(role, WorkerProgress(drawn, dict(skipped)), collate_batch(samples, self.collate))
        yield Delivery(role, WorkerProgress(drawn, dict(skipped)))  # the final counts, even with no batch


class EvalLoader:
    """Finite evaluation batches: each iteration is one pass over this process's share of the sources
    (no shuffling; sample ``g`` of a source goes to reader slot ``g % slots``)."""

    def __init__(
        self, plans: list[SourcePlan], data: DataConfig, encode: Encode, collate: Collate, rank: int, world_size: int
    ) -> None:
        self.plans = plans
        slots = ReaderSlots(world_size=world_size, workers=max(data.num_workers, 1))
        dataset = EvalStreamDataset(plans, data, rank, slots, encode, collate)
        self._loader = torch_data_loader(dataset, data, persistent=True)
        self._skipped_by_role: dict[int, dict[str, int]] = {}

    @property
    def skipped(self) -> dict[str, int]:
        """Samples skipped by reason in the current (or last) pass."""
        return sum_skipped(self._skipped_by_role.values())

    def __iter__(self) -> Iterator[TrainBatch]:
        self._skipped_by_role = {}
        for delivery in self._loader:
            self._skipped_by_role[delivery.role] = delivery.progress.skipped
            if delivery.batch is not None:
                yield delivery.batch


def build_train_loader(
    data: DataConfig,
    encode: Encode,
    collate: Collate,
    rank: int = 0,
    world_size: int = 1,
    state: dict[str, Any] | None = None,
) -> TrainLoader:
    """The endless, weighted, resumable training stream of process ``rank`` of ``world_size``."""
    _check_data(data, rank, world_size)
    if not data.sources:
        raise DataConfigError("data.sources is empty; add at least one source with `name`, `shards` and `weight`")
    check_sources(data.sources, "data.sources", weighted=True)
    slots = ReaderSlots(world_size=world_size, workers=max(data.num_workers, 1))
    plans = [plan_source(source, data.split, slots) for source in data.sources]
    return TrainLoader(plans, data, encode, collate, rank, world_size, state)


def build_eval_loader(
    sources: list[SourceConfig],
    data: DataConfig,
    encode: Encode,
    collate: Collate,
    rank: int = 0,
    world_size: int = 1,
) -> EvalLoader:
    """One pass per iteration over process ``rank``'s share of each evaluation source."""
    _check_data(data, rank, world_size)
    check_sources(sources, "data.eval_sources", weighted=False)
    plans = [plan_evaluation_source(source) for source in sources]
    return EvalLoader(plans, data, encode, collate, rank, world_size)
