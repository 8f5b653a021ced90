"""Robot episodes in the LeRobotDataset v3.0 layout, so data recorded here opens in LeRobot and
LeRobot's datasets open here; and their conversion into training shards (the sample contract)::

    meta/info.json                                  codebase_version "v3.0", fps, features, path templates
    meta/stats.json                                 per feature: min max mean std count q01 q10 q50 q90 q99
    meta/tasks.parquet                              task (pandas index) -> task_index
    meta/episodes/chunk-000/file-000.parquet        one row per episode: tasks, length, file indices,
                                                    dataset_from/to_index, video from/to_timestamp, stats/...
    data/chunk-000/file-000.parquet                 one row per frame, several episodes per file
    videos/<video_key>/chunk-000/file-000.mp4       several episodes per file, one after the other

Data and video files roll to the next ``file-NNN`` when the size limit would be passed; a chunk folder
holds ``chunks_size`` files. Episode timestamps start at 0; a frame's time in its video file is the
episode's ``from_timestamp`` plus its ``timestamp``.

Videos are encoded by PyAV as LeRobot encodes them (``data_tools.video_encode``): each episode on
its own (H.264 ``yuv420p`` by default, which browsers play; HEVC or AV1 on request), then appended to
the camera's current mp4 by stream copy, so every episode starts on a keyframe and can later be copied
out again (``data_tools.lerobot_merge``); ``video.codec`` and the rest of a video's ``info`` are probed
from the file. The episodes metadata has every column LeRobot 0.4.4 writes, in its order and types
(``meta/episodes/chunk_index``/``file_index`` included, which its ``aggregate_datasets`` and resumed
recordings read). Known differences: dataset-level q01..q99 of numeric features are exact quantiles
over all frames (LeRobot merges histogram quantiles); the episodes metadata is one parquet file.
An episode's camera frames are spooled to disk until ``save_episode``.

A recording is written into a hidden sibling folder ``.NAME.partial`` and renamed to ``NAME`` by
``finalize``, so a crash never leaves a half dataset that looks complete.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_tools.atomic_files import write_json_atomically
from data_tools.errors import UserFacingError
from data_tools.lerobot_format import (
    ACTION_KEY,
    CODEBASE_VERSION,
    DATA_PATH,
    EPISODES_PATH,
    FRAME_INDEX_FEATURES,
    NUMERIC_DTYPES,
    STATE_KEY,
    VIDEO_PATH,
    DatasetLayoutError,
    FeatureSpec,
    aggregate_statistics,
    arrow_type,
    chunk_file_path,
    dimension_names,
    episodes_table,
    image_statistics,
    size_in_mb,
    statistics_to_json,
    tasks_table,
    typed_statistics,
)
from data_tools.lerobot_reader import Episode, LeRobotDatasetReader
from data_tools.shards import ShardWriter
from data_tools.video import VideoWriteError
from data_tools.video_encode import (
    DEFAULT_VIDEO_CODEC,
    VideoFileAppender,
    VideoSegment,
    encode_video,
    read_segment,
    video_encoder,
    video_stream_info,
)

__all__ = [
    "DatasetLayoutError",
    "DatasetWriteError",
    "Episode",
    "FeatureSpec",
    "LeRobotDatasetReader",
    "LeRobotDatasetWriter",
    "episodes_to_shards",
]

MEGABYTE = 1024 * 1024


class DatasetWriteError(UserFacingError, ValueError):
    """A recording call that cannot be honoured: a bad frame, a wrong order of calls, a taken path."""


@dataclass
class _RollingFile:
    """The data or video file being appended to: which one it is and how many frames it holds."""

    number: int  # running file number of its kind; chunk and file index derive from it
    chunk_index: int
    file_index: int
    path: Path
    frames: int = 0
    writer: Any = None  # pq.ParquetWriter or VideoFileAppender


def _roll_needed(current: _RollingFile | None, file_bytes: float, episode_bytes: float, limit_mb: float) -> bool:
    """LeRobot's rule: a new file when the current one plus this episode would reach the size limit
    (a file always takes at least one episode)."""
    if current is None:
        return True
    return current.frames > 0 and file_bytes + episode_bytes >= limit_mb * MEGABYTE


class LeRobotDatasetWriter:
    """Records episodes frame by frame into a LeRobotDataset v3.0 at ``root`` (which must not exist).

    ``features`` declares ``observation.state`` and ``action`` (and any extra numeric per-frame
    features passed through ``add_frame(extra=...)``); ``cameras`` are video keys such as
    ``observation.images.third_person``, each taking ``image_size`` = (height, width) RGB frames,
    encoded as ``video_codec`` ("h264", "hevc" or "av1"; LeRobot's own default is "av1").
    """

    def __init__(
        self,
        root: str | Path,
        robot_type: str | None,
        fps: int,
        features: Mapping[str, FeatureSpec],
        cameras: Sequence[str] = (),
        image_size: tuple[int, int] = (224, 224),
        chunks_size: int = 1000,
        data_file_size_mb: float = 100,
        video_file_size_mb: float = 200,
        video_codec: str = DEFAULT_VIDEO_CODEC,
    ) -> None:
        self.root = Path(root)
        if self.root.exists():
            raise DatasetWriteError(f"'{self.root}' already exists; record into a new folder or delete the old one")
        for key in (STATE_KEY, ACTION_KEY):
            if key not in features:
                raise DatasetWriteError(f"features has no '{key}'; declare it, e.g. FeatureSpec('float32', (7,))")
        for key, spec in features.items():
            if spec.dtype not in NUMERIC_DTYPES or len(spec.shape) != 1 or spec.shape[0] < 1:
                raise DatasetWriteError(
                    f"feature '{key}' is {spec.dtype} {spec.shape}; use a numeric dtype ({', '.join(NUMERIC_DTYPES)}) "
                    "and a 1-D shape such as (7,) (cameras go in `cameras`)"
                )
            if key in FRAME_INDEX_FEATURES or key in cameras:
                raise DatasetWriteError(f"feature '{key}' is filled in by the writer; remove it from features")
        if fps < 1 or chunks_size < 1 or data_file_size_mb <= 0 or video_file_size_mb <= 0:
            raise DatasetWriteError("fps and chunks_size must be 1 or more and the file size limits positive")
        if len(image_size) != 2 or min(image_size) < 8:
            raise DatasetWriteError(f"image_size is {image_size}; give (height, width) of at least 8 pixels")
        if cameras and (image_size[0] % 2 or image_size[1] % 2):
            raise DatasetWriteError(
                f"image_size is {tuple(image_size)}; {video_codec} video in yuv420p needs an even height and width "
                "(resize the camera images by one pixel)"
            )
        if cameras:
            try:
                video_encoder(video_codec)
            except VideoWriteError as error:
                raise DatasetWriteError(str(error)) from None
        self.robot_type = robot_type
        self.fps = int(fps)
        self.features = dict(features)
        self.cameras = list(cameras)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.chunks_size = chunks_size
        self.data_file_size_mb = data_file_size_mb
        self.video_file_size_mb = video_file_size_mb
        self.video_codec = video_codec
        self.staging = self.root.with_name(f".{self.root.name}.partial")
        if self.staging.exists():  # left by a recording that crashed; it can never become a dataset
            shutil.rmtree(self.staging)
        (self.staging / "meta").mkdir(parents=True)
        self._spool_dir = self.staging / ".episode"
        self._spool_dir.mkdir()
        self.tasks: list[str] = []
        self._episodes: list[dict[str, Any]] = []
        self._episode_stats: list[dict[str, dict[str, np.ndarray]]] = []
        self._columns: dict[str, list[np.ndarray]] = {key: [] for key in (*self.features, *FRAME_INDEX_FEATURES)}
        self._data_file: _RollingFile | None = None
        self._video_files: dict[str, _RollingFile | None] = dict.fromkeys(self.cameras)
        self._video_info: dict[str, dict[str, Any]] = {}
        self._buffer: dict[str, list[np.ndarray]] = {}
        self._buffer_tasks: list[str] = []
        self._finalized = False

    @property
    def total_frames(self) -> int:
        return sum(episode["length"] for episode in self._episodes)

    def add_frame(
        self,
        observation_state: np.ndarray,
        action: np.ndarray,
        images: Mapping[str, np.ndarray],
        task: str,
        extra: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Append one frame to the episode being recorded (frames are saved by ``save_episode``)."""
        self._check_open()
        if not isinstance(task, str) or not task.strip():
            raise DatasetWriteError("task is empty; describe the episode's task in words, e.g. 'pick up the cube'")
        values = {STATE_KEY: observation_state, ACTION_KEY: action, **(extra or {})}
        unknown = sorted(set(values) - set(self.features))
        missing = sorted(set(self.features) - set(values))
        if unknown or missing:
            raise DatasetWriteError(
                f"frame features differ from the declared ones (unknown: {unknown}, missing: {missing}); "
                "pass exactly the declared features through observation_state, action and extra"
            )
        if sorted(images) != sorted(self.cameras):
            raise DatasetWriteError(
                f"images are for cameras {sorted(images)}; pass one image for each of {self.cameras}"
            )
        checked = {key: self._checked_value(key, value) for key, value in values.items()}
        for camera in self.cameras:
            image = np.asarray(images[camera])
            if image.dtype != np.uint8 or image.shape != (*self.image_size, 3):
                raise DatasetWriteError(
                    f"camera '{camera}' image is {image.dtype} {image.shape}; pass uint8 RGB of shape "
                    f"{(*self.image_size, 3)} (resize it, or set image_size)"
                )
            with open(self._spool_dir / f"{camera}.rgb", "ab") as spool:
                spool.write(np.ascontiguousarray(image).tobytes())
        for key, value in checked.items():
            self._buffer.setdefault(key, []).append(value)
        self._buffer_tasks.append(task)

    def _checked_value(self, key: str, value: np.ndarray) -> np.ndarray:
        spec = self.features[key]
        array = np.asarray(value)
        if array.shape != spec.shape or not np.all(np.isfinite(array.astype(np.float64))):
            raise DatasetWriteError(
                f"'{key}' is {array.shape} with values {array.ravel()[:4].tolist()}...; pass finite numbers "
                f"of shape {spec.shape} as declared"
            )
        return array.astype(spec.dtype)

    def discard_episode(self) -> None:
        """Drop the frames recorded since the last ``save_episode``; nothing of them stays on disk."""
        self._check_open()
        self._buffer, self._buffer_tasks = {}, []
        for spool in self._spool_dir.glob("*"):
            spool.unlink()

    def save_episode(self) -> int:
        """Write the recorded frames as the next episode (data rows, video frames, metadata); returns its index."""
        self._check_open()
        length = len(self._buffer_tasks)
        if length == 0:
            raise DatasetWriteError("no frames to save; call add_frame for each step of the episode first")
        columns = {key: np.stack(values) for key, values in self._buffer.items()}
        segments, camera_stats = {}, {}
        for camera in self.cameras:
            frames = np.fromfile(self._spool_dir / f"{camera}.rgb", dtype=np.uint8).reshape(length, *self.image_size, 3)
            encoded = encode_video(frames, self._spool_dir / f"{camera}.mp4", self.fps, self.video_codec)
            segments[camera] = read_segment(encoded, fps=self.fps)
            camera_stats[camera] = image_statistics(frames)
        index = self.append_episode(columns, self._buffer_tasks, segments, camera_stats)
        self.discard_episode()
        return index

    def append_episode(
        self,
        columns: Mapping[str, np.ndarray],
        frame_tasks: Sequence[str],
        videos: Mapping[str, VideoSegment],
        camera_stats: Mapping[str, dict[str, np.ndarray]],
        timestamps: np.ndarray | None = None,
    ) -> int:
        """Store one whole episode: its per-frame ``columns`` (the declared features), each frame's task,
        each camera's encoded video (copied, never re-encoded) and image statistics; ``timestamps`` default
        to frame_index / fps. ``save_episode`` and the dataset merge both end here; returns its index."""
        self._check_open()
        length = len(frame_tasks)
        episode_index = len(self._episodes)
        for task in dict.fromkeys(frame_tasks):
            if task not in self.tasks:
                self.tasks.append(task)
        first_index = self.total_frames
        frame_index = np.arange(length, dtype=np.int64)
        columns = {key: np.asarray(columns[key]).astype(spec.dtype) for key, spec in self.features.items()}
        columns |= {
            "timestamp": (frame_index / self.fps if timestamps is None else timestamps).astype(np.float32),
            "frame_index": frame_index,
            "episode_index": np.full(length, episode_index, dtype=np.int64),
            "index": np.arange(first_index, first_index + length, dtype=np.int64),
            "task_index": np.array([self.tasks.index(task) for task in frame_tasks], dtype=np.int64),
        }
        row: dict[str, Any] = {
            "episode_index": episode_index,
            "tasks": list(dict.fromkeys(frame_tasks)),
            "length": length,
        }
        row |= self._write_data(columns)
        row |= {"dataset_from_index": first_index, "dataset_to_index": first_index + length}
        for camera in self.cameras:
            row |= self._write_video(camera, videos[camera])
        stats = {key: typed_statistics(columns[key]) for key in self.features}
        stats |= {camera: camera_stats[camera] for camera in self.cameras}
        stats |= {key: typed_statistics(columns[key]) for key in FRAME_INDEX_FEATURES}
        for feature, entry in stats.items():
            row |= {f"stats/{feature}/{name}": value for name, value in entry.items()}
        row |= {"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0}
        self._episodes.append(row)
        self._episode_stats.append(stats)
        for key, values in self._columns.items():
            values.append(columns[key])
        return episode_index

    def _write_data(self, columns: dict[str, np.ndarray]) -> dict[str, int]:
        specs = {**self.features, **{key: FeatureSpec(dtype, (1,)) for key, dtype in FRAME_INDEX_FEATURES.items()}}
        arrays = {}
        for key, spec in specs.items():
            values = columns[key]
            if spec.shape == (1,):
                arrays[key] = pa.array(values.reshape(-1), type=arrow_type(spec))
            else:
                arrays[key] = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), spec.shape[0])
        table = pa.table(arrays)
        length = len(columns["index"])
        current = self._data_file
        file_bytes = current.path.stat().st_size if current is not None else 0
        episode_bytes = file_bytes / current.frames * length if current is not None and current.frames else 0
        if _roll_needed(current, file_bytes, episode_bytes, self.data_file_size_mb):
            number = -1 if self._data_file is None else self._data_file.number
            self._close_data_file()
            chunk, file, relative = chunk_file_path(DATA_PATH, number + 1, self.chunks_size)
            path = self.staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = pq.ParquetWriter(path, table.schema, compression="snappy")
            self._data_file = _RollingFile(number + 1, chunk, file, path, writer=writer)
        current = self._data_file
        current.writer.write_table(table)
        current.frames += length
        return {"data/chunk_index": current.chunk_index, "data/file_index": current.file_index}

    def _write_video(self, camera: str, segment: VideoSegment) -> dict[str, Any]:
        current = self._video_files[camera]
        episode_bytes = sum(packet.size for packet in segment.packets)
        file_bytes = 0 if current is None else current.writer.bytes
        incompatible = current is not None and not current.writer.accepts(segment)
        if incompatible or _roll_needed(current, file_bytes, episode_bytes, self.video_file_size_mb):
            number = -1 if current is None else current.number
            if current is not None:
                current.writer.close()
            chunk, file, relative = chunk_file_path(VIDEO_PATH, number + 1, self.chunks_size, video_key=camera)
            appender = VideoFileAppender(self.staging / relative, segment.source)
            current = self._video_files[camera] = _RollingFile(number + 1, chunk, file, appender.path, writer=appender)
            self._video_info.setdefault(camera, video_stream_info(segment.source))
        start, end = current.writer.append(segment)
        current.frames += len(segment.packets)
        return {
            f"videos/{camera}/chunk_index": current.chunk_index,
            f"videos/{camera}/file_index": current.file_index,
            f"videos/{camera}/from_timestamp": start,
            f"videos/{camera}/to_timestamp": end,
        }

    def _close_data_file(self) -> None:
        if self._data_file is not None:
            self._data_file.writer.close()

    def _close_files(self) -> None:
        self._close_data_file()
        for current in self._video_files.values():
            if current is not None:
                current.writer.close()

    def finalize(self) -> Path:
        """Close the files, write meta/ (info.json last) and move the dataset to ``root``; returns ``root``."""
        self._check_open()
        if self._buffer_tasks:
            raise DatasetWriteError(
                f"{len(self._buffer_tasks)} frames were recorded but not saved; "
                "call save_episode() or discard_episode() first"
            )
        if not self._episodes:
            raise DatasetWriteError("no episode was saved; record one and call save_episode() before finalize()")
        self._close_files()
        shutil.rmtree(self._spool_dir)
        meta = self.staging / "meta"
        pq.write_table(tasks_table(self.tasks), meta / "tasks.parquet")
        episodes_path = self.staging / EPISODES_PATH.format(chunk_index=0, file_index=0)
        episodes_path.parent.mkdir(parents=True)
        pq.write_table(episodes_table(self._episodes, self.cameras), episodes_path, compression="snappy")
        stats = {key: typed_statistics(np.concatenate(self._columns[key])) for key in self.features}
        stats |= {
            camera: aggregate_statistics([part[camera] for part in self._episode_stats]) for camera in self.cameras
        }
        stats |= {key: typed_statistics(np.concatenate(self._columns[key])) for key in FRAME_INDEX_FEATURES}
        write_json_atomically(meta / "stats.json", statistics_to_json(stats))
        write_json_atomically(meta / "info.json", self._info())
        self.staging.rename(self.root)
        self._finalized = True
        return self.root

    def _info(self) -> dict[str, Any]:
        features = {key: spec.to_info() for key, spec in self.features.items()}
        height, width = self.image_size
        for camera in self.cameras:
            features[camera] = {
                "dtype": "video",
                "shape": [height, width, 3],
                "names": ["height", "width", "channels"],
                "info": self._video_info[camera],
            }
        features |= {key: {"dtype": dtype, "shape": [1], "names": None} for key, dtype in FRAME_INDEX_FEATURES.items()}
        return {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self._episodes),
            "total_frames": self.total_frames,
            "total_tasks": len(self.tasks),
            "chunks_size": self.chunks_size,
            "data_files_size_in_mb": size_in_mb(self.data_file_size_mb),
            "video_files_size_in_mb": size_in_mb(self.video_file_size_mb),
            "fps": self.fps,
            "splits": {"train": f"0:{len(self._episodes)}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.cameras else None,
            "features": features,
        }

    def abort(self) -> None:
        """Stop recording and delete everything written so far (``root`` is never created)."""
        if self._finalized:
            return
        try:
            self._close_files()
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)
        self._finalized = True

    def _check_open(self) -> None:
        if self._finalized:
            raise DatasetWriteError(f"the recording of '{self.root}' is finished; create a new writer to record more")

    def __enter__(self) -> LeRobotDatasetWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if exc_type is None and not self._finalized:
            self.finalize()
        elif exc_type is not None:
            self.abort()


