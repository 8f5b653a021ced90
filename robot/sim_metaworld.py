"""A Meta-World v3 task (``envs.metaworld``) behind the ``Robot`` interface, so recording
(``agent data record-sim --env metaworld``) and the control daemon (``agent robot run --config sim-metaworld``)
drive it like ``robot.sim.SimRobot``; ``robot.sim:SimCamera`` publishes its frames.

Its action is Meta-World's own 4-D one (hand motion dx, dy, dz in [-1, 1], 1 cm per unit, and the gripper
effort in [-1, 1]), clipped to that box before sending, so recorded datasets train policies that act in
``MetaWorldEnv`` directly. It declares that layout (``ACTION_LAYOUT``), so the daemon's ``SafetyFilter``
bounds the motion in metres and the gripper to ``gripper_range``; the measured pose is the hand's xyz and
the Sawyer arm's seven joint angles. ``served_expert`` serves Meta-World's scripted expert to the daemon
(``agent serve --policy robot.sim_metaworld:served_expert``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from robot.interfaces import Feature, Robot, RobotError
from robot.recording import RecordingSummary, record_episodes
from robot.safety import ActionLayout

ACTION_NAMES = ("dx", "dy", "dz", "gripper")
STATE_NAMES = (
    *(f"hand.{axis}" for axis in "xyz"),
    "gripper_opening",
    *(f"object{i}.{part}" for i in (0, 1) for part in ("x", "y", "z", "q0", "q1", "q2", "q3")),
    *(f"previous.{i}" for i in range(18)),
    *(f"goal.{axis}" for axis in "xyz"),
)
METRES_PER_UNIT = 0.01  # Meta-World's action_scale: one unit of dx, dy or dz moves the hand's target 1 cm
ACTION_LAYOUT = ActionLayout(size=4, translation=(0, 1, 2), metres_per_unit=METRES_PER_UNIT, gripper=3)
SAWYER_JOINTS = tuple(f"right_j{index}" for index in range(7))  # the arm's hinges in Meta-World's scene


class MetaWorldSimRobot(Robot):
    """A ``MetaWorldEnv`` episode of ``task`` as a robot; ``connect`` starts the episode placed by ``seed``
    (episode ``i`` of ``start_episode`` uses ``seed + i``); ``send_action`` clips to [-1, 1] and steps."""

    name = "metaworld-sim"
    joint_names = SAWYER_JOINTS
    action_layout = ACTION_LAYOUT

    def __init__(
        self,
        task: str = "reach",
        image_size: int = 128,
        camera: str = "corner2",
        seed: int | None = None,
        max_episode_steps: int = 500,
        terminate_on_success: bool = True,
        fast_render: bool = False,
    ) -> None:
        from envs.metaworld.benchmarks import canonical_task

        self.task = canonical_task(task)
        self.image_size = image_size
        self.camera = camera
        self.camera_names = (camera,)  # what robot.sim.SimCamera reads
        self.seed = seed
        self.max_episode_steps = max_episode_steps
        self.terminate_on_success = terminate_on_success
        self.fast_render = fast_render  # no shadows or reflections (see envs.metaworld.env)
        self.env: Any = None
        self._joint_addresses: list[int] = []  # where SAWYER_JOINTS sit in the simulation's qpos
        self._gripper = -1.0  # the last gripper command, kept while holding
        self._last_info: dict[str, Any] = {}
        self._observation: dict[str, Any] | None = None
        self._lock = threading.Lock()

    @property
    def observation_features(self) -> dict[str, Feature]:
        return {
            "observation.state": Feature((len(STATE_NAMES),), "float32", STATE_NAMES),
            "observation.joints": Feature((len(SAWYER_JOINTS),), "float32", SAWYER_JOINTS),
            f"observation.images.{self.camera}": Feature((self.image_size, self.image_size, 3), "uint8"),
            "instruction": Feature((), "str"),
        }

    @property
    def action_features(self) -> dict[str, Feature]:
        return {"action": Feature((len(ACTION_NAMES),), "float32", ACTION_NAMES)}

    @property
    def is_connected(self) -> bool:
        return self.env is not None

    def connect(self) -> None:
        from envs.metaworld.env import MetaWorldEnv

        if self.is_connected:
            raise RobotError(f"{self.name} is already connected")
        self.env = MetaWorldEnv(
            task=self.task,
            image_size=self.image_size,
            camera=self.camera,
            max_episode_steps=self.max_episode_steps,
            terminate_on_success=self.terminate_on_success,
            fast_render=self.fast_render,
        )
        self._reset(self.seed)

    def _reset(self, seed: int | None) -> None:
        observation, self._last_info = self.env.reset(seed=seed)
        model = self.env.sim.model  # Meta-World's scene, built by the reset
        self._joint_addresses = [int(model.joint(name).qposadr[0]) for name in SAWYER_JOINTS]
        self._gripper = -1.0
        self._store(observation)

    @property
    def last_info(self) -> dict[str, Any]:
        """Meta-World's info of the latest step (``success`` among it), with ``terminated`` / ``truncated``."""
        return self._last_info

    def start_episode(self, index: int) -> dict[str, Any]:
        """Episode ``index``: the placement of seed ``seed + index`` (a fresh draw when no seed was given), so
        with ``seed=0`` the daemon's episode ``i`` is the recorder's seed ``i``."""
        self.require_connection()
        if index > 0 or self.last_info.get("steps"):
            self._reset(None if self.seed is None else self.seed + index)
        return {"instruction": self.get_observation()["instruction"], "task": self.task, "env": "metaworld"}

    def measured_pose(self, observation: dict[str, Any]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The hand's xyz (the state's first three values, metres) and the arm's joint angles (radians)."""
        hand = np.asarray(observation["observation.state"][:3], dtype=np.float64)
        return hand, np.asarray(observation["observation.joints"], dtype=np.float64)

    def hold_action(self, observation: dict[str, Any]) -> np.ndarray:
        """No hand motion, the gripper as last commanded (a held object stays held)."""
        return np.array([0.0, 0.0, 0.0, self._gripper])

    def disconnect(self) -> None:
        self.require_connection()
        self.env.close()
        self.env = None

    def _store(self, observation: dict[str, Any]) -> None:
        converted = {
            "observation.state": observation["state"],
            "observation.joints": self.env.sim.data.qpos[self._joint_addresses].astype(np.float32),
            f"observation.images.{self.camera}": observation["image"],
            "instruction": observation["instruction"],
        }
        with self._lock:
            self._observation = converted

    def get_observation(self) -> dict[str, Any]:
        self.require_connection()
        with self._lock:
            return dict(self._observation)  # type: ignore[arg-type]

    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Clip to [-1, 1], step Meta-World once, and return the action actually sent (float32)."""
        self.require_connection()
        sent = np.clip(self.check_action(action), -1.0, 1.0).astype(np.float32)
        observation, _, terminated, truncated, info = self.env.step(sent)
        self._gripper = float(sent[3])
        self._last_info = {**info, "terminated": terminated, "truncated": truncated}
        self._store(observation)
        return sent


def served_expert(model: str | None, spec: Any) -> Any:
    """Meta-World's scripted expert as a served policy (a ``robot.served_policy`` factory): ``agent serve
    --policy robot.sim_metaworld:served_expert``. Each client's episode gets the expert of the task its reset
    names (``MetaWorldSimRobot.start_episode`` names it); it reads the 39-D state sent as ``state``."""
    from envs.metaworld.env import ACTION_DIM, STATE_DIM
    from envs.metaworld.expert import MetaWorldExpert
    from robot.served_policy import ServedPolicy

    spec.policy, spec.model_id = "metaworld-expert", spec.model_id or "metaworld-scripted-expert"
    spec.action_dim, spec.state_dim, spec.chunk_length = ACTION_DIM, STATE_DIM, 1
    spec.cameras = {}  # the expert reads no image
    return ServedPolicy(spec=spec, make_session=MetaWorldExpert)


def record_metaworld_episodes(
    task_spec: str,
    episodes: int,
    out_dir: str | Path,
    image_size: int = 128,
    camera: str | None = None,
    keep_failures: bool = False,
    fast_render: bool = False,
    on_episode: Callable[[int, bool, int], None] | None = None,
) -> RecordingSummary:
    """Meta-World's expert on ``episodes`` seeds (0..N-1) of each task of ``task_spec`` (a task, a set such as
    ``"MT10"`` or a list, see ``envs.metaworld.benchmarks.resolve_tasks``), into one LeRobotDataset v3 at 80 fps."""
    from envs.metaworld.benchmarks import resolve_tasks
    from envs.metaworld.env import CAMERAS, CONTROL_HZ, DEFAULT_CAMERA, EnvConfigError
    from envs.metaworld.expert import MetaWorldExpert

    tasks = resolve_tasks(task_spec)
    camera = camera or DEFAULT_CAMERA
    if camera not in CAMERAS:
        raise EnvConfigError(f"camera '{camera}' is not a Meta-World camera; use one of {list(CAMERAS)}")
    if episodes < 1:
        raise EnvConfigError(f"episodes={episodes}: record at least 1 episode per task")

    def make_robot(index: int) -> MetaWorldSimRobot:
        task, seed = tasks[index // episodes], index % episodes
        return MetaWorldSimRobot(task=task, image_size=image_size, camera=camera, seed=seed, fast_render=fast_render)

    def make_expert(robot: MetaWorldSimRobot) -> MetaWorldExpert:
        return MetaWorldExpert(task=robot.task, state_key="observation.state")

    return record_episodes(
        make_robot, make_expert, episodes * len(tasks), out_dir, CONTROL_HZ, keep_failures, on_episode
    )
