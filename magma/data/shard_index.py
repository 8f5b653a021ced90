"""Finding shards and indexing them: which samples a tar holds and where each member's bytes lie.

An index is built from the tar headers alone (seeking over the data), so a reader can pick any
sample of a shard and read only its bytes. Samples are grouped as WebDataset groups them: members
named ``KEY.EXT`` in a row share a sample, the key being the name up to the first dot of its base
name. A truncated or damaged tar keeps the samples read before the damage and says what is wrong.
"""

from __future__ import annotations

import glob
import json
import re
import tarfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO

from braceexpand import braceexpand

from data_tools.errors import UserFacingError
from magma.data.records import RawSample, SampleRejected

GLOB_CHARACTERS = re.compile(r"[*?\[]")
MEMBER_NAME = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # the rule of webdataset's base_plus_ext
IMAGE_EXTENSION = re.compile(r"^(\d+)\.(jpg|jpeg|png|webp)$", re.IGNORECASE)
TAR_BLOCK = 512
INDEX_CACHE_SIZE = 64  # shard indices kept per process


class MissingShardError(UserFacingError, FileNotFoundError):
    """A shard path or pattern that names no existing file."""


def expand_shards(patterns: list[str]) -> list[Path]:
    """Brace-expand (``{000..009}``) and glob (``*.tar``) shard patterns into a sorted list of files."""
    found: set[Path] = set()
    for pattern in patterns:
        matched: list[Path] = []
        for expanded in braceexpand(str(pattern)):
            expanded = str(Path(expanded).expanduser())
            if GLOB_CHARACTERS.search(expanded):
                paths = [Path(path) for path in glob.glob(expanded) if Path(path).is_file()]
            else:
                paths = [Path(expanded)] if Path(expanded).is_file() else []
                if Path(expanded).is_dir():
                    raise MissingShardError(
                        f"shard path '{expanded}' is a directory; name its shards, e.g. '{expanded}/*.tar'"
                    )
                if not paths:
                    raise MissingShardError(
                        f"shard '{expanded}' (from the pattern '{pattern}') does not exist; fix the path in the "
                        "source's `shards` or write the shards first (`data_tools.shards.ShardWriter`)"
                    )
            matched.extend(paths)
        if not matched:
            raise MissingShardError(
                f"the shard pattern '{pattern}' matches no file; fix the path or pattern in the source's `shards` "
                "(brace lists like shard-{000000..000009}.tar and globs like *.tar are expanded)"
            )
        found.update(matched)
    return sorted(found)


@dataclass(frozen=True, slots=True)
class IndexedSample:
    """One sample of a shard: its key and, for each member extension, ``(byte offset, size)`` in the tar."""

    key: str
    members: tuple[tuple[str, int, int], ...]

    def image_members(self) -> list[tuple[str, int, int]]:
        """The ``NNN.jpg|jpeg|png|webp`` members, ordered by NNN."""
        numbered = []
        for extension, offset, size in self.members:
            match = IMAGE_EXTENSION.match(extension)
            if match:
                numbered.append((int(match.group(1)), extension, offset, size))
        return [(extension, offset, size) for _, extension, offset, size in sorted(numbered)]


@dataclass(frozen=True)
class ShardIndex:
    """The samples of one shard in order; ``problem`` says why the shard is damaged (None if whole)."""

    path: Path
    samples: tuple[IndexedSample, ...]
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class SampleRef:
    """A pointer to one sample: enough to read it later, small enough to hold thousands in a buffer."""

    source: str
    shard: Path
    sample: IndexedSample


def _member_key(name: str) -> str | None:
    match = MEMBER_NAME.match(name)
    return match.group(1) if match else None


def _group_members(members: list[tuple[str, int, int]]) -> list[IndexedSample]:
    samples: list[IndexedSample] = []
    key, group = None, []
    for name, offset, size in members:
        match = MEMBER_NAME.match(name)
        if match is None or Path(name).name.startswith("__"):
            continue
        member_key, extension = match.groups()
        if member_key != key and group:
            samples.append(IndexedSample(key, tuple(group)))
            group = []
        key = member_key
        group.append((extension, offset, size))
    if group:
        samples.append(IndexedSample(key, tuple(group)))
    return samples


def _read_members(path: Path) -> tuple[list[tuple[str, int, int]], str | None]:
    """The file members' ``(name, data offset, size)`` whose header and data are intact, and what stopped
    the reading early (None for a whole tar)."""
    members: list[tuple[str, int, int]] = []
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as file, tarfile.open(fileobj=file, mode="r:") as tar:
            end = 0  # where the header after the last member read would start
            while True:
                try:
                    info = tar.next()
                except tarfile.TarError as err:
                    return members, f"a damaged tar header after {len(members)} members ({err})"
                if info is None:
                    break
                if info.offset_data + info.size > file_size:  # drop the sample this member belongs to
                    while members and _member_key(members[-1][0]) == _member_key(info.name):
                        members.pop()
                    return members, f"truncated in the data of '{info.name}'"
                end = info.offset_data + -(-info.size // TAR_BLOCK) * TAR_BLOCK
                if info.isfile():
                    members.append((info.name, info.offset_data, info.size))
            file.seek(end)
            if file.read(TAR_BLOCK) != bytes(TAR_BLOCK):  # tarfile stops silently at a cut or damaged header
                return members, f"truncated or damaged after {len(members)} members (no end-of-archive marker)"
    except (OSError, tarfile.TarError) as err:
        return members, f"not a readable uncompressed tar ({err.__class__.__name__}: {err})"
    return members, None


def _scan_shard(path: Path) -> ShardIndex:
    members, problem = _read_members(path)
    return ShardIndex(path=path, samples=tuple(_group_members(members)), problem=problem)


@lru_cache(maxsize=INDEX_CACHE_SIZE)
def _cached_index(path: str, modified_ns: int, size: int) -> ShardIndex:
    return _scan_shard(Path(path))


def index_shard(path: Path) -> ShardIndex:
    """The index of the shard at ``path``, cached per process (a rewritten file is indexed again)."""
    try:
        stat = path.stat()
    except OSError as err:
        return ShardIndex(path=path, samples=(), problem=f"cannot be read ({err.__class__.__name__}: {err})")
    return _cached_index(str(path), stat.st_mtime_ns, stat.st_size)


def read_raw_sample(ref: SampleRef) -> RawSample:
    """Read one sample's JSON record and image bytes by seeking; a bad sample raises SampleRejected."""
    where = f"sample '{ref.sample.key}' of '{ref.shard}'"
    members = {extension: (offset, size) for extension, offset, size in ref.sample.members}
    if "json" not in members:
        raise SampleRejected("missing json", f"{where} has no .json member")
    try:
        with open(ref.shard, "rb") as file:
            record_bytes = _read_span(file, *members["json"])
            images = [_read_span(file, offset, size) for _, offset, size in ref.sample.image_members()]
    except OSError as err:
        raise SampleRejected("unreadable sample", f"{where}: {err}") from None
    try:
        record = json.loads(record_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SampleRejected("invalid json", f"{where}: {err}") from None
    if not isinstance(record, dict):
        raise SampleRejected("invalid json", f"{where} holds a JSON {type(record).__name__}, not an object")
    return RawSample(source=ref.source, shard=str(ref.shard), key=ref.sample.key, record=record, images=images)


def _read_span(file: IO[bytes], offset: int, size: int) -> bytes:
    file.seek(offset)
    data = file.read(size)
    if len(data) != size:
        raise OSError(f"expected {size} bytes at offset {offset}, the file ends after {len(data)}")
    return data
