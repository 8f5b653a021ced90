"""The LeRobotDataset v3.0 on-disk format: path templates, feature specs, statistics and the
``meta/tasks.parquet`` table, shared by the writer and the reader in ``data_tools.lerobot_dataset``.

Facts taken from LeRobot's sources (``lerobot/datasets/utils.py``, ``dataset_metadata.py``,
``dataset_writer.py``, ``compute_stats.py``, ``io_utils.py``); no code of theirs is used or imported.
Statistics use LeRobot's keys (min, max, mean, std, count, q01, q10, q50, q90, q99); video statistics
are per channel, scaled to [0, 1], shaped (3, 1, 1), over a sample of each episode's frames.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from data_tools.errors import UserFacingError

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
CHUNK_FILE_PATTERN = "chunk-{chunk_index:03d}/file-{file_index:03d}"
EPISODES_PATH = EPISODES_DIR + "/" + CHUNK_FILE_PATTERN + ".parquet"
DATA_PATH = "data/" + CHUNK_FILE_PATTERN + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE_PATTERN + ".mp4"
LEGACY_EPISODES_PATH = "meta/episodes.jsonl"  # LeRobot v2.x
STATE_KEY = "observation.state"
ACTION_KEY = "action"
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
# Columns LeRobot fills in itself for every frame (its DEFAULT_FEATURES), in its order.
FRAME_INDEX_FEATURES: dict[str, str] = {
    "timestamp": "float32",
    "frame_index": "int64",
    "episode_index": "int64",
    "index": "int64",
    "task_index": "int64",
}
NUMERIC_DTYPES = ("float32", "float64", "int32", "int64", "bool")
PATH_TEMPLATE_FIELDS = ("chunk_index", "file_index", "episode_chunk", "episode_index", "video_key")
_PATH_FORMAT_SPEC = re.compile(r"0?>?\d{0,2}d?")  # e.g. "", "03d", "0>3": padding of at most 99 characters
MAX_METADATA_JSON_BYTES = 64 * 2**20
CONVERT_V21_COMMAND = "python -m lerobot.scripts.convert_dataset_v21_to_v30 --repo-id=<your/dataset>"


class DatasetLayoutError(UserFacingError, ValueError):
    """A directory that is not a LeRobotDataset v3 (or not the one the caller expects)."""


@dataclass(frozen=True)
class FeatureSpec:
    """One per-frame feature as ``meta/info.json`` declares it: dtype, shape and dimension names."""

    dtype: str
    shape: tuple[int, ...]
    names: list[str] | None = None

    def to_info(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape), "names": self.names}

    @classmethod
    def from_info(cls, entry: dict[str, Any]) -> FeatureSpec:
        names = entry.get("names")
        return cls(dtype=str(entry["dtype"]), shape=tuple(int(n) for n in entry["shape"]), names=names)


def format_path_template(template: Any, what: str, **fields: Any) -> str:
    """``template`` (info.json's ``data_path`` / ``video_path``) filled with ``fields``; only the documented
    fields (``PATH_TEMPLATE_FIELDS``) with a plain padding spec are allowed, so a hostile template can neither
    reach attributes (``{chunk_index.__class__}``) nor ask for a two-gigabyte padding."""
    if not isinstance(template, str) or not template:
        raise DatasetLayoutError(f"info.json's {what} is {template!r}, not a path template; restore the file")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as error:
        raise DatasetLayoutError(f"info.json's {what} {template!r} is not a path template ({error})") from None
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in fields or conversion is not None or not _PATH_FORMAT_SPEC.fullmatch(spec or ""):
            raise DatasetLayoutError(
                f"info.json's {what} {template!r} has the field {{{name}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}}; use only {{{'}, {'.join(sorted(fields))}}} with a padding such as "
                ":03d (LeRobot's own template is data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet)"
            )
    try:
        return template.format(**fields)
    except (ValueError, TypeError) as error:
        raise DatasetLayoutError(f"info.json's {what} {template!r} cannot be filled in ({error})") from None


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in ``path`` (a regular file of at most ``MAX_METADATA_JSON_BYTES``), else one
    DatasetLayoutError naming the file and what is wrong with it."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO's open must not wait
    except OSError as error:
        raise DatasetLayoutError(
            f"cannot read '{path}' ({what}: {error.strerror or error}); check the dataset"
        ) from None
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise DatasetLayoutError(f"'{path}' ({what}) is not a regular file; restore it from the dataset")
        with os.fdopen(os.dup(descriptor), "rb") as file:
            data = file.read(MAX_METADATA_JSON_BYTES + 1)
    finally:
        os.close(descriptor)
    if len(data) > MAX_METADATA_JSON_BYTES:
        raise DatasetLayoutError(
            f"'{path}' ({what}) is larger than {MAX_METADATA_JSON_BYTES // 2**20} MiB; restore it from the dataset"
        )
    try:
        payload = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        detail = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise DatasetLayoutError(
            f"'{path}' ({what}) is not valid JSON ({detail}); restore it from the dataset"
        ) from None
    if not isinstance(payload, dict):
        raise DatasetLayoutError(
            f"'{path}' ({what}) holds a JSON {type(payload).__name__}, not an object; restore it from the dataset"
        )
    return payload


def dimension_names(names: Any) -> list[str]:
    """The per-dimension names of a feature; LeRobot stores a list, or a dict holding one list."""
    if isinstance(names, dict) and len(names) == 1:
        names = next(iter(names.values()))
    return [str(name) for name in names] if isinstance(names, list) else []


def arrow_type(spec: FeatureSpec) -> pa.DataType:
    """The parquet column type LeRobot (through HF ``datasets``) uses: a scalar for shape (1,),
    a fixed-size list for a vector."""
    scalar = pa.from_numpy_dtype(np.dtype(spec.dtype))
    return scalar if spec.shape == (1,) else pa.list_(scalar, spec.shape[0])


def chunk_file_path(template: str, index: int, chunks_size: int, **keys: str) -> tuple[int, int, str]:
    """``(chunk_index, file_index, relative path)`` of the ``index``-th file of a kind: ``chunks_size``
    files per chunk folder, as LeRobot's ``update_chunk_file_indices`` counts them."""
    chunk_index, file_index = divmod(index, chunks_size)
    return chunk_index, file_index, template.format(chunk_index=chunk_index, file_index=file_index, **keys)


def column_to_numpy(column: pa.ChunkedArray | pa.Array, width: int | None = None) -> np.ndarray:
    """A parquet column as an (N,) or (N, width) array, whether stored as scalars, lists or fixed lists."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_list(array.type) or pa.types.is_fixed_size_list(array.type) or pa.types.is_large_list(array.type):
        values = np.asarray(array.flatten().to_numpy(zero_copy_only=False))
        return values.reshape(len(array), -1 if width is None else width)
    values = np.asarray(array.to_numpy(zero_copy_only=False))
    return values if width is None else values.reshape(len(array), width)


def vector_statistics(values: np.ndarray) -> dict[str, np.ndarray]:
    """LeRobot's statistics of an (N,) or (N, D) array, per dimension; quantiles exact (numpy, linear)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    stats = {
        "min": values.min(axis=0),
        "max": values.max(axis=0),
        "mean": values.mean(axis=0),
        "std": values.std(axis=0),
        "count": np.array([len(values)]),
    }
    for key, quantile in QUANTILES.items():
        stats[key] = np.quantile(values, quantile, axis=0)
    return stats