DEFAULT_PROMPT = "What action should the robot take to {task}?"
STATISTICS_FILENAME = "dataset_statistics.json"  # the OpenVLA/Magma name magma.actions reads
OPENVLA_KEYS = ("q01", "q99", "mean", "std", "min", "max")


def state_statistics(reader: LeRobotDatasetReader) -> dict[str, list] | None:
    """The recorded ``observation.state`` statistics in the same shape (every dimension normalised), or None
    when the dataset records no state or no quantiles for it."""
    recorded = reader.stats.get(STATE_KEY, {})
    if STATE_KEY not in reader.features or any(key not in recorded for key in OPENVLA_KEYS):
        return None
    stats = {key: np.asarray(recorded[key], dtype=np.float64).reshape(-1).tolist() for key in OPENVLA_KEYS}
    return {**stats, "mask": [True] * len(stats["q01"])}


def future_actions(actions: np.ndarray, step: int, length: int) -> tuple[np.ndarray, list[bool]]:
    """The ``length`` actions of an episode from ``step`` on and their mask: steps past the episode's end
    repeat its last action and are masked False."""
    rows = actions[step : step + length]
    valid = [True] * len(rows) + [False] * (length - len(rows))
    if len(rows) < length:
        rows = np.concatenate([rows, np.repeat(actions[-1:], length - len(rows), axis=0)])
    return rows, valid


