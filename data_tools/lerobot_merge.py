"""Merging LeRobotDatasets v3 into one, e.g. the robot daemon's one-dataset-per-episode output
(``RUN_DIR/episodes/episode-*``), with episode, frame and task indices, file indices, timestamps and
statistics rewritten, and videos copied packet for packet (stream copy, no re-encoding).

**Decisions:** the inputs must agree on fps, robot_type and every feature (video ``info`` included), as
LeRobot's ``aggregate_datasets`` requires, and the first difference is named with its dataset; nothing
is written until all inputs are checked, and the output is built in a hidden ``.OUT.partial`` folder
renamed at the end (the writer's rule). An episode whose video does not start on a keyframe (videos
written by OpenCV before this toolkit used PyAV) cannot be copied, so it alone is decoded and
re-encoded with the same codec. Numeric statistics are recomputed from the merged frames (LeRobot
copies per-episode ``stats/index`` as they were); image statistics are copied from the inputs.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from data_tools.lerobot_dataset import DatasetWriteError, LeRobotDatasetWriter
from data_tools.lerobot_format import (
    ACTION_KEY,
    EPISODES_DIR,
    FRAME_INDEX_FEATURES,
    INFO_PATH,
    NUMERIC_DTYPES,
    STATE_KEY,
    FeatureSpec,
    image_statistics,
)
from data_tools.lerobot_reader import LeRobotDatasetReader, _stored_shape
from data_tools.video import VideoReadError
from data_tools.video_encode import DEFAULT_VIDEO_CODEC, VIDEO_ENCODERS, encode_video, read_segment


class DatasetMergeError(DatasetWriteError):
    """Datasets that cannot be merged into one: none given, or they differ in robot, fps or features."""


@dataclass
class MergeSummary:
    out: Path
    datasets: int
    episodes: int
    frames: int
    copied_videos: int  # episode videos copied packet for packet
    reencoded_videos: int  # episode videos that had to be decoded and encoded again

    def format(self) -> str:
        return (
            f"merged {self.datasets} datasets ({self.episodes} episodes, {self.frames} frames) into {self.out}\n"
            f"videos: {self.copied_videos} episode videos copied without re-encoding, "
            f"{self.reencoded_videos} re-encoded"
        )


def dataset_roots(inputs: Sequence[str | Path]) -> list[Path]:
    """The dataset folders that ``inputs`` name: a dataset folder itself, a folder of datasets (its
    non-hidden subfolders holding meta/info.json, sorted), or a glob of either."""
    roots: list[Path] = []
    for item in inputs:
        text = str(item)
        matches = sorted(glob.glob(text)) if glob.has_magic(text) else [text]
        if not matches:
            raise DatasetMergeError(f"'{text}' matches no file; give a dataset folder, a folder of datasets or a glob")
        for match in map(Path, matches):
            if (match / INFO_PATH).is_file():
                roots.append(match)
                continue
            children = sorted(
                child for child in match.iterdir() if not child.name.startswith(".") and (child / INFO_PATH).is_file()
            ) if match.is_dir() else []  # fmt: skip
            if not children:
                raise DatasetMergeError(
                    f"'{match}' is neither a LeRobot dataset (no {INFO_PATH}) nor a folder of datasets; "
                    "point at the datasets, e.g. RUN_DIR/episodes"
                )
            roots += children
    duplicates = sorted({str(root) for root in roots if roots.count(root) > 1})
    if duplicates:
        raise DatasetMergeError(f"{duplicates} are given more than once; name each dataset once")
    return roots


def _feature_difference(first: dict[str, Any], other: dict[str, Any]) -> str | None:
    missing, extra = sorted(set(first) - set(other)), sorted(set(other) - set(first))
    if missing or extra:
        return f"features {missing} are missing and {extra} are extra"
    for key, entry in first.items():
        theirs = other[key]
        for field in ("dtype", "shape", "names"):
            if entry.get(field) != theirs.get(field):
                return f"feature '{key}' has {field} {theirs.get(field)!r}, not {entry.get(field)!r}"
        ours_info, their_info = entry.get("info") or {}, theirs.get("info") or {}
        for name in sorted(set(ours_info) | set(their_info)):
            if ours_info.get(name) != their_info.get(name):
                return f"video '{key}' has {name} {their_info.get(name)!r}, not {ours_info.get(name)!r}"
    return None


def check_mergeable(readers: Sequence[LeRobotDatasetReader]) -> None:
    """One DatasetMergeError naming the first dataset that differs from the first one, and how."""
    first = readers[0]
    for reader in readers[1:]:
        if reader.fps != first.fps:
            difference = f"fps is {reader.fps}, not {first.fps}"
        elif reader.robot_type != first.robot_type:
            difference = f"robot_type is {reader.robot_type!r}, not {first.robot_type!r}"
        else:
            difference = _feature_difference(first.features, reader.features)
        if difference is not None:
            raise DatasetMergeError(
                f"'{reader.root}' differs from '{first.root}': its {difference}; merge only datasets recorded with "
                "the same robot, fps and features (nothing was written)"
            )


def _writer_features(reader: LeRobotDatasetReader) -> tuple[dict[str, FeatureSpec], list[str]]:
    features: dict[str, FeatureSpec] = {}
    for key, entry in reader.features.items():
        if entry.get("dtype") == "video" or key in FRAME_INDEX_FEATURES:
            continue
        spec = FeatureSpec.from_info(entry)
        if spec.dtype not in NUMERIC_DTYPES or len(spec.shape) != 1:
            raise DatasetMergeError(
                f"feature '{key}' of '{reader.root}' is {spec.dtype} {list(spec.shape)}; lerobot-merge takes numeric "
                "vectors and videos only: merge this dataset with LeRobot's aggregate_datasets"
            )
        features[key] = spec
    return features, reader.cameras


def _camera_stats(reader: LeRobotDatasetReader) -> dict[int, dict[str, dict[str, np.ndarray]]]:
    """Per episode index, the image statistics the dataset stores for each camera (absent ones skipped)."""
    found: dict[int, dict[str, dict[str, np.ndarray]]] = {}
    for path in sorted((reader.root / EPISODES_DIR).glob("chunk-*/file-*.parquet")):
        table = pq.read_table(path)
        for row in table.to_pylist():
            per_camera = found.setdefault(int(row["episode_index"]), {})
            for camera in reader.cameras:
                prefix = f"stats/{camera}/"
                values = {
                    name[len(prefix) :]: np.asarray(value) for name, value in row.items() if name.startswith(prefix)
                }
                if {"min", "max", "mean", "std", "count"} <= set(values):
                    per_camera[camera] = values
    return found


def merge_datasets(
    out: str | Path,
    inputs: Sequence[str | Path],
    data_file_size_mb: float = 100,
    video_file_size_mb: float = 200,
) -> MergeSummary:
    """Merge the datasets ``inputs`` name (see ``dataset_roots``) into a new LeRobotDataset v3 at ``out``."""
    out = Path(out)
    if out.exists():
        raise DatasetMergeError(f"'{out}' already exists; merge into a new folder (or delete the old one first)")
    roots = dataset_roots(inputs)
    readers = [LeRobotDatasetReader(root) for root in roots]
    check_mergeable(readers)
    first = readers[0]
    features, cameras = _writer_features(first)
    image_size = _stored_shape(first.features[cameras[0]])[:2] if cameras else (224, 224)
    codec = (first.features[cameras[0]].get("info") or {}).get("video.codec") if cameras else None
    writer = LeRobotDatasetWriter(
        out,
        first.robot_type,
        first.fps,
        features,
        cameras=cameras,
        image_size=image_size,
        data_file_size_mb=data_file_size_mb,
        video_file_size_mb=video_file_size_mb,
        video_codec=codec if codec in VIDEO_ENCODERS else DEFAULT_VIDEO_CODEC,
    )
    copied = reencoded = frames = 0
    try:
        for reader in readers:
            stored_stats = _camera_stats(reader)
            for index in range(reader.num_episodes):
                episode = reader.episode(index, cameras=())
                columns = {STATE_KEY: episode.states, ACTION_KEY: episode.actions}
                columns |= {key: episode.extra[key] for key in features if key not in columns}
                segments, camera_stats = {}, {}
                for camera in cameras:
                    path, start, end = reader.video_span(index, camera)
                    decoded = None
                    try:
                        segments[camera] = read_segment(path, start, end, reader.fps)
                        copied += 1
                    except VideoReadError:  # not cut on a keyframe: decode this episode and encode it again
                        decoded = reader.frames(index, camera, episode.timestamps)
                        scratch = writer.staging / ".episode" / f"{camera}.mp4"
                        segments[camera] = read_segment(encode_video(decoded, scratch, reader.fps, writer.video_codec))
                        reencoded += 1
                    stats = stored_stats.get(index, {}).get(camera)
                    if stats is None:
                        if decoded is None:
                            decoded = reader.frames(index, camera, episode.timestamps)
                        stats = image_statistics(decoded)
                    camera_stats[camera] = stats
                frame_tasks = [reader.tasks[int(task)] for task in episode.task_indices]
                writer.append_episode(columns, frame_tasks, segments, camera_stats, timestamps=episode.timestamps)
                frames += len(episode)
        writer.finalize()
    except BaseException:
        writer.abort()
        raise
    return MergeSummary(out, len(readers), sum(reader.num_episodes for reader in readers), frames, copied, reencoded)