def typed_statistics(values: np.ndarray) -> dict[str, np.ndarray]:
    """``vector_statistics`` with min and max kept in the values' own kind, as LeRobot stores them (int64
    for integer features, bool for bool features, float64 otherwise)."""
    values = np.asarray(values)
    stats = vector_statistics(values)
    if values.dtype.kind in "iub":
        kind = np.bool_ if values.dtype.kind == "b" else np.int64
        stats["min"], stats["max"] = stats["min"].astype(kind), stats["max"].astype(kind)
    return stats


def _stat_arrow_type(value: np.ndarray) -> pa.DataType:
    scalar = {"b": pa.bool_(), "i": pa.int64(), "u": pa.int64()}.get(np.asarray(value).dtype.kind, pa.float64())
    for _ in range(np.asarray(value).ndim):
        scalar = pa.list_(scalar)
    return scalar


def episodes_table(rows: Sequence[dict[str, Any]], video_keys: Sequence[str]) -> pa.Table:
    """``meta/episodes`` rows as LeRobot 0.4.4 writes them: its column order and types (int64 indices,
    list<string> tasks, double timestamps, ``stats/<feature>/<stat>`` lists keeping min/max's kind)."""
    fields = [
        pa.field("episode_index", pa.int64()),
        pa.field("tasks", pa.list_(pa.string())),
        pa.field("length", pa.int64()),
        pa.field("data/chunk_index", pa.int64()),
        pa.field("data/file_index", pa.int64()),
        pa.field("dataset_from_index", pa.int64()),
        pa.field("dataset_to_index", pa.int64()),
    ]
    for key in video_keys:
        fields += [pa.field(f"videos/{key}/{name}", pa.int64()) for name in ("chunk_index", "file_index")]
        fields += [pa.field(f"videos/{key}/{name}", pa.float64()) for name in ("from_timestamp", "to_timestamp")]
    fields += [pa.field(name, _stat_arrow_type(value)) for name, value in rows[0].items() if name.startswith("stats/")]
    fields += [pa.field(f"meta/episodes/{name}", pa.int64()) for name in ("chunk_index", "file_index")]
    schema = pa.schema(fields)
    columns = {
        field.name: [np.asarray(row[field.name]).tolist() if field.name.startswith("stats/") else row[field.name]
                     for row in rows]
        for field in schema
    }  # fmt: skip
    return pa.Table.from_pydict(columns, schema=schema)


