"""ShardWriter writes WebDataset shards in the sample contract; shard patterns expand to files; a
shard index finds every sample's bytes, and a damaged tar keeps what came before the damage."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import webdataset
from PIL import Image

from data_tools.errors import UserFacingError
from data_tools.sample_format import SampleFormatError
from data_tools.shards import ShardWriteError, ShardWriter
from magma.data.shard_index import MissingShardError, SampleRef, expand_shards, index_shard, read_raw_sample


def sample(sample_id: str, images: int = 0, answer: str = "ok") -> dict:
    question = "<image>\n" * images + "What is shown?"
    return {"id": sample_id, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}


def png_bytes(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.filterwarnings("ignore::ResourceWarning")  # webdataset's reader leaves its files to the collector
def test_written_shards_read_back_with_webdataset_and_the_index(tmp_path: Path):
    pixels = np.random.default_rng(0).integers(0, 255, (10, 14, 3), dtype=np.uint8)
    jpeg_path = tmp_path / "photo.jpg"
    Image.fromarray(pixels).save(jpeg_path, quality=90)
    png = png_bytes(1)
    inputs = [
        (sample("s0", 1), [pixels]),  # array -> png
        (sample("s1", 1), [Image.fromarray(pixels)]),  # PIL -> png
        (sample("s2", 2), [png, jpeg_path]),  # PNG bytes kept, JPEG file kept as jpg
        (sample("s3"), []),
        (sample("s4", 1), [jpeg_path]),
    ]
    with ShardWriter(tmp_path / "out", prefix="ui", max_samples_per_shard=2) as writer:
        keys = [writer.write(record, images) for record, images in inputs]
    shards = writer.close()
    assert [path.name for path in shards] == ["ui-000000.tar", "ui-000001.tar", "ui-000002.tar"]
    assert keys == ["000000000", "000000001", "000000002", "000000003", "000000004"]
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [path.name for path in shards]

    read = list(webdataset.WebDataset([str(path) for path in shards], shardshuffle=False, empty_check=False))
    assert [item["__key__"] for item in read] == keys
    assert [json.loads(item["json"])["id"] for item in read] == ["s0", "s1", "s2", "s3", "s4"]
    assert sorted(name for name in read[2] if not name.startswith("__")) == ["000.png", "001.jpg", "json"]
    assert read[2]["000.png"] == png and read[2]["001.jpg"] == jpeg_path.read_bytes()
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(read[0]["000.png"]))), pixels)

    index = index_shard(shards[1])
    assert index.problem is None and [entry.key for entry in index.samples] == keys[2:4]
    raw = read_raw_sample(SampleRef("ui", shards[1], index.samples[0]))
    assert raw.record == inputs[2][0] and raw.images == [png, jpeg_path.read_bytes()]
    assert raw.sample_id == "s2" and raw.source == "ui" and raw.key == keys[2]


def test_jpg_format_and_byte_limit_roll_shards(tmp_path: Path):
    image = np.full((64, 64, 3), 90, dtype=np.uint8)
    with ShardWriter(tmp_path, image_format="jpg", max_bytes_per_shard=4096) as writer:
        for number in range(4):
            writer.write(sample(f"s{number}", 1, answer="x" * 1500), [image])
    shards = writer.close()
    assert len(shards) >= 2
    names = [entry.members for path in shards for entry in index_shard(path).samples]
    assert sum(len(members) for members in names) == 8
    assert all({extension for extension, _, _ in members} == {"000.jpg", "json"} for members in names)


def test_a_shard_keeps_a_temporary_name_until_it_is_complete(tmp_path: Path):
    with pytest.raises(RuntimeError, match="the job failed"), ShardWriter(tmp_path, max_samples_per_shard=2) as writer:
        writer.write(sample("a"))
        assert [path.name for path in tmp_path.iterdir()] == ["shard-000000.tar.partial"]
        writer.write(sample("b"))
        writer.write(sample("c"))  # rolls over: the first shard is complete
        assert sorted(path.name for path in tmp_path.iterdir()) == ["shard-000000.tar", "shard-000001.tar.partial"]
        raise RuntimeError("the job failed")
    assert [path.name for path in tmp_path.iterdir()] == ["shard-000000.tar"]  # no half shard, no leftovers
    assert [entry.key for entry in index_shard(tmp_path / "shard-000000.tar").samples] == ["000000000", "000000001"]


def test_an_invalid_sample_is_refused_by_id_before_anything_is_written(tmp_path: Path):
    writer = ShardWriter(tmp_path)
    with pytest.raises(SampleFormatError, match=r"sample 'bad-7'.*2 <image> placeholders but the sample has 1"):
        writer.write(sample("bad-7", 2), [png_bytes(0)])
    with pytest.raises(ShardWriteError, match=r"sample 'noise', image 0: .*no known image format"):
        writer.write(sample("noise", 1), [b"not an image"])
    with pytest.raises(ShardWriteError, match=r"sample 'gone', image 0: image file not found"):
        writer.write(sample("gone", 1), [tmp_path / "missing.png"])
    assert writer.write(sample("fine")) == "000000000"  # keys stay dense after refusals
    assert [entry.key for entry in index_shard(writer.close()[0]).samples] == ["000000000"]


def test_patterns_expand_braces_and_globs_sorted_without_duplicates(tmp_path: Path):
    for name in ("shard-000002.tar", "shard-000000.tar", "shard-000001.tar", "other.tar", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    found = expand_shards([str(tmp_path / "shard-{000000..000001}.tar"), str(tmp_path / "shard-*.tar")])
    assert [path.name for path in found] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert [path.name for path in expand_shards([str(tmp_path / "{other,shard-000000}.tar")])] == [
        "other.tar",
        "shard-000000.tar",
    ]


def test_a_pattern_without_files_names_itself_and_the_fix(tmp_path: Path):
    (tmp_path / "shard-000000.tar").write_bytes(b"")
    with pytest.raises(MissingShardError, match=r"'.*/train/\*\.tar' matches no file; fix the path") as raised:
        expand_shards([str(tmp_path / "shard-000000.tar"), str(tmp_path / "train/*.tar")])
    assert isinstance(raised.value, UserFacingError)
    with pytest.raises(MissingShardError, match=r"shard '.*shard-000001.tar' \(from the pattern .*\) does not exist"):
        expand_shards([str(tmp_path / "shard-{000000..000001}.tar")])
    with pytest.raises(MissingShardError, match=r"is a directory; name its shards, e.g. '.*/\*.tar'"):
        expand_shards([str(tmp_path)])


def test_a_truncated_shard_keeps_the_samples_before_the_damage(tmp_path: Path):
    with ShardWriter(tmp_path) as writer:
        for number in range(3):
            writer.write(sample(f"s{number}", 1), [png_bytes(number)])
    path = writer.close()[0]
    members = {extension: offset for extension, offset, _ in index_shard(path).samples[2].members}
    data = path.read_bytes()
    cuts = {
        "image data": members["000.png"] + 10,
        "json data": members["json"] + 5,
        "a header": members["000.png"] - 512,
    }
    for place, cut in cuts.items():
        damaged = tmp_path / f"cut-in-{place.replace(' ', '-')}.tar"
        damaged.write_bytes(data[:cut])
        index = index_shard(damaged)
        assert index.problem is not None, place
        assert [entry.key for entry in index.samples] == ["000000000", "000000001"], place
    unterminated = tmp_path / "unterminated.tar"
    unterminated.write_bytes(data[: members["json"] + 512])  # every member whole, the end-of-archive marker lost
    index = index_shard(unterminated)
    assert "no end-of-archive marker" in index.problem and len(index.samples) == 3
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"\x00\x01" * 700)
    assert index_shard(garbage).samples == () and "not a readable uncompressed tar" in index_shard(garbage).problem


def test_the_shard_writer_imports_no_model_code():
    code = "import sys, data_tools.shards; assert not {'torch', 'magma', 'webdataset'} & set(sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
