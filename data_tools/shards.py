"""Writing training samples into WebDataset tar shards, in the sample contract.

Each sample becomes ``KEY.json`` plus ``KEY.000.png`` / ``KEY.001.jpg``... members (the layout
``webdataset.TarWriter`` writes; written with ``tarfile`` because importing webdataset pulls in
torch, and ``data_tools`` stays model-free). A shard is written under ``NAME.partial`` and renamed
to ``{prefix}-NNNNNN.tar`` only when it is complete, so a crash never leaves a half shard under a
final name.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
from PIL import Image

from data_tools.errors import UserFacingError
from data_tools.sample_format import SampleFormatError, validate_sample

ShardImage = Image.Image | np.ndarray | bytes | str | Path
PARTIAL_SUFFIX = ".partial"
KEY_DIGITS = 9
TAR_BLOCK = 512
IMAGE_FORMATS = ("png", "jpg")
PNG_COMPRESS_LEVEL = 1
PNG_ZLIB_STRATEGY = 3  # zlib's Z_RLE, made for PNG rows: video frames 25 % faster and 11 % smaller, screenshots even


class ShardWriteError(UserFacingError, ValueError):
    """A sample or image that cannot be written into a shard."""


def encoded_image_format(data: bytes) -> str | None:
    """The file extension of encoded image ``data`` (png, jpg or webp) from its magic bytes; None if unknown."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _encode_pil(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    if image_format == "jpg":
        image.convert("RGB").save(buffer, format="JPEG", quality=95)
    else:
        # zlib level 1 (OpenCV's default for PNG): lossless like any level, about 6x faster to write than
        # PIL's default 6 for ~15 % more bytes; encoding was a fifth of a Trace-of-Mark job's time at level 6.
        # Z_RLE matches runs only, which is what PNG's filtered rows hold: a 256 px video frame 7.3 -> 5.5 ms
        # and 131 -> 117 KB, a 1280 x 720 screenshot the same time and size (2026-12-03)
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL, compress_type=PNG_ZLIB_STRATEGY)
    return buffer.getvalue()


def image_member(image: ShardImage, image_format: str = "png") -> tuple[str, bytes]:
    """``(extension, bytes)`` of one image: encoded bytes and files are kept as they are, PIL images and
    uint8 arrays are encoded as ``image_format``."""
    if isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
        found = encoded_image_format(data)
        if found is None:
            raise ShardWriteError(
                f"{len(data)} bytes in no known image format; pass PNG, JPEG or WebP bytes, a PIL image or an array"
            )
        return found, data
    if isinstance(image, Image.Image):
        return image_format, _encode_pil(image, image_format)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
            raise ShardWriteError(
                f"an image array has shape {image.shape} and dtype {image.dtype}; pass HxW or HxWx3 uint8 pixels"
            )
        return image_format, _encode_pil(Image.fromarray(image), image_format)
    if isinstance(image, str | Path):
        path = Path(image)
        if not path.is_file():
            raise ShardWriteError(f"image file not found: '{path}'; check the path")
        data = path.read_bytes()
        found = encoded_image_format(data)
        if found is None:
            raise ShardWriteError(f"'{path}' is not a PNG, JPEG or WebP file; convert it or pass it as a PIL image")
        return found, data
    raise ShardWriteError(f"an image is a {type(image).__name__}; pass a PIL image, a uint8 array, bytes or a path")


@dataclass
class _OpenShard:
    """The shard being written: its final and temporary paths, its file and how full it is."""

    path: Path
    partial: Path
    file: IO[bytes]
    tar: tarfile.TarFile
    samples: int = 0