def action_statistics(reader: LeRobotDatasetReader) -> dict[str, list]:
    """The recorded ``action`` statistics in the OpenVLA/Magma shape (q01, q99, mask, mean, std, min, max).

    ``mask`` is True for every dimension except those the action feature names ``gripper`` (LeRobot
    names such as ``gripper`` or ``gripper.pos``): the robot codec leaves a masked dimension
    unnormalised, as OpenVLA does for its absolute gripper command.
    """
    recorded = reader.stats.get(ACTION_KEY, {})
    missing = [key for key in OPENVLA_KEYS if key not in recorded]
    if missing:
        raise DatasetLayoutError(
            f"'{reader.root}/meta/stats.json' has no {missing} for 'action' (older LeRobot versions recorded no "
            "quantiles); add them with LeRobot's `python -m lerobot.scripts.augment_dataset_quantile_stats`"
        )
    names = dimension_names(reader.features[ACTION_KEY].get("names"))
    dims = int(np.prod(reader.features[ACTION_KEY]["shape"]))
    mask = [not (i < len(names) and "gripper" in names[i].lower()) for i in range(dims)]
    stats = {key: np.asarray(recorded[key], dtype=np.float64).reshape(-1).tolist() for key in OPENVLA_KEYS}
    return {**stats, "mask": mask}


