"""Record robot episodes in the LeRobotDataset v3 layout: a robot (simulated or real) driven by a
policy through the ``Robot`` interface, every step's observation and the action actually sent
written with ``data_tools.lerobot_dataset``. Failed episodes are discarded unless asked to keep them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_tools.errors import UserFacingError
from data_tools.lerobot_dataset import FeatureSpec, LeRobotDatasetWriter
from robot.episode_recorder import dimension_names
from robot.interfaces import Robot


class RecordingError(UserFacingError, RuntimeError):
    """A recording that produced nothing to keep."""


@dataclass
class RecordingSummary:
    dataset: Path
    episodes_recorded: int
    episodes_discarded: int
    frames: int

    def format(self) -> str:
        return (
            f"dataset  : {self.dataset}\n"
            f"episodes : {self.episodes_recorded} recorded, {self.episodes_discarded} discarded (failed)\n"
            f"frames   : {self.frames}"
        )


def dataset_features(robot: Robot) -> tuple[dict[str, FeatureSpec], list[str]]:
    """The LeRobot features of ``robot``'s state and action (with dimension names: the robot's, else
    ``state.0``, ``action.0``, ...), and its camera keys."""
    observed = robot.observation_features
    state, action = observed["observation.state"], robot.action_features["action"]
    features = {
        "observation.state": FeatureSpec("float32", state.shape, dimension_names(state.names, state.shape[0], "state")),
        "action": FeatureSpec("float32", action.shape, dimension_names(action.names, action.shape[0], "action")),
    }
    cameras = [key for key in observed if key.startswith("observation.images.")]
    return features, cameras


def record_episodes(
    make_robot: Callable[[int], Robot],
    make_policy: Callable[[Robot], Any],
    episodes: int,
    out_dir: str | Path,
    fps: int,
    keep_failures: bool = False,
    on_episode: Callable[[int, bool, int], None] | None = None,
) -> RecordingSummary:
    """Episode ``i`` uses ``make_robot(i)`` (connected here) and ``make_policy(robot)``; the robot's
    ``last_info`` says when an episode ends (``terminated`` / ``truncated``) and whether it succeeded."""
    recorded = discarded = frames = 0
    writer: LeRobotDatasetWriter | None = None
    try:
        for index in range(episodes):
            robot = make_robot(index)
            with robot:
                if writer is None:
                    features, cameras = dataset_features(robot)
                    height, width = robot.observation_features[cameras[0]].shape[:2] if cameras else (0, 0)
                    writer = LeRobotDatasetWriter(
                        out_dir, robot.name, fps, features, cameras=cameras, image_size=(height, width)
                    )
                policy = make_policy(robot)
                observation = robot.get_observation()
                policy.reset({"instruction": observation["instruction"]})
                steps = 0
                while True:
                    sent = robot.send_action(policy.act(observation))
                    images = {key: observation[key] for key in observation if key.startswith("observation.images.")}
                    writer.add_frame(observation["observation.state"], sent, images, observation["instruction"])
                    steps += 1
                    observation = robot.get_observation()
                    info = robot.last_info
                    if info.get("terminated") or info.get("truncated"):
                        break
                success = bool(info.get("success", False))
                if success or keep_failures:
                    writer.save_episode()
                    recorded += 1
                    frames += steps
                else:
                    writer.discard_episode()
                    discarded += 1
                if on_episode is not None:
                    on_episode(index, success, steps)
        if writer is None or recorded == 0:
            raise RecordingError(f"no episode of {episodes} was kept (all failed); nothing was written to {out_dir}")
        dataset = writer.finalize()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return RecordingSummary(dataset=dataset, episodes_recorded=recorded, episodes_discarded=discarded, frames=frames)
