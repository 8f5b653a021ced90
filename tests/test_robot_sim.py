"""The simulated robot behind the Robot/Camera interfaces, recording LeRobot v3 episodes from it,
and the whole loop: record -> training shards -> train magma-tiny -> run it as a policy."""

from __future__ import annotations

import numpy as np
import pytest
from cli_in_process import agent_in_process

from data_tools.lerobot_dataset import LeRobotDatasetReader, episodes_to_shards
from data_tools.sample_format import validate_sample
from envs.mujoco.experts import ScriptedExpert
from robot.interfaces import InvalidRobotActionError, NotConnectedError
from robot.recording import record_episodes
from robot.safety import SafetyLimits
from robot.sim import SimCamera, SimRobot


def test_sim_robot_clips_actions_and_reports_what_it_sent():
    robot = SimRobot(task="reach", image_size=64, state_index=0, limits=SafetyLimits(max_translation_m=0.02))
    with pytest.raises(NotConnectedError, match="connect"):
        robot.get_observation()
    with robot:
        observation = robot.get_observation()
        assert observation["observation.state"].shape == robot.observation_features["observation.state"].shape
        assert observation["observation.images.wrist"].shape == (64, 64, 3)
        assert "reach" in observation["instruction"] or observation["instruction"]
        sent = robot.send_action(np.array([0.2, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]))
        assert sent[0] == pytest.approx(0.02) and sent[6] == 1.0  # clipped to the limit, reported as sent
        before = robot.get_observation()["observation.state"].copy()
        for bad in (np.zeros(6), np.array([np.nan] * 7)):
            with pytest.raises(InvalidRobotActionError, match="nothing was sent"):
                robot.send_action(bad)
        assert np.array_equal(robot.get_observation()["observation.state"], before)  # the episode is untouched
        robot.send_action(np.zeros(7))  # and goes on


def test_sim_camera_reads_frames_in_a_background_thread():
    with SimRobot(task="reach", image_size=32, state_index=0) as robot:
        camera = SimCamera(robot, "third_person", fps=50)
        camera.connect()
        try:
            first = camera.async_read()
            assert first.shape == (32, 32, 3) and first.dtype == np.uint8
            newer = camera.read(timeout_s=120)  # a fresh frame arrives; how soon depends on the machine's load
            assert newer.shape == first.shape and camera.is_connected
        finally:
            camera.disconnect()
        assert not camera.is_connected


def test_recorded_expert_episodes_become_shards_a_model_trains_on_and_runs(tmp_path):
    summary = record_episodes(
        lambda index: SimRobot(task="pick_place", image_size=64, state_index=index),
        lambda robot: ScriptedExpert(robot.env),
        episodes=2,
        out_dir=tmp_path / "dataset",
        fps=10,
    )
    assert summary.episodes_recorded == 2 and summary.frames > 20
    reader = LeRobotDatasetReader(tmp_path / "dataset", expect_robot_type="tabletop-sim")
    episode = reader.episode(0)
    assert episode.actions.shape[1] == 7 and len(episode.frames["observation.images.third_person"]) == len(
        episode.actions
    )
    assert "cube" in episode.task

    shards, statistics = episodes_to_shards(reader, tmp_path / "shards", frame_stride=2)
    from magma.data.shard_index import SampleRef, index_shard, read_raw_sample

    raw = read_raw_sample(SampleRef("robot", shards[0], index_shard(shards[0]).samples[0]))
    validate_sample(raw.record, len(raw.images))

    from magma.training.config import train_config_from
    from magma.training.trainer import Trainer

    source = {
        "name": "sim",
        "shards": [str(path) for path in shards],
        "action_codec": "robot",
        "statistics": str(statistics),
    }
    config = {
        "name": "sim",
        "model": "magma-tiny",
        "run_dir": str(tmp_path / "run"),
        "max_steps": 2,
        "data": {"batch_size": 2, "num_workers": 0, "sources": [source]},
        "logging": {"progress": False},
    }
    Trainer(train_config_from(config, [], "test")).train()

    result = agent_in_process(
        "run", "mujoco", "--tasks", "pick_place", "--episodes", "1", "--policy", "magma",
        "--checkpoint", str(tmp_path / "run" / "final"), "--image-size", "64", "--out", str(tmp_path / "eval"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        "pick_place" in result.stdout
        and (tmp_path / "eval" / "trajectories" / "pick_place_000" / "episode.mp4").exists()
    )


def test_agent_run_scripted_prints_a_success_table(tmp_path):
    result = agent_in_process("run", "mujoco", "--tasks", "reach", "--episodes", "2", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reach" in result.stdout and "100.0%" in result.stdout
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 2
    assert "2/2" in result.stderr and "reach:001" in result.stderr  # the progress bar and a line per episode
    episode_page = (tmp_path / "trajectories" / "reach_001" / "index.html").read_text()
    assert '<video src="../../trajectories/reach_001/episode.mp4"' in episode_page
    assert (tmp_path / "trajectories" / "reach_001" / "episode.mp4").stat().st_size > 0
    # a finished run resumed runs nothing again; other settings are refused
    again = agent_in_process("run", "mujoco", "--tasks", "reach", "--episodes", "2", "--out", str(tmp_path), "--resume")
    assert again.returncode == 0 and "100.0%" in again.stdout, again.stderr[-3000:]
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 2
    other = agent_in_process("run", "mujoco", "--tasks", "reach", "--episodes", "3", "--out", str(tmp_path), "--resume")
    assert other.returncode == 2 and "episodes" in other.stderr and "Traceback" not in other.stderr
    unknown = agent_in_process("run", "mujoco", "--tasks", "juggle")
    assert unknown.returncode == 2 and "juggle" in unknown.stderr and "Traceback" not in unknown.stderr
    foreign = agent_in_process("run", "mujoco", "--grading", "official")  # a web option is refused, not ignored
    message = " ".join(foreign.stderr.split())
    assert foreign.returncode == 2 and "--grading" in message and "Traceback" not in message, foreign.stderr
    own_help = agent_in_process("run", "mujoco", "--help")  # each environment's help lists its own options only
    assert "--episodes" in own_help.stdout and "--grading" not in own_help.stdout


def test_record_sim_cli_writes_a_lerobot_dataset(tmp_path):
    result = agent_in_process(
        "data", "record-sim", "--task", "reach", "--episodes", "2", "--out", str(tmp_path / "ds"), "--image-size", "32"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert LeRobotDatasetReader(tmp_path / "ds").num_episodes == 2
    shards = agent_in_process(
        "data", "lerobot-shards", "--dataset", str(tmp_path / "ds"), "--out", str(tmp_path / "shards")
    )
    assert shards.returncode == 0 and (tmp_path / "shards" / "dataset_statistics.json").exists()