def _task_phrase(task: str) -> str:
    """A task as it reads inside the prompt: 'Pick up the cube.' -> 'pick up the cube'."""
    phrase = task.strip().rstrip(".")
    return phrase[:1].lower() + phrase[1:]


def episodes_to_shards(
    reader: LeRobotDatasetReader,
    out_dir: str | Path,
    samples_per_shard: int = 1000,
    camera: str | None = None,
    prompt_template: str = DEFAULT_PROMPT,
    frame_stride: int = 1,
    dataset_name: str | None = None,
    chunk_length: int = 1,
) -> tuple[list[Path], Path]:
    """One robot-action training sample per ``frame_stride``-th frame of every episode (the frame of
    ``camera``, None: the first camera; the task in ``prompt_template``; the action in ``actions``; the
    proprioceptive state in ``state``), written as shards into ``out_dir`` with ``dataset_statistics.json``
    (action and state statistics) beside them, keyed by ``dataset_name`` (None: the dataset folder's name).
    ``chunk_length`` > 1 writes the next ``chunk_length`` actions as rows, with ``action_mask`` False for
    steps past the episode's end (models with a shorter chunk take the first rows). Returns (shard paths,
    statistics path)."""
    if frame_stride < 1:
        raise DatasetWriteError(f"frame_stride is {frame_stride}; use 1 (every frame) or more")
    if not 1 <= chunk_length <= 256:
        raise DatasetWriteError(f"chunk_length is {chunk_length}; use 1 (one action per sample) to 256")
    if "{task}" not in prompt_template:
        raise DatasetWriteError(f"prompt_template {prompt_template!r} has no {{task}}; put the task into it")
    if not reader.cameras:
        raise DatasetLayoutError(f"'{reader.root}' has no video feature; shards need one camera image per sample")
    camera = camera or reader.cameras[0]
    name = dataset_name or reader.root.name
    statistics = action_statistics(reader)
    states = state_statistics(reader)
    out_dir = Path(out_dir)
    with ShardWriter(out_dir, max_samples_per_shard=samples_per_shard) as writer:
        for index in range(reader.num_episodes):
            episode = reader.episode(index, cameras=())
            picked = np.arange(0, len(episode), frame_stride)
            frames = reader.frames(index, camera, episode.timestamps[picked])
            for frame, step in zip(frames, picked, strict=True):
                task = reader.tasks[int(episode.task_indices[step])]
                record = {
                    "id": f"{name}-{index:06d}-{int(step):06d}",
                    "source": name,
                    "conversations": [
                        {"from": "human", "value": "<image>\n" + prompt_template.format(task=_task_phrase(task))},
                        {"from": "gpt", "value": "<action>"},
                    ],
                    "actions": episode.actions[step].astype(np.float64).tolist(),
                    "state": episode.states[step].astype(np.float64).tolist(),
                    "meta": {
                        "episode_index": index,
                        "frame_index": int(step),
                        "timestamp": float(episode.timestamps[step]),
                        "task": task,
                        "camera": camera,
                        "robot_type": reader.robot_type,
                    },
                }
                if chunk_length > 1:
                    rows, valid = future_actions(episode.actions, int(step), chunk_length)
                    record["actions"], record["action_mask"] = rows.astype(np.float64).tolist(), valid
                writer.write(record, [frame])
    statistics_path = out_dir / STATISTICS_FILENAME
    entry = {"action": statistics} | ({"state": states} if states else {})
    write_json_atomically(statistics_path, {name: entry})
    return writer.shards, statistics_path