def _member_bytes(size: int) -> int:
    return TAR_BLOCK + -(-size // TAR_BLOCK) * TAR_BLOCK


class ShardWriter:
    """Writes samples into ``{out_dir}/{prefix}-000000.tar``, ``-000001.tar``, ... and rolls to the next
    shard after ``max_samples_per_shard`` samples or ``max_bytes_per_shard`` bytes."""

    def __init__(
        self,
        out_dir: str | Path,
        prefix: str = "shard",
        max_samples_per_shard: int = 1000,
        max_bytes_per_shard: int | None = None,
        image_format: str = "png",
    ) -> None:
        if max_samples_per_shard < 1:
            raise ShardWriteError(f"max_samples_per_shard is {max_samples_per_shard}; use 1 or more")
        if max_bytes_per_shard is not None and max_bytes_per_shard < 1:
            raise ShardWriteError(f"max_bytes_per_shard is {max_bytes_per_shard}; use a positive size or None")
        if image_format not in IMAGE_FORMATS:
            raise ShardWriteError(f"image_format is {image_format!r}; use one of {', '.join(IMAGE_FORMATS)}")
        if not prefix or "/" in prefix:
            raise ShardWriteError(f"prefix {prefix!r} is not a file-name prefix; use a plain name such as 'shard'")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.max_samples_per_shard = max_samples_per_shard
        self.max_bytes_per_shard = max_bytes_per_shard
        self.image_format = image_format
        self.samples_written = 0
        self.shards: list[Path] = []  # completed shards, in order
        self._open: _OpenShard | None = None
        self._closed = False

    def write(self, record: Mapping[str, Any], images: Sequence[ShardImage] = ()) -> str:
        """Validate one sample and append it; returns its key (a zero-padded running index)."""
        if self._closed:
            raise ShardWriteError("this ShardWriter is closed; create a new one to write more samples")
        name = f"sample {record.get('id')!r}" if isinstance(record, Mapping) else "a sample"
        try:
            validate_sample(record, len(images))
        except SampleFormatError as err:
            raise SampleFormatError(f"{name} was not written: {err}; fix the record or its images") from None
        members: list[tuple[str, bytes]] = []
        for index, image in enumerate(images):
            try:
                extension, data = image_member(image, self.image_format)
            except ShardWriteError as err:
                raise ShardWriteError(f"{name}, image {index}: {err}") from None
            members.append((f"{index:03d}.{extension}", data))
        try:
            members.append(("json", json.dumps(record, ensure_ascii=False).encode("utf-8")))
        except (TypeError, ValueError) as err:
            raise ShardWriteError(f"{name} holds a value JSON cannot store ({err}); use lists and numbers") from None
        members.sort()
        key = f"{self.samples_written:0{KEY_DIGITS}d}"
        shard = self._shard_for(sum(_member_bytes(len(data)) for _, data in members))
        for extension, data in members:
            info = tarfile.TarInfo(f"{key}.{extension}")
            info.size = len(data)
            info.mode = 0o444
            shard.tar.addfile(info, io.BytesIO(data))
        shard.samples += 1
        self.samples_written += 1
        return key

    def _shard_for(self, sample_bytes: int) -> _OpenShard:
        shard = self._open
        if shard is not None:
            full = shard.samples >= self.max_samples_per_shard
            limit = self.max_bytes_per_shard
            too_big = limit is not None and shard.file.tell() + sample_bytes > limit
            if full or too_big:
                self._finish_shard()
                shard = None
        if shard is None:
            path = self.out_dir / f"{self.prefix}-{len(self.shards):06d}.tar"
            partial = path.with_name(path.name + PARTIAL_SUFFIX)
            file = open(partial, "wb")  # noqa: SIM115 - closed in _finish_shard or _discard_shard
            tar = tarfile.open(fileobj=file, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
            shard = self._open = _OpenShard(path=path, partial=partial, file=file, tar=tar)
        return shard

    def _finish_shard(self) -> None:
        shard, self._open = self._open, None
        if shard is None:
            return
        shard.tar.close()
        shard.file.flush()
        os.fsync(shard.file.fileno())
        shard.file.close()
        os.replace(shard.partial, shard.path)
        self.shards.append(shard.path)

    def _discard_shard(self) -> None:
        shard, self._open = self._open, None
        if shard is None:
            return
        shard.file.close()
        shard.partial.unlink(missing_ok=True)

    def close(self) -> list[Path]:
        """Complete the open shard and return the paths of all shards written."""
        if not self._closed:
            self._finish_shard()
            self._closed = True
        return list(self.shards)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:  # keep the completed shards, drop the one being written: nothing half-written stays behind
            self._discard_shard()
            self._closed = True
