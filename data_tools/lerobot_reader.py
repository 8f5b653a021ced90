"""Reading a LeRobotDataset v3.x: layout checks with one clear message for a folder in another layout
(LeRobot v2.x, an unfinished recording, another robot), metadata, and episodes with their camera
frames decoded at the episodes' timestamps (``from_timestamp`` + frame ``timestamp``): decord for
H.264/HEVC/MPEG-4, PyAV for what decord lacks (AV1, LeRobot's default), see ``data_tools.video``.
Reads what LeRobot writes and what this toolkit wrote before (OpenCV mp4v videos, no
``meta/episodes/*`` index columns).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_tools.lerobot_format import (
    ACTION_KEY,
    CONVERT_V21_COMMAND,
    EPISODES_DIR,
    FRAME_INDEX_FEATURES,
    INFO_PATH,
    LEGACY_EPISODES_PATH,
    STATE_KEY,
    STATS_PATH,
    TASKS_PATH,
    DatasetLayoutError,
    FeatureSpec,
    column_to_numpy,
    format_path_template,
    read_json_object,
    statistics_from_json,
    tasks_from_table,
)
from data_tools.video import VideoReadError, decode_frames, probe_video

REQUIRED_INFO_KEYS = ("codebase_version", "fps", "features", "data_path", "total_episodes")


@dataclass
class Episode:
    """One episode read back: per-frame arrays (T rows) and decoded camera frames (T, H, W, 3) uint8."""

    index: int
    task: str
    tasks: list[str]
    states: np.ndarray
    actions: np.ndarray
    timestamps: np.ndarray
    task_indices: np.ndarray
    frames: dict[str, np.ndarray] = field(default_factory=dict)
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.timestamps)


def _stored_shape(entry: Mapping[str, Any]) -> tuple[int, ...]:
    """A feature's shape as info.json gives it; video shapes as (height, width, channels), whatever
    order the dataset stored them in (LeRobot datasets use both (H, W, C) and (C, H, W))."""
    shape = tuple(int(n) for n in entry["shape"])
    if entry.get("dtype") not in ("video", "image") or len(shape) != 3:
        return shape
    names = [str(name).lower() for name in entry.get("names") or []]
    if len(names) == 3 and any(name.startswith("height") or name == "h" for name in names):
        by_name = {name[0]: size for name, size in zip(names, shape, strict=True)}
        return (by_name.get("h", shape[0]), by_name.get("w", shape[1]), by_name.get("c", shape[2]))
    return (shape[1], shape[2], shape[0]) if shape[0] in (1, 3, 4) and shape[2] not in (1, 3, 4) else shape


def _layout_problem(root: Path) -> str | None:
    """Why ``root`` is not a LeRobotDataset v3 folder, judged from its files alone; None if it looks like one."""
    if not root.is_dir():
        return f"'{root}' is not a directory; point at the dataset root (the folder holding meta/, data/, videos/)"
    if root.name.startswith(".") and root.name.endswith(".partial"):
        return f"'{root}' is an unfinished recording (finalize() never ran); record it again"
    if (root / LEGACY_EPISODES_PATH).is_file() or any(root.glob("data/chunk-*/episode_*.parquet")):
        return (
            f"'{root}' is in the LeRobot v2.x layout (meta/episodes.jsonl, one file per episode); "
            f"convert it to v3.0 with LeRobot: `{CONVERT_V21_COMMAND}`"
        )
    if not (root / INFO_PATH).is_file():
        return (
            f"'{root}' has no {INFO_PATH}, so it is not a LeRobotDataset (or its recording did not finish); "
            "point at the dataset root, or record it again"
        )
    return None


class LeRobotDatasetReader:
    """Reads a LeRobotDataset v3.x: metadata on open, episodes (rows and decoded video frames) on demand.

    ``expect_robot_type`` / ``expect_features`` make a dataset of another robot fail here, with one
    message naming what differs, instead of later in training.
    """

    def __init__(
        self,
        root: str | Path,
        expect_robot_type: str | None = None,
        expect_features: Mapping[str, FeatureSpec] | None = None,
    ) -> None:
        self.root = Path(root)
        problem = _layout_problem(self.root)
        if problem is not None:
            raise DatasetLayoutError(problem)
        self.info = self._load_info()
        self._check_expectations(expect_robot_type, expect_features)
        self.tasks = tasks_from_table(self._read_parquet(TASKS_PATH), self.root / TASKS_PATH)
        self.episodes = self._load_episodes()
        stats_path = self.root / STATS_PATH
        self.stats = statistics_from_json(read_json_object(stats_path, "statistics")) if stats_path.exists() else {}
        self._data_cache: tuple[Path, pa.Table] | None = None

    def _load_info(self) -> dict[str, Any]:
        path = self.root / INFO_PATH
        info = read_json_object(path, "dataset info")
        version = str(info.get("codebase_version", ""))
        if version.startswith("v2") or version.startswith("v1"):
            raise DatasetLayoutError(
                f"'{self.root}' is a LeRobot {version} dataset (codebase_version in {INFO_PATH}); this reader takes "
                f"v3.x: convert it with LeRobot: `{CONVERT_V21_COMMAND}`"
            )
        if not version.startswith("v3."):
            raise DatasetLayoutError(
                f"'{path}' has codebase_version {version or 'missing'}; this reader takes LeRobotDataset v3.x "
                "(re-export the dataset with LeRobot >= 0.4)"
            )
        missing = [key for key in REQUIRED_INFO_KEYS if key not in info]
        if missing:
            raise DatasetLayoutError(f"'{path}' lacks {missing}; it is damaged: re-download or re-record it")
        if not isinstance(info["features"], dict) or ACTION_KEY not in info["features"]:
            raise DatasetLayoutError(
                f"'{path}' declares no '{ACTION_KEY}' feature, so its episodes carry no robot actions; "
                "use a dataset recorded with actions"
            )
        return info

    def _check_expectations(
        self, expect_robot_type: str | None, expect_features: Mapping[str, FeatureSpec] | None
    ) -> None:
        if expect_robot_type is not None and self.robot_type != expect_robot_type:
            raise DatasetLayoutError(
                f"'{self.root}' was recorded with robot_type {self.robot_type!r}, not {expect_robot_type!r}; "
                "use a dataset of that robot, or pass expect_robot_type to match this one"
            )
        differences = []
        for key, spec in (expect_features or {}).items():
            found = self.features.get(key)
            if found is None:
                differences.append(f"'{key}' is missing")
            elif _stored_shape(found) != spec.shape or found["dtype"] != spec.dtype:
                differences.append(
                    f"'{key}' is {found['dtype']} {_stored_shape(found)}, expected {spec.dtype} {spec.shape}"
                )
        if differences:
            raise DatasetLayoutError(
                f"'{self.root}' does not have the expected features ({'; '.join(differences)}); use a dataset "
                "recorded for this robot, or convert its features"
            )

    def _read_parquet(self, relative: str) -> pa.Table:
        path = self.root / relative
        if not path.is_file():
            raise DatasetLayoutError(f"'{path}' is missing; the dataset is incomplete: re-download or re-record it")
        try:
            return pq.read_table(path)
        except (pa.ArrowException, OSError) as error:
            raise DatasetLayoutError(f"'{path}' is not a readable parquet file ({error}); re-download it") from None

    def _load_episodes(self) -> list[dict[str, Any]]:
        paths = sorted((self.root / EPISODES_DIR).glob("chunk-*/file-*.parquet"))
        if not paths:
            raise DatasetLayoutError(
                f"'{self.root / EPISODES_DIR}' holds no chunk-*/file-*.parquet; the dataset is incomplete: "
                "re-download or re-record it"
            )
        rows = []
        for path in paths:
            table = self._read_parquet(str(path.relative_to(self.root)))
            rows += table.select([name for name in table.column_names if not name.startswith("stats/")]).to_pylist()
        rows.sort(key=lambda row: row["episode_index"])
        if [row["episode_index"] for row in rows] != list(range(len(rows))):
            raise DatasetLayoutError(f"episode indices in '{self.root / EPISODES_DIR}' are not 0..N-1; re-export it")
        return rows

    @property
    def fps(self) -> int:
        return int(self.info["fps"])

    @property
    def robot_type(self) -> str | None:
        return self.info.get("robot_type")

    @property
    def features(self) -> dict[str, dict[str, Any]]:
        return self.info["features"]

    @property
    def cameras(self) -> list[str]:
        """The video keys, e.g. ``observation.images.third_person``."""
        return [key for key, entry in self.features.items() if entry.get("dtype") == "video"]

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    def _inside_root(self, relative: str) -> str:
        """``relative`` if it names a file inside the dataset folder (after resolving links), else an error."""
        if not (self.root / relative).resolve().is_relative_to(self.root.resolve()):
            raise DatasetLayoutError(
                f"'{INFO_PATH}' of '{self.root}' points at '{relative}', outside the dataset folder; restore the file"
            )
        return relative

    def _vector_column(self, rows: pa.Table, key: str, index: int) -> np.ndarray:
        """Column ``key`` as (T, width) numbers, width from info.json's shape, else one clear error."""
        entry = self.features[key]
        where = f"column '{key}' of episode {index} in '{self.root}'"
        if key not in rows.column_names:
            raise DatasetLayoutError(f"{where} is missing; the dataset is damaged: re-export it")
        value_type = rows[key].type
        while (
            pa.types.is_list(value_type)
            or pa.types.is_large_list(value_type)
            or pa.types.is_fixed_size_list(value_type)
        ):
            value_type = value_type.value_type
        if not (pa.types.is_integer(value_type) or pa.types.is_floating(value_type) or pa.types.is_boolean(value_type)):
            raise DatasetLayoutError(
                f"{where} holds {value_type} values, not numbers; the dataset is damaged: re-export it"
            )
        try:
            width = int(np.prod([int(n) for n in entry["shape"]]))
            values = column_to_numpy(rows[key], width)
        except (TypeError, ValueError, KeyError, pa.ArrowException) as error:
            raise DatasetLayoutError(
                f"{where} does not match its feature in {INFO_PATH} ({entry.get('dtype')} {entry.get('shape')}): "
                f"{error}; the dataset is damaged: re-export it"
            ) from None
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            row = int(np.argwhere(~np.isfinite(values))[0][0])
            raise DatasetLayoutError(
                f"{where} holds NaN or infinite values (first at frame "
                f"{row}); training on them would corrupt the model: fix or drop those frames and re-export"
            )
        return values

    def _episode_rows(self, index: int) -> pa.Table:
        if not 0 <= index < self.num_episodes:
            raise IndexError(f"episode {index} is not among the {self.num_episodes} episodes of '{self.root}'")
        meta = self.episodes[index]
        relative = self._inside_root(
            format_path_template(
                self.info["data_path"],
                "data_path",
                chunk_index=meta["data/chunk_index"],
                file_index=meta["data/file_index"],
            )
        )
        path = self.root / relative
        if self._data_cache is None or self._data_cache[0] != path:
            self._data_cache = (path, self._read_parquet(relative))
        table = self._data_cache[1]
        rows = table.filter(pc.equal(table["episode_index"], index))
        if rows.num_rows != meta["length"]:
            raise DatasetLayoutError(
                f"'{path}' holds {rows.num_rows} frames of episode {index}, its metadata says {meta['length']}; "
                "the dataset is damaged: re-download or re-record it"
            )
        return rows

    def episode(self, index: int, cameras: Sequence[str] | None = None) -> Episode:
        """Episode ``index`` with every frame's state, action, timestamp and the frames of ``cameras``
        (None: all cameras) decoded with decord at the episode's timestamps."""
        rows = self._episode_rows(index)
        meta = self.episodes[index]
        task_indices = column_to_numpy(rows["task_index"]).astype(np.int64)
        known = {STATE_KEY, ACTION_KEY, *FRAME_INDEX_FEATURES}
        episode = Episode(
            index=index,
            task=self.tasks[int(task_indices[0])],
            tasks=list(meta.get("tasks") or dict.fromkeys(self.tasks[int(i)] for i in task_indices)),
            states=(
                self._vector_column(rows, STATE_KEY, index)
                if STATE_KEY in rows.column_names and STATE_KEY in self.features
                else np.zeros((rows.num_rows, 0), dtype=np.float32)
            ),
            actions=self._vector_column(rows, ACTION_KEY, index),
            timestamps=column_to_numpy(rows["timestamp"]).astype(np.float64),
            task_indices=task_indices,
            extra={name: column_to_numpy(rows[name]) for name in rows.column_names if name not in known},
        )
        for camera in self.cameras if cameras is None else cameras:
            episode.frames[camera] = self.frames(index, camera, episode.timestamps)
        return episode

    def video_span(self, index: int, camera: str) -> tuple[Path, float, float]:
        """The mp4 holding episode ``index`` of ``camera`` and the episode's (from, to) time in it, seconds."""
        if camera not in self.cameras:
            raise DatasetLayoutError(f"'{self.root}' has no camera {camera!r}; use one of {self.cameras}")
        meta = self.episodes[index]
        path = self.root / self._inside_root(
            format_path_template(
                self.info.get("video_path"),
                "video_path",
                video_key=camera,
                chunk_index=meta[f"videos/{camera}/chunk_index"],
                file_index=meta[f"videos/{camera}/file_index"],
            )
        )
        if not path.is_file():
            raise DatasetLayoutError(f"'{path}' is missing; the dataset is incomplete: re-download or re-record it")
        return path, float(meta[f"videos/{camera}/from_timestamp"]), float(meta[f"videos/{camera}/to_timestamp"])

    def frames(self, index: int, camera: str, timestamps: np.ndarray) -> np.ndarray:
        """Frames of ``camera`` at ``timestamps`` (seconds from the start of episode ``index``), (N, H, W, 3) uint8."""
        path, from_timestamp, _ = self.video_span(index, camera)
        video = probe_video(path)
        if len(timestamps) == 0:
            return np.zeros((0, video.height, video.width, 3), dtype=np.uint8)
        times = from_timestamp + np.asarray(timestamps, dtype=np.float64)
        indices = np.round(times * video.fps).astype(np.int64)
        if indices.min() < 0 or indices.max() >= video.frames:
            raise VideoReadError(
                f"episode {index} needs frames up to {int(indices.max())} of '{path}', which has {video.frames}; "
                "the video is truncated: re-download or re-record the dataset"
            )
        return decode_frames(video, indices).frames
