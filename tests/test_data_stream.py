"""The training stream on real shards: weighted mixing, splitting over ranks x real dataloader workers
without duplicates, exact resume, skipping damaged data with counts, and clear errors for bad setups."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_tools.shards import ShardWriter
from magma.data.config import DataConfig, SourceConfig
from magma.data.encoding import SampleEncoder
from magma.data.loader import (
    AllSamplesRejectedError,
    DataConfigError,
    DataStateMismatchError,
    build_eval_loader,
    build_train_loader,
)
from magma.data.shard_index import MissingShardError, index_shard
from magma.data.stream import DataSplitError


def record(sample_id: str, images: int = 0, answer: str | None = None) -> dict:
    question = "<image>\n" * images + "Which mark is the red box?"
    answer = answer or f"click [{sample_id}]"
    return {"id": sample_id, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}


def write_source(directory: Path, name: str, shards: int, per_shard: int, images: bool = False) -> list[str]:
    """Write ``shards`` x ``per_shard`` samples with ids ``{name}{n}``; returns the ids in order."""
    ids = [f"{name}{number}" for number in range(shards * per_shard)]
    with ShardWriter(directory / name, max_samples_per_shard=per_shard) as writer:
        for number, sample_id in enumerate(ids):
            pixels = np.full((16, 24, 3), number % 250, dtype=np.uint8)
            writer.write(record(sample_id, int(images)), [pixels] if images else [])
    return ids


def source(directory: Path, name: str, weight: float = 1.0) -> SourceConfig:
    return SourceConfig(name=name, shards=[str(directory / name / "shard-*.tar")], weight=weight)


def take(loader, count: int) -> list:
    iterator = iter(loader)
    return [next(iterator) for _ in range(count)]


@pytest.fixture(scope="module")
def encode(tiny_processor) -> SampleEncoder:
    return SampleEncoder(tiny_processor, DataConfig(max_length=96))


def test_sources_are_mixed_by_weight(tmp_path, encode, tiny_processor):
    write_source(tmp_path, "ui", shards=2, per_shard=25)
    write_source(tmp_path, "robot", shards=2, per_shard=25)
    data = DataConfig(
        sources=[source(tmp_path, "ui", 0.3), source(tmp_path, "robot", 0.7)], batch_size=50, num_workers=0
    )
    loader = build_train_loader(data, encode, tiny_processor.collate)
    batches = take(loader, 40)
    drawn = Counter(name for batch in batches for name in batch.sources)
    assert drawn == loader.samples_by_source and sum(drawn.values()) == 2000
    assert abs(drawn["ui"] / 2000 - 0.3) < 0.03
    pairs = [pair for batch in batches for pair in zip(batch.sample_ids, batch.sources, strict=True)]
    assert all(sample_id.startswith(name) for sample_id, name in pairs)
    assert loader.skipped == {}


@pytest.mark.parametrize("split", ["shards", "samples"])
def test_two_ranks_with_two_workers_read_each_sample_once_per_epoch(tmp_path, encode, tiny_processor, split):
    ids = write_source(tmp_path, "web", shards=4, per_shard=6)  # 24 samples: 6 per reader slot and epoch
    data = DataConfig(sources=[source(tmp_path, "web")], batch_size=3, num_workers=2, shuffle_buffer=4, split=split)
    per_rank = []
    for rank in range(2):
        loader = build_train_loader(data, encode, tiny_processor.collate, rank=rank, world_size=2)
        per_rank.append([sample_id for batch in take(loader, 8) for sample_id in batch.sample_ids])  # two epochs
    first_epoch = [sample_id for rank_ids in per_rank for sample_id in rank_ids[:12]]
    assert sorted(first_epoch) == sorted(ids)  # nothing twice, nothing missing
    assert Counter(per_rank[0] + per_rank[1]) == dict.fromkeys(ids, 2)  # and so is the second epoch


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resumed_loader_continues_with_the_same_batches(tmp_path, encode, tiny_processor, num_workers):
    write_source(tmp_path, "ui", shards=3, per_shard=8, images=True)
    write_source(tmp_path, "chat", shards=2, per_shard=9)
    with ShardWriter(tmp_path / "chat", prefix="broken") as writer:  # rejected samples count into the state
        for number in range(4):
            writer.write(record(f"bad{number}", 1), [b"\xff\xd8\xff\xe0 not really a jpeg"])
    sources = [source(tmp_path, "ui", 2.0), source(tmp_path, "chat", 1.0)]
    sources[1].shards.append(str(tmp_path / "chat" / "broken-*.tar"))
    data = DataConfig(sources=sources, batch_size=3, num_workers=num_workers, shuffle_buffer=5, seed=7)

    loader = build_train_loader(data, encode, tiny_processor.collate)
    iterator = iter(loader)
    before = [next(iterator) for _ in range(5)]
    state = json.loads(json.dumps(loader.state_dict()))
    after = [next(iterator) for _ in range(7)]

    resumed = build_train_loader(data, encode, tiny_processor.collate, state=state)
    assert resumed.samples_by_source == {name: sum(b.sources.count(name) for b in before) for name in ("ui", "chat")}
    replay = take(resumed, 7)
    assert [batch.sample_ids for batch in replay] == [batch.sample_ids for batch in after]
    for ours, theirs in zip(replay, after, strict=True):
        assert torch.equal(ours.inputs.input_ids, theirs.inputs.input_ids)
        assert torch.equal(ours.inputs.pixel_values, theirs.inputs.pixel_values)
    assert resumed.skipped == loader.skipped and loader.skipped["corrupt image"] > 0
    assert resumed.samples_by_source == loader.samples_by_source
    assert take(resumed, 1)[0].sample_ids == next(iterator).sample_ids  # iterating again goes on from there


def write_members(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def png(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), shade, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_damaged_source(directory: Path) -> list[str]:
    """One shard with a bad sample of every kind between good ones, one truncated shard; returns the good ids."""
    good = lambda sample_id: json.dumps(record(sample_id, 1)).encode()  # noqa: E731
    directory.mkdir()
    write_members(
        directory / "shard-000000.tar",
        [
            *[("g0.000.png", png(1)), ("g0.json", good("g0"))],
            *[("badimage.000.jpg", b"\xff\xd8\xff\xe0 truncated"), ("badimage.json", good("badimage"))],
            *[("g1.000.png", png(2)), ("g1.json", good("g1"))],
            *[("badjson.000.png", png(3)), ("badjson.json", b'{"id": "badjson", "conversations": [')],
            *[("g2.000.png", png(4)), ("g2.json", good("g2"))],
            *[("invalid.json", json.dumps(record("invalid", images=1)).encode())],  # promises an image it lacks
            *[("g3.000.png", png(5)), ("g3.json", good("g3"))],
            *[("nojson.000.png", png(6))],
            *[("g4.000.png", png(7)), ("g4.json", good("g4"))],
            *[("long.json", json.dumps(record("long", answer="word " * 200)).encode())],
            *[("g5.000.png", png(8)), ("g5.json", good("g5"))],
        ],
    )
    with ShardWriter(directory, prefix="cut") as writer:
        for sample_id in ("t0", "t1", "t2"):
            writer.write(record(sample_id, 1), [png(9)])
    shard = writer.close()[0]
    _, json_offset, _ = index_shard(shard).samples[2].members[1]
    (directory / "shard-000001.tar").write_bytes(shard.read_bytes()[: json_offset + 20])
    shard.unlink()
    return ["g0", "g1", "g2", "g3", "g4", "g5", "t0", "t1"]


EXPECTED_SKIPS = {
    "corrupt image": 1,
    "invalid json": 1,
    "invalid sample": 1,
    "missing json": 1,
    "too long": 1,
    "corrupt shard": 1,
}


def test_damaged_samples_and_shards_are_skipped_and_counted(tmp_path, encode, tiny_processor):
    good = write_damaged_source(tmp_path / "mixed")
    mixed = SourceConfig(name="mixed", shards=[str(tmp_path / "mixed" / "*.tar")])
    data = DataConfig(sources=[mixed], batch_size=1, num_workers=0, shuffle_buffer=0, shuffle_shards=False)
    seen = []
    for batch in build_train_loader(data, encode, tiny_processor.collate):
        seen.extend(batch.sample_ids)
        if len(seen) == len(good):
            break
    assert seen == good  # stream order, the damaged ones left out
    loader = build_train_loader(data, encode, tiny_processor.collate)
    batches = take(loader, 2 * len(good))  # two epochs: the damaged shard is still counted once
    assert [batch.sample_ids[0] for batch in batches] == good + good
    assert loader.skipped == {reason: 2 * count for reason, count in EXPECTED_SKIPS.items()} | {"corrupt shard": 1}

    evaluation = build_eval_loader([mixed], DataConfig(batch_size=2, num_workers=2), encode, tiny_processor.collate)
    for _ in range(2):  # persistent workers: a second pass gives the same
        batches = list(evaluation)
        assert sorted(sample_id for batch in batches for sample_id in batch.sample_ids) == sorted(good)
        assert evaluation.skipped == EXPECTED_SKIPS


def test_evaluation_splits_samples_over_ranks_and_workers(tmp_path, encode, tiny_processor):
    ids = {name: write_source(tmp_path, name, shards=3, per_shard=5) for name in ("ui", "robot")}
    sources = [source(tmp_path, "ui"), source(tmp_path, "robot")]
    data = DataConfig(batch_size=4, num_workers=2)
    read: dict[str, list[str]] = {"ui": [], "robot": []}
    for rank in range(2):
        for batch in build_eval_loader(sources, data, encode, tiny_processor.collate, rank=rank, world_size=2):
            assert len(set(batch.sources)) == 1  # a batch holds one source, for per-source metrics
            read[batch.sources[0]].extend(batch.sample_ids)
    assert {name: sorted(found) for name, found in read.items()} == {name: sorted(found) for name, found in ids.items()}


def test_a_source_whose_every_sample_is_rejected_stops_with_a_clear_error(tmp_path, encode, tiny_processor):
    write_source(tmp_path, "fine", shards=1, per_shard=4)
    (tmp_path / "broken").mkdir()
    write_members(tmp_path / "broken" / "shard-000000.tar", [("a.json", b"{"), ("b.json", b"[1]")])
    data = DataConfig(sources=[source(tmp_path, "fine"), source(tmp_path, "broken")], batch_size=2, num_workers=0)
    with pytest.raises(AllSamplesRejectedError, match=r"source 'broken' for a whole epoch \(skipped so far: invalid"):
        take(build_train_loader(data, encode, tiny_processor.collate), 20)


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan")])
def test_a_weight_must_be_positive(tmp_path, encode, tiny_processor, weight):
    write_source(tmp_path, "ui", shards=1, per_shard=2)
    data = DataConfig(sources=[source(tmp_path, "ui", 1.0), source(tmp_path, "ui", weight)], num_workers=0)
    data.sources[1].name = "video"
    with pytest.raises(DataConfigError, match=r"source 'video' has weight .*give it a weight > 0"):
        build_train_loader(data, encode, tiny_processor.collate)


def test_a_state_from_another_setup_is_refused(tmp_path, encode, tiny_processor):
    write_source(tmp_path, "ui", shards=4, per_shard=2)
    data = DataConfig(sources=[source(tmp_path, "ui")], batch_size=2, num_workers=0)
    state = build_train_loader(data, encode, tiny_processor.collate).state_dict()
    changes = {"seed": DataConfig(sources=data.sources, batch_size=2, num_workers=0, seed=3)}
    changes["num_workers"] = DataConfig(sources=data.sources, batch_size=2, num_workers=2)
    changes["batch_size"] = DataConfig(sources=data.sources, batch_size=4, num_workers=0)
    changes["sources"] = DataConfig(sources=[source(tmp_path, "ui", 2.0)], batch_size=2, num_workers=0)
    for setting, other in changes.items():
        with pytest.raises(DataStateMismatchError, match=rf"another setup \({setting}: saved .*start the data stream"):
            build_train_loader(other, encode, tiny_processor.collate, state=state)
    with pytest.raises(DataStateMismatchError, match=r"world_size: saved 1, now 2"):
        build_train_loader(data, encode, tiny_processor.collate, rank=1, world_size=2, state=state)


def test_too_little_data_for_the_reader_slots_is_refused_at_build(tmp_path, encode, tiny_processor):
    write_source(tmp_path, "ui", shards=1, per_shard=3)
    data = DataConfig(sources=[source(tmp_path, "ui")], num_workers=2)
    with pytest.raises(DataSplitError, match=r"3 readable samples .* fewer than 4 reader slots .*data.num_workers"):
        build_train_loader(data, encode, tiny_processor.collate, rank=0, world_size=2)
    data.split = "shards"
    with pytest.raises(DataSplitError, match=r"1 shards for 2 reader slots .*set data.split=samples"):
        build_train_loader(data, encode, tiny_processor.collate)
    data.sources[0].shards = [str(tmp_path / "elsewhere" / "shard-*.tar")]
    with pytest.raises(MissingShardError, match="matches no file"):
        build_train_loader(data, encode, tiny_processor.collate)


def test_a_worker_left_without_samples_reports_a_clear_error(tmp_path, encode, tiny_processor):
    write_source(tmp_path, "ui", shards=1, per_shard=4)
    tarfile.open(tmp_path / "ui" / "shard-000001.tar", "w").close()  # a valid tar without samples
    data = DataConfig(sources=[source(tmp_path, "ui")], batch_size=2, num_workers=2)  # one shard per worker
    with pytest.raises(DataSplitError, match=r"gave reader slot \d of 2 reader slots .* no samples in epoch 0"):
        take(build_train_loader(data, encode, tiny_processor.collate), 4)
