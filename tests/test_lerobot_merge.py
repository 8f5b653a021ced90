"""`agent data lerobot-merge` on real recordings: daemon-style one-dataset-per-episode output (written by
the daemon's own EpisodeRecorder) merged into one LeRobot v3 dataset with contiguous indices, tasks,
timestamps and frames, videos copied without re-encoding; multi-episode datasets cut apart and joined;
datasets that differ in fps or features refused by name with nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from agent_cli import agent, assert_one_clear_error

from data_tools.lerobot_dataset import FeatureSpec, LeRobotDatasetReader, LeRobotDatasetWriter
from data_tools.lerobot_merge import DatasetMergeError, merge_datasets
from robot.episode_recorder import TIMINGS, EpisodeRecorder, TickRecord

FPS = 10
SIZE = (32, 48)  # height, width
CAMERA = "observation.images.front"
STATE_NAMES = ("x", "y", "z", "gripper")
ACTION_NAMES = ("dx", "dy", "dz", "grip")
LENGTHS = [5, 7, 6]
TASKS = ["pick the cube", "stack the blocks", "pick the cube"]


def square(episode: int, step: int) -> np.ndarray:
    """A white square whose place tells the episode and step, on black."""
    frame = np.zeros((*SIZE, 3), np.uint8)
    left, top = 4 * step + 2, 3 * episode + 2
    frame[top : top + 10, left : left + 10] = 255
    return frame


def record_daemon_episode(root: Path, episode: int, length: int, task: str, fps: int = FPS, state_dim: int = 4) -> Path:
    recorder = EpisodeRecorder(
        root, "sim_arm", fps, state_dim, ACTION_NAMES, [CAMERA], SIZE, state_names=STATE_NAMES[:state_dim]
    )
    recorder.start(episode)
    for step in range(length):
        timings = {name: 0.01 * step for name in TIMINGS if name != "action_age_s"}  # a tick lacking a key
        recorder.add(
            TickRecord(
                state=np.full(state_dim, episode + 0.1 * step, np.float32),
                sent=np.full(4, step, np.float32),
                policy_action=None if step == 0 else np.full(4, step, np.float32),
                images={CAMERA: square(episode, step)},
                task=task,
                timings=timings,
                events=[],
            )
        )
    path = recorder.finish()
    assert path is not None and recorder.error is None
    return path


@pytest.fixture(scope="module")
def episodes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run") / "episodes"
    for episode, (length, task) in enumerate(zip(LENGTHS, TASKS, strict=True)):
        record_daemon_episode(root, episode, length, task)
    (root / ".episode-000003.partial").mkdir()  # a recording that crashed: not a dataset, skipped
    return root


def test_daemon_recordings_name_every_dimension_and_the_action_age(episodes_dir: Path):
    info = json.loads((episodes_dir / "episode-000000/meta/info.json").read_text())
    assert info["features"]["observation.state"]["names"] == list(STATE_NAMES)
    assert info["features"]["action"]["names"] == list(ACTION_NAMES)
    assert info["features"]["action.policy"]["names"] == list(ACTION_NAMES)
    episode = LeRobotDatasetReader(episodes_dir / "episode-000001").episode(0, cameras=())
    np.testing.assert_array_equal(episode.extra["timing.action_age_s"], np.zeros(LENGTHS[1]))  # lacking -> 0.0
    assert episode.extra["timing.period_s"][2] == pytest.approx(0.02)


def test_merging_daemon_episodes_gives_one_dataset_with_rewritten_indices(episodes_dir: Path, tmp_path: Path):
    out = tmp_path / "merged"
    result = agent("data", "lerobot-merge", str(out), str(episodes_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "merged 3 datasets (3 episodes, 18 frames)" in result.stdout
    assert "3 episode videos copied without re-encoding, 0 re-encoded" in result.stdout

    reader = LeRobotDatasetReader(out, expect_robot_type="sim_arm")
    assert reader.num_episodes == 3 and reader.tasks == ["pick the cube", "stack the blocks"]
    assert reader.info["total_frames"] == 18 and reader.info["splits"] == {"train": "0:3"}
    rows = reader.episodes
    assert [(row["dataset_from_index"], row["dataset_to_index"]) for row in rows] == [(0, 5), (5, 12), (12, 18)]
    starts = [row[f"videos/{CAMERA}/from_timestamp"] for row in rows]
    assert starts == pytest.approx([0.0, 0.5, 1.2])  # one mp4, episodes one after the other
    assert {row[f"videos/{CAMERA}/file_index"] for row in rows} == {0}
    data = pq.read_table(out / "data/chunk-000/file-000.parquet")
    assert data["index"].to_pylist() == list(range(18))
    assert data["episode_index"].to_pylist() == [0] * 5 + [1] * 7 + [2] * 6
    assert data["task_index"].to_pylist() == [0] * 5 + [1] * 7 + [0] * 6
    for index, length in enumerate(LENGTHS):
        episode = reader.episode(index)
        np.testing.assert_allclose(episode.timestamps, np.arange(length) / FPS, atol=1e-6)
        np.testing.assert_array_equal(episode.actions[:, 0], np.arange(length))
        np.testing.assert_allclose(episode.states[:, 0], index + 0.1 * np.arange(length), rtol=1e-6)
        originals = np.stack([square(index, step) for step in range(length)]).astype(np.int16)
        errors = np.abs(episode.frames[CAMERA].astype(np.int16) - originals).mean(axis=(1, 2, 3))
        assert errors.max() < 8.0, errors  # each decoded frame is its own original, not a neighbour
    stats = json.loads((out / "meta/stats.json").read_text())
    assert stats["index"]["max"] == [17] and stats["episode_index"]["max"] == [2]  # recomputed, not copied
    info = json.loads((out / "meta/info.json").read_text())
    assert info["features"][CAMERA]["info"]["video.codec"] == "h264"


def test_multi_episode_datasets_are_cut_apart_and_joined(episodes_dir: Path, tmp_path: Path):
    first = merge_datasets(tmp_path / "a", [str(episodes_dir / "episode-00000[01]")])
    assert (first.episodes, first.copied_videos) == (2, 2)
    merged = merge_datasets(tmp_path / "ab", [tmp_path / "a", episodes_dir / "episode-000002"])
    reader = LeRobotDatasetReader(merged.out)
    assert reader.num_episodes == 3 and merged.reencoded_videos == 0
    second = reader.episode(1)  # cut out of the middle of a's mp4, copied packet for packet
    originals = np.stack([square(1, step) for step in range(LENGTHS[1])]).astype(np.int16)
    assert np.abs(second.frames[CAMERA].astype(np.int16) - originals).mean() < 8.0


def test_old_mp4v_datasets_are_re_encoded_where_they_cannot_be_copied(tmp_path: Path):
    """Datasets written before PyAV (OpenCV mp4v, a keyframe every 12 frames) still merge: an episode that
    does not start on a keyframe is decoded and encoded again, with the same codec."""
    import cv2

    features = {"observation.state": FeatureSpec("float32", (2,)), "action": FeatureSpec("float32", (2,))}
    root = tmp_path / "old"
    writer = LeRobotDatasetWriter(root, "sim_arm", FPS, features, [CAMERA], SIZE)
    for episode in range(2):
        for step in range(7):
            writer.add_frame(np.zeros(2), np.full(2, step), {CAMERA: square(episode, step)}, "old task")
        writer.save_episode()
    writer.finalize()
    video = root / f"videos/{CAMERA}/chunk-000/file-000.mp4"  # rewrite the video as the old writer did
    frames = LeRobotDatasetReader(root).frames(0, CAMERA, np.arange(14) / FPS)  # both episodes, one file
    out = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (SIZE[1], SIZE[0]))
    for frame in frames:
        out.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    out.release()
    info = json.loads((root / "meta/info.json").read_text())
    info["features"][CAMERA]["info"]["video.codec"] = "mpeg4"
    (root / "meta/info.json").write_text(json.dumps(info))

    summary = merge_datasets(tmp_path / "merged", [root])
    assert (summary.copied_videos, summary.reencoded_videos) == (1, 1)
    episode = LeRobotDatasetReader(summary.out).episode(1)
    originals = np.stack([square(1, step) for step in range(7)]).astype(np.int16)
    assert np.abs(episode.frames[CAMERA].astype(np.int16) - originals).mean() < 10.0


def test_datasets_that_differ_are_refused_by_name_and_nothing_is_written(episodes_dir: Path, tmp_path: Path):
    inputs = tmp_path / "inputs"
    shutil.copytree(episodes_dir / "episode-000000", inputs / "episode-000000")
    slow = record_daemon_episode(tmp_path / "other", 7, 4, "pick the cube", fps=5)
    out = tmp_path / "merged"
    result = agent("data", "lerobot-merge", str(out), str(inputs / "episode-000000"), str(slow))
    assert_one_clear_error(result, str(slow), "fps is 5, not 10", "nothing was written")
    assert not out.exists() and not list(tmp_path.glob(".merged*"))

    narrow = record_daemon_episode(tmp_path / "narrow", 8, 4, "pick the cube", state_dim=3)
    with pytest.raises(DatasetMergeError, match=r"episode-000008' differs .*'observation.state' has shape \[3\]"):
        merge_datasets(out, [inputs / "episode-000000", narrow])
    assert not out.exists() and not list(tmp_path.glob(".merged*"))

    out.mkdir()
    with pytest.raises(DatasetMergeError, match="already exists"):
        merge_datasets(out, [inputs])
    with pytest.raises(DatasetMergeError, match="matches no file"):
        merge_datasets(tmp_path / "none", [tmp_path / "other" / "no-such-episode-*"])
    with pytest.raises(DatasetMergeError, match=r"neither a LeRobot dataset .* nor a folder of datasets"):
        merge_datasets(tmp_path / "none", [tmp_path])
