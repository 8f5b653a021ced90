"""LeRobotDataset v3 recording and reading on real files: the v3 layout and info.json, episodes read
back (rows exact, mp4 frames close), statistics equal to numpy's, several episodes per file and file
rolling, training shards with action statistics the robot codec loads, and clear errors for other
layouts, other robots and discarded or crashed recordings."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data_tools.lerobot_dataset import (
    DatasetLayoutError,
    DatasetWriteError,
    FeatureSpec,
    LeRobotDatasetReader,
    LeRobotDatasetWriter,
    episodes_to_shards,
)
from data_tools.sample_format import validate_sample
from magma.actions import RobotActionCodec, load_action_statistics

FPS = 10
HEIGHT, WIDTH = 48, 64
CAMERAS = ["observation.images.third_person", "observation.images.wrist"]
FEATURES = {
    "observation.state": FeatureSpec("float32", (4,), ["x", "y", "z", "gripper"]),
    "action": FeatureSpec("float32", (4,), ["dx", "dy", "dz", "gripper"]),
}
TASKS = ["Pick up the red cube.", "push the blue block"]
EPISODES = [(12, TASKS[0]), (15, TASKS[1]), (10, TASKS[0])]  # (length, task)
COLOURS = {CAMERAS[0]: (220, 40, 40), CAMERAS[1]: (40, 70, 220)}


def square_frame(camera: str, episode: int, step: int) -> np.ndarray:
    """A coloured 14-px square moving across a grey background, at a place set by episode and step."""
    frame = np.full((HEIGHT, WIDTH, 3), 128, dtype=np.uint8)
    left = (3 * step + 7 * episode) % (WIDTH - 14)
    top = (2 * step + 5 * episode) % (HEIGHT - 14)
    frame[top : top + 14, left : left + 14] = COLOURS[camera]
    return frame


def episode_arrays(episode: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(episode)
    states = rng.normal(size=(length, 4)).astype(np.float32)
    actions = rng.uniform(-1, 1, size=(length, 4)).astype(np.float32)
    actions[:, 3] = rng.integers(0, 2, size=length)  # an open/close gripper command
    return states, actions


def record(root: Path, **limits) -> Path:
    """Record the three EPISODES (with a discarded one before the second) and finalize."""
    writer = LeRobotDatasetWriter(
        root, robot_type="so100", fps=FPS, features=FEATURES, cameras=CAMERAS, image_size=(HEIGHT, WIDTH), **limits
    )
    for episode, (length, task) in enumerate(EPISODES):
        if episode == 1:  # an episode that goes wrong and is thrown away
            for step in range(5):
                images = {camera: square_frame(camera, 99, step) for camera in CAMERAS}
                writer.add_frame(np.ones(4), np.ones(4), images, "never kept")
            writer.discard_episode()
        states, actions = episode_arrays(episode, length)
        for step in range(length):
            images = {camera: square_frame(camera, episode, step) for camera in CAMERAS}
            writer.add_frame(states[step], actions[step], images, task)
        assert writer.save_episode() == episode
    return writer.finalize()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record(tmp_path_factory.mktemp("lerobot") / "so100_demo")


def test_layout_and_info_json_follow_lerobot_v3(dataset: Path):
    files = sorted(str(path.relative_to(dataset)) for path in dataset.rglob("*") if path.is_file())
    assert files == [
        "data/chunk-000/file-000.parquet",
        "meta/episodes/chunk-000/file-000.parquet",
        "meta/info.json",
        "meta/stats.json",
        "meta/tasks.parquet",
        *(f"videos/{camera}/chunk-000/file-000.mp4" for camera in sorted(CAMERAS)),
    ]
    assert not list(dataset.parent.glob(".*partial"))  # the staging folder became the dataset
    info = json.loads((dataset / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["robot_type"] == "so100" and info["fps"] == FPS
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 37, 2)
    assert (info["chunks_size"], info["data_files_size_in_mb"], info["video_files_size_in_mb"]) == (1000, 100, 200)
    assert info["splits"] == {"train": "0:3"}
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    features = info["features"]
    assert features["action"] == {"dtype": "float32", "shape": [4], "names": ["dx", "dy", "dz", "gripper"]}
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert features[key]["shape"] == [1]
    video = features[CAMERAS[0]]
    assert video["dtype"] == "video" and video["shape"] == [HEIGHT, WIDTH, 3]
    assert video["info"] == {  # probed from the file, the keys and order LeRobot 0.4.4 writes
        "video.height": HEIGHT,
        "video.width": WIDTH,
        "video.codec": "h264",
        "video.pix_fmt": "yuv420p",
        "video.is_depth_map": False,
        "video.fps": FPS,
        "video.channels": 3,
        "has_audio": False,
    }

    data = pq.read_table(dataset / "data/chunk-000/file-000.parquet")
    assert data.column_names == ["observation.state", "action", *list(features)[-5:]]
    assert data["index"].to_pylist() == list(range(37))
    tasks = pq.read_table(dataset / "meta/tasks.parquet")
    assert tasks.to_pylist() == [{"task_index": 0, "task": TASKS[0]}, {"task_index": 1, "task": TASKS[1]}]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]  # pandas restores the index

    episodes = pq.read_table(dataset / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [row["tasks"] for row in episodes] == [[TASKS[0]], [TASKS[1]], [TASKS[0]]]
    assert [(row["dataset_from_index"], row["dataset_to_index"]) for row in episodes] == [(0, 12), (12, 27), (27, 37)]
    assert all(row["data/chunk_index"] == 0 and row["data/file_index"] == 0 for row in episodes)
    # several episodes in one video file, one after the other
    starts = [row[f"videos/{CAMERAS[1]}/from_timestamp"] for row in episodes]
    ends = [row[f"videos/{CAMERAS[1]}/to_timestamp"] for row in episodes]
    assert starts == pytest.approx([0.0, 1.2, 2.7]) and ends == pytest.approx([1.2, 2.7, 3.7])
    assert np.asarray(episodes[1]["stats/action/mean"]) == pytest.approx(episode_arrays(1, 15)[1].mean(axis=0))
    assert [row["meta/episodes/chunk_index"] for row in episodes] == [0, 0, 0]


def test_episodes_parquet_has_every_lerobot_column_with_its_type_in_order(dataset: Path):
    """The columns LeRobot 0.4.4 writes (INTEROP §2): `aggregate_datasets` and a resumed recording read
    the chunk/file indices of data, videos and the episodes metadata itself from the last row."""
    schema = pq.read_schema(dataset / "meta/episodes/chunk-000/file-000.parquet")
    stat_names = ["min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"]
    features = ["observation.state", "action", *CAMERAS, "timestamp", "frame_index", "episode_index", "index",
                "task_index"]  # fmt: skip
    expected = ["episode_index", "tasks", "length", "data/chunk_index", "data/file_index", "dataset_from_index",
                "dataset_to_index"]  # fmt: skip
    for camera in CAMERAS:
        expected += [
            f"videos/{camera}/{name}" for name in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")
        ]
    expected += [f"stats/{feature}/{name}" for feature in features for name in stat_names]
    expected += ["meta/episodes/chunk_index", "meta/episodes/file_index"]
    assert schema.names == expected
    types = {field.name: field.type for field in schema}
    assert types["tasks"] == pa.list_(pa.string())
    for name in ("episode_index", "length", "dataset_to_index", f"videos/{CAMERAS[0]}/file_index",
                 "meta/episodes/file_index"):  # fmt: skip
        assert types[name] == pa.int64(), name
    assert types[f"videos/{CAMERAS[0]}/from_timestamp"] == pa.float64()
    assert types["stats/action/min"] == pa.list_(pa.float64())
    assert types["stats/action/count"] == pa.list_(pa.int64())
    assert types["stats/index/min"] == pa.list_(pa.int64())  # integer features keep integer min/max
    assert types["stats/index/mean"] == pa.list_(pa.float64())
    assert types[f"stats/{CAMERAS[0]}/mean"] == pa.list_(pa.list_(pa.list_(pa.float64())))


def test_episodes_read_back_exact_rows_and_close_frames(dataset: Path):
    reader = LeRobotDatasetReader(dataset, expect_robot_type="so100", expect_features=FEATURES)
    assert (reader.num_episodes, reader.fps, reader.robot_type) == (3, FPS, "so100")
    assert reader.tasks == TASKS and reader.cameras == CAMERAS
    for index, (length, task) in enumerate(EPISODES):
        episode = reader.episode(index)
        states, actions = episode_arrays(index, length)
        assert episode.task == task and len(episode) == length
        np.testing.assert_array_equal(episode.states, states)
        np.testing.assert_array_equal(episode.actions, actions)
        np.testing.assert_allclose(episode.timestamps, np.arange(length) / FPS, atol=1e-6)
        for camera in CAMERAS:
            frames = episode.frames[camera]
            assert frames.shape == (length, HEIGHT, WIDTH, 3) and frames.dtype == np.uint8
            originals = np.stack([square_frame(camera, index, step) for step in range(length)]).astype(np.int16)
            errors = np.abs(frames.astype(np.int16) - originals).mean(axis=(1, 2, 3))
            assert errors.max() < 6.0  # mp4 is lossy, but each frame is its own original
            shifted = np.abs(frames[1:].astype(np.int16) - originals[:-1]).mean(axis=(1, 2, 3))
            assert np.all(errors[1:] < shifted)  # ... and not its neighbour: the timestamps line up


def test_stats_json_matches_numpy(dataset: Path):
    stats = json.loads((dataset / "meta/stats.json").read_text())
    arrays = [episode_arrays(index, length) for index, (length, _) in enumerate(EPISODES)]
    for key, values in (("observation.state", np.concatenate([s for s, _ in arrays])),
                        ("action", np.concatenate([a for _, a in arrays]))):  # fmt: skip
        values = values.astype(np.float64)
        entry = stats[key]
        assert entry["count"] == [37]
        for name, expected in (("mean", values.mean(0)), ("std", values.std(0)), ("min", values.min(0)),
                               ("max", values.max(0)), ("q01", np.quantile(values, 0.01, axis=0)),
                               ("q99", np.quantile(values, 0.99, axis=0))):  # fmt: skip
            np.testing.assert_allclose(entry[name], expected, rtol=1e-6, atol=1e-7, err_msg=f"{key} {name}")
    assert stats["frame_index"]["max"] == [14] and stats["index"]["count"] == [37]
    image = {name: np.asarray(value) for name, value in stats[CAMERAS[0]].items()}
    assert image["mean"].shape == (3, 1, 1) and image["count"].tolist() == [37]
    assert image["min"].min() >= 0.0 and image["max"].max() <= 1.0
    assert image["mean"][0, 0, 0] > image["mean"][2, 0, 0]  # a red square on grey: more red than blue


def test_files_roll_at_the_size_limit_and_into_new_chunks(tmp_path: Path):
    root = record(tmp_path / "rolled", chunks_size=2, data_file_size_mb=0.0001, video_file_size_mb=0.0001)
    data = sorted(str(path.relative_to(root)) for path in root.glob("data/*/*.parquet"))
    assert data == [
        "data/chunk-000/file-000.parquet",
        "data/chunk-000/file-001.parquet",
        "data/chunk-001/file-000.parquet",
    ]
    videos = sorted(
        str(path.relative_to(root / "videos" / CAMERAS[0])) for path in (root / "videos" / CAMERAS[0]).rglob("*.mp4")
    )
    assert videos == ["chunk-000/file-000.mp4", "chunk-000/file-001.mp4", "chunk-001/file-000.mp4"]
    reader = LeRobotDatasetReader(root)
    assert [(row["data/chunk_index"], row["data/file_index"]) for row in reader.episodes] == [(0, 0), (0, 1), (1, 0)]
    assert all(row[f"videos/{CAMERAS[0]}/from_timestamp"] == 0.0 for row in reader.episodes)
    episode = reader.episode(2)
    np.testing.assert_array_equal(episode.actions, episode_arrays(2, 10)[1])
    original = square_frame(CAMERAS[1], 2, 9).astype(np.int16)
    assert np.abs(episode.frames[CAMERAS[1]][9].astype(np.int16) - original).mean() < 6.0


def test_episodes_become_shards_with_statistics_for_the_robot_codec(dataset: Path, tmp_path: Path):
    reader = LeRobotDatasetReader(dataset)
    shards, statistics_path = episodes_to_shards(
        reader, tmp_path / "shards", samples_per_shard=8, camera=CAMERAS[1], frame_stride=2
    )
    records = []
    for shard in shards:
        with tarfile.open(shard) as tar:
            members = {member.name: tar.extractfile(member).read() for member in tar.getmembers()}
        for name, payload in members.items():
            if name.endswith(".json"):
                record = json.loads(payload)
                images = [key for key in members if key.startswith(name[: -len("json")]) and key.endswith(".png")]
                validate_sample(record, len(images))
                records.append((record, Image.open(io.BytesIO(members[images[0]]))))
    assert len(records) == 6 + 8 + 5 and len(shards) == 3  # every 2nd frame of 12, 15 and 10
    record, image = records[7]  # episode 1, frame 2
    assert record["meta"]["episode_index"] == 1 and record["meta"]["frame_index"] == 2
    assert record["conversations"][0]["value"] == "<image>\nWhat action should the robot take to push the blue block?"
    assert records[0][0]["conversations"][0]["value"].endswith("to pick up the red cube?")
    assert record["actions"] == pytest.approx(episode_arrays(1, 15)[1][2].tolist())
    assert image.size == (WIDTH, HEIGHT)
    assert np.abs(np.asarray(image, dtype=np.int16) - square_frame(CAMERAS[1], 1, 2)).mean() < 6.0

    statistics = load_action_statistics(statistics_path)["so100_demo"]
    recorded = json.loads((dataset / "meta/stats.json").read_text())["action"]
    assert statistics.mask.tolist() == [True, True, True, False]  # the gripper is not normalised
    np.testing.assert_allclose(statistics.q01, recorded["q01"])
    np.testing.assert_allclose(statistics.q99, recorded["q99"])
    codec = RobotActionCodec(statistics, base_vocab_size=1000)
    tokens = codec.encode(np.asarray([record["actions"]]))
    assert np.abs(codec.decode(tokens) - np.asarray(record["actions"]))[0, :3].max() < 0.02


def test_a_lerobot_v21_folder_is_refused_with_the_conversion_command(tmp_path: Path):
    legacy = tmp_path / "v21"
    (legacy / "meta").mkdir(parents=True)
    (legacy / "meta/info.json").write_text(json.dumps({"codebase_version": "v2.1", "fps": 30, "features": {}}))
    (legacy / "meta/episodes.jsonl").write_text('{"episode_index": 0, "tasks": ["x"], "length": 3}\n')
    for root in (legacy, tmp_path / "v21_without_info"):
        if root.name.endswith("info"):
            (root / "meta").mkdir(parents=True)
            (root / "meta/episodes.jsonl").write_text("{}\n")
        with pytest.raises(DatasetLayoutError, match=r"v2.*convert_dataset_v21_to_v30"):
            LeRobotDatasetReader(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"has no meta/info\.json.*point at the dataset root"):
        LeRobotDatasetReader(tmp_path / "empty")


def test_another_robot_or_feature_shape_is_refused_by_name(dataset: Path):
    with pytest.raises(DatasetLayoutError, match=r"robot_type 'so100', not 'aloha'.*expect_robot_type"):
        LeRobotDatasetReader(dataset, expect_robot_type="aloha")
    expected = {"action": FeatureSpec("float32", (7,)), "observation.images.top": FeatureSpec("video", (48, 64, 3))}
    with pytest.raises(DatasetLayoutError) as error:
        LeRobotDatasetReader(dataset, expect_features=expected)
    assert "'action' is float32 (4,), expected float32 (7,)" in str(error.value)
    assert "'observation.images.top' is missing" in str(error.value)


def test_discarded_or_crashed_recordings_leave_no_trace(dataset: Path, tmp_path: Path):
    reader = LeRobotDatasetReader(dataset)
    assert "never kept" not in reader.tasks and sum(row["length"] for row in reader.episodes) == 37
    images = {camera: square_frame(camera, 0, 0) for camera in CAMERAS}
    root = tmp_path / "crashed"
    with pytest.raises(RuntimeError), LeRobotDatasetWriter(root, "so100", FPS, FEATURES, CAMERAS, (HEIGHT, WIDTH)) as w:
        w.add_frame(np.zeros(4), np.zeros(4), images, "task")
        w.save_episode()
        raise RuntimeError("the robot fell over")
    assert list(tmp_path.iterdir()) == []  # neither the dataset nor its staging folder

    writer = LeRobotDatasetWriter(root, "so100", FPS, FEATURES, CAMERAS, (HEIGHT, WIDTH))
    with pytest.raises(DatasetLayoutError, match="unfinished recording"):
        LeRobotDatasetReader(writer.staging)
    with pytest.raises(DatasetWriteError, match=r"camera 'observation.images.wrist' image is uint8 \(10, 10, 3\)"):
        writer.add_frame(np.zeros(4), np.zeros(4), {**images, CAMERAS[1]: np.zeros((10, 10, 3), np.uint8)}, "task")
    with pytest.raises(DatasetWriteError, match="no episode was saved"):
        writer.finalize()
    writer.abort()
    with pytest.raises(DatasetWriteError, match="already exists"):
        LeRobotDatasetWriter(dataset, "so100", FPS, FEATURES)


def test_a_dataset_written_the_lerobot_way_reads_and_old_stats_are_named(dataset: Path, tmp_path: Path):
    """LeRobot's own files differ in details we must accept: variable-length list columns, video shapes
    stored as (C, H, W), and (before quantiles existed) stats.json without q01/q99."""
    theirs = tmp_path / "theirs"
    shutil.copytree(dataset, theirs)
    data_path = theirs / "data/chunk-000/file-000.parquet"
    table = pq.read_table(data_path)
    for key in ("observation.state", "action"):
        column = table[key].combine_chunks()
        as_list = pa.ListArray.from_arrays(
            pa.array(np.arange(0, 4 * len(column) + 1, 4, dtype=np.int32)), column.flatten()
        )
        table = table.set_column(table.column_names.index(key), key, as_list)
    pq.write_table(table, data_path)
    info = json.loads((theirs / "meta/info.json").read_text())
    for camera in CAMERAS:
        info["features"][camera] |= {"shape": [3, HEIGHT, WIDTH], "names": ["channels", "height", "width"]}
    (theirs / "meta/info.json").write_text(json.dumps(info))
    stats = json.loads((theirs / "meta/stats.json").read_text())
    for name in ("q01", "q10", "q50", "q90", "q99"):
        del stats["action"][name]
    (theirs / "meta/stats.json").write_text(json.dumps(stats))

    expected = {**FEATURES, CAMERAS[0]: FeatureSpec("video", (HEIGHT, WIDTH, 3))}
    reader = LeRobotDatasetReader(theirs, expect_features=expected)
    episode = reader.episode(1, cameras=[CAMERAS[0]])
    np.testing.assert_array_equal(episode.actions, episode_arrays(1, 15)[1])
    assert episode.frames[CAMERAS[0]].shape == (15, HEIGHT, WIDTH, 3)
    with pytest.raises(DatasetLayoutError, match=r"no \['q01', 'q99'\] for 'action'.*augment_dataset_quantile_stats"):
        episodes_to_shards(reader, tmp_path / "shards")
    assert not (tmp_path / "shards").exists()
