"""The simulated robot: the MuJoCo tabletop arm (``envs.mujoco``) behind the ``Robot`` interface,
and its cameras behind ``Camera``, so the daemon and recording code drive simulation and hardware
through the same calls."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from robot.interfaces import Camera, Feature, Robot, RobotError
from robot.safety import DELTA_END_EFFECTOR, SafetyLimits, check_safety_limits, clip_delta_action

ACTION_NAMES = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")


class SimRobot(Robot):
    """A ``TabletopEnv`` episode as a robot. ``connect`` starts an episode of ``task`` (evaluation state
    ``state_index`` or a random one from ``seed``); ``send_action`` clips the 7-D delta end-effector action
    with ``limits`` and steps the simulation one control period."""

    name = "tabletop-sim"
    joint_names = ("shoulder_yaw", "shoulder_pitch", "elbow_pitch", "wrist_pitch", "wrist_roll", "tool_yaw")
    action_layout = DELTA_END_EFFECTOR  # ACTION_NAMES: metres, radians, the gripper

    def __init__(
        self,
        task: str = "pick_place",
        image_size: int = 128,
        cameras: tuple[str, ...] = ("third_person", "wrist"),
        control_hz: float = 10,
        limits: SafetyLimits | None = None,
        seed: int | None = None,
        state_index: int | None = None,
        privileged: bool = False,
        max_steps: int | None = None,
    ) -> None:
        self.task = task
        self.image_size = image_size
        self.camera_names = tuple(cameras)
        self.control_hz = control_hz
        self.limits = limits or SafetyLimits()
        check_safety_limits(self.limits)  # unsound limits are refused before anything moves
        self.seed = seed
        self.state_index = state_index
        self.max_steps = max_steps  # None: the task's own episode length at this control rate
        self.privileged = privileged  # add the simulator truth (robot.privileged_state) for the scripted expert
        self.env: Any = None
        self._gripper = -1.0  # the last gripper command, kept while holding
        self.current_state_index: int | None = state_index
        self._last_info: dict[str, Any] = {}
        self._observation: dict[str, Any] | None = None
        self._lock = threading.Lock()

    @property
    def observation_features(self) -> dict[str, Feature]:
        from envs.mujoco.env import STATE_DIM, STATE_LAYOUT

        names = tuple(f"{part}.{i}" for part, span in STATE_LAYOUT.items() for i in range(span.stop - span.start))
        features = {"observation.state": Feature((STATE_DIM,), "float32", names)}
        for camera in self.camera_names:
            features[f"observation.images.{camera}"] = Feature((self.image_size, self.image_size, 3), "uint8")
        features["instruction"] = Feature((), "str")
        return features

    @property
    def action_features(self) -> dict[str, Feature]:
        return {"action": Feature((len(ACTION_NAMES),), "float32", ACTION_NAMES)}

    @property
    def is_connected(self) -> bool:
        return self.env is not None

    def connect(self) -> None:
        if self.is_connected:
            raise RobotError(f"{self.name} is already connected")
        from envs.mujoco.env import TabletopEnv

        self.env = TabletopEnv(
            task=self.task,
            image_size=self.image_size,
            cameras=self.camera_names,
            control_hz=self.control_hz,
            max_steps=self.max_steps,
        )
        self._reset(self.seed, self.state_index)

    def _reset(self, seed: int | None, state_index: int | None) -> None:
        options = {} if state_index is None else {"state_index": state_index}
        observation, self._last_info = self.env.reset(seed=seed, options=options)
        self._gripper = -1.0
        self.current_state_index = state_index
        self._store(observation)

    @property
    def last_info(self) -> dict[str, Any]:
        """The simulator's info of the latest reset or step, with ``terminated`` / ``truncated`` after a step."""
        return self._last_info

    def start_episode(self, index: int) -> dict[str, Any]:
        """Episode ``index``: evaluation state ``state_index + index`` (or the state drawn from ``seed + index``)."""
        self.require_connection()
        if index > 0 or self.last_info.get("steps"):
            state = None if self.state_index is None else self.state_index + index
            seed = None if self.seed is None else self.seed + index
            self._reset(seed, state)
        return {
            "instruction": self.get_observation()["instruction"],
            "task": self.env.task_name,
            "state_index": self.current_state_index,
        }

    def measured_pose(self, observation: dict[str, Any]) -> tuple[np.ndarray | None, np.ndarray | None]:
        from envs.mujoco.env import STATE_LAYOUT

        state = np.asarray(observation["observation.state"], dtype=np.float64)
        return state[STATE_LAYOUT["ee_position"]], state[STATE_LAYOUT["joint_positions"]]

    def hold_action(self, observation: dict[str, Any]) -> np.ndarray:
        """No motion, the gripper as last commanded (a held object stays held)."""
        return np.array([0.0] * 6 + [self._gripper])

    def disconnect(self) -> None:
        self.require_connection()
        self.env.close()
        self.env = None

    def _store(self, observation: dict[str, Any]) -> None:
        from envs.mujoco.env import CAMERAS

        converted = {"observation.state": observation["state"], "instruction": observation["instruction"]}
        for camera in self.camera_names:
            converted[f"observation.images.{camera}"] = observation[CAMERAS[camera]]
        if self.privileged:
            from robot.privileged_state import privileged_observation

            converted["privileged"] = privileged_observation(self.env)
        with self._lock:
            self._observation = converted

    def get_observation(self) -> dict[str, Any]:
        self.require_connection()
        with self._lock:
            return dict(self._observation)  # type: ignore[arg-type]

    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Clip, step the simulation one control period, and return the action actually sent."""
        self.require_connection()
        requested = self.check_action(action)
        end_effector = np.asarray(self.get_observation()["observation.state"][:3], dtype=np.float64)
        sent = clip_delta_action(requested, end_effector, self.limits, self.action_layout).action
        observation, _, terminated, truncated, info = self.env.step(sent)
        self._gripper = float(sent[6])
        self._last_info = {**info, "terminated": terminated, "truncated": truncated}
        self._store(observation)
        return sent.astype(np.float32)


class SimCamera(Camera):
    """One camera of a ``SimRobot``: publishes the robot's latest rendered frame at ``fps`` from a
    background thread (rendering itself stays on the thread that steps the simulation)."""

    rendered_by_robot = True

    def __init__(self, robot: SimRobot, camera: str = "third_person", fps: float = 30.0) -> None:
        super().__init__(fps)
        if camera not in robot.camera_names:
            raise RobotError(f"the simulated robot renders {list(robot.camera_names)}, not '{camera}'")
        self.robot = robot
        self.key = f"observation.images.{camera}"

    def capture(self) -> np.ndarray:
        return self.robot.get_observation()[self.key].copy()