def sampled_frame_indices(num_frames: int) -> np.ndarray:
    """The frames LeRobot samples from an episode for image statistics (about ``n**0.75``, 100 to 10000)."""
    wanted = max(min(100, num_frames), min(int(num_frames**0.75), 10_000))
    return np.round(np.linspace(0, num_frames - 1, wanted)).astype(np.int64)


def image_statistics(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel statistics of sampled (T, H, W, 3) uint8 frames in [0, 1], shaped (3, 1, 1), as
    LeRobot stores them for image and video features (frames of 300 px or more are subsampled)."""
    sampled = frames[sampled_frame_indices(len(frames))]
    height, width = sampled.shape[1:3]
    if max(height, width) >= 300:
        step = int(max(height, width) / 150)
        sampled = sampled[:, ::step, ::step]
    pixels = sampled.reshape(-1, sampled.shape[-1]).astype(np.float32) / 255.0
    stats = vector_statistics(pixels)
    return {
        key: np.array([len(sampled)]) if key == "count" else value.reshape(-1, 1, 1) for key, value in stats.items()
    }


def aggregate_statistics(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Merge per-episode statistics as LeRobot does: count-weighted mean and pooled variance, min/max,
    and for quantiles an envelope (the least lower and the greatest upper quantile)."""
    counts = np.array([float(part["count"][0]) for part in parts])
    total = counts.sum()
    means = np.stack([part["mean"] for part in parts])
    weights = counts.reshape(-1, *([1] * (means.ndim - 1)))
    mean = (means * weights).sum(axis=0) / total
    variances = np.stack([part["std"] ** 2 for part in parts]) + (means - mean) ** 2
    merged = {
        "min": np.min(np.stack([part["min"] for part in parts]), axis=0),
        "max": np.max(np.stack([part["max"] for part in parts]), axis=0),
        "mean": mean,
        "std": np.sqrt((variances * weights).sum(axis=0) / total),
        "count": np.array([int(total)]),
    }
    for key, quantile in QUANTILES.items():
        values = np.stack([part[key] for part in parts])
        merged[key] = values.min(axis=0) if quantile <= 0.5 else values.max(axis=0)
    return merged


def statistics_to_json(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, list]]:
    return {
        feature: {key: np.asarray(value).tolist() for key, value in entry.items()} for feature, entry in stats.items()
    }


def statistics_from_json(payload: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    return {
        feature: {key: np.asarray(value) for key, value in entry.items()}
        for feature, entry in payload.items()
        if isinstance(entry, dict)
    }


def tasks_table(tasks: Sequence[str]) -> pa.Table:
    """``meta/tasks.parquet``: LeRobot writes a pandas frame indexed by ``task`` with a ``task_index``
    column; the pandas metadata makes ``pd.read_parquet`` restore that index (pandas is not needed here)."""
    table = pa.table(
        {"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(list(tasks), pa.string())}
    )
    pandas_metadata = {
        "index_columns": ["task"],
        "column_indexes": [
            {"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object", "metadata": None}
        ],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
             "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }  # fmt: skip
    return table.replace_schema_metadata({"pandas": json.dumps(pandas_metadata)})


def tasks_from_table(table: pa.Table, path: Path) -> list[str]:
    """Task strings by task index from a ``meta/tasks.parquet`` table (task column or pandas index)."""
    text_column = next((name for name in ("task", "__index_level_0__") if name in table.column_names), None)
    if text_column is None or "task_index" not in table.column_names:
        raise DatasetLayoutError(
            f"'{path}' has columns {table.column_names}, not 'task' and 'task_index'; "
            "rewrite it as LeRobot v3 does (a table of task strings with their task_index)"
        )
    by_index = dict(zip(table["task_index"].to_pylist(), table[text_column].to_pylist(), strict=True))
    if sorted(by_index) != list(range(len(by_index))):
        raise DatasetLayoutError(f"'{path}' task indices are not 0..{len(by_index) - 1}; renumber the tasks")
    return [str(by_index[index]) for index in range(len(by_index))]


def size_in_mb(limit_mb: float) -> int | float:
    """A size limit as info.json stores it: an int when whole (LeRobot's type), else the float."""
    return int(limit_mb) if float(limit_mb).is_integer() else float(limit_mb)


def is_finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
