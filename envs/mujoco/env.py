"""``TabletopEnv``: the MuJoCo tabletop suite as one gymnasium environment.

Observation (a dict): ``"image"`` (third-person RGB, uint8 HxWx3), ``"wrist_image"`` (wrist RGB),
``"state"`` (float32, layout in :data:`STATE_LAYOUT`) and ``"instruction"`` (str). Cameras that are
not asked for, or all of them with ``render=False``, are left out of the dict.

Action: a float vector of 7, see ``envs.mujoco.controller`` (delta end effector or absolute
joints, the gripper last: -1 open, +1 closed). Reward is sparse (1.0 on success); ``terminated``
is success, ``truncated`` is reaching ``max_steps``; ``info["success"]`` is set on every step.

``record_timings=True`` adds per-phase wall-clock times (control, physics, observation) to ``info["timings"]``.

A bad action (wrong shape, NaN, infinite) raises :class:`InvalidActionError` before anything is
touched, so the episode goes on as if the call had not happened.
"""

from __future__ import annotations

import os
import string
import time
from typing import Any, ClassVar

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym
import mujoco
import numpy as np

from data_tools.errors import UserFacingError
from envs.mujoco.controller import ACTION_DIM, ACTION_MODES, ArmController, matrix_to_euler
from envs.mujoco.scene import ARM_JOINTS, FINGER_JOINTS, FINGER_TRAVEL, PHYSICS_TIMESTEP, build_scene_xml
from envs.mujoco.tasks import (
    TaskState,
    apply_initial_state,
    drawer_handle_position,
    evaluation_states,
    get_task,
    sample_initial_state,
    success,
)

CAMERAS = {"third_person": "image", "wrist": "wrist_image"}  # camera name -> observation key
STATE_LAYOUT: dict[str, slice] = {
    "ee_position": slice(0, 3),  # metres, world frame (table top is z = 0, arm base at the origin)
    "ee_rpy": slice(3, 6),  # extrinsic roll, pitch, yaw of the hand; (0, 0, 0) is pointing straight down
    "gripper_opening": slice(6, 7),  # metres between the finger pads (0 closed, 0.08 fully open)
    "joint_positions": slice(7, 13),  # the six arm joints, radians, in ARM_JOINTS order
}
STATE_DIM = 13
# Episode length per task at 10 Hz (scaled with the control rate).
MAX_STEPS_AT_10HZ = {"reach": 60, "push": 120, "pick_place": 150, "stack": 150, "open_drawer": 120}
INSTRUCTION_CHARSET = string.ascii_letters + string.digits + " ,.'-"


class EnvConfigError(UserFacingError, ValueError):
    """An environment argument that cannot work (unknown camera or action mode, bad size or rate)."""


class InvalidActionError(UserFacingError, ValueError):
    """An action of the wrong shape or with NaN/infinite values; the simulation was not touched."""


class ResetNeededError(UserFacingError, RuntimeError):
    """``step`` called before the first ``reset``."""


class TabletopEnv(gym.Env):
    """A tabletop manipulation task with language instructions (see the module docstring)."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        task: str = "pick_place",
        image_size: int = 128,
        cameras: tuple[str, ...] = ("third_person", "wrist"),
        action_mode: str = "delta_ee",
        control_hz: float = 10,
        max_steps: int | None = None,
        render: bool = True,
        render_mode: str | None = None,
        record_timings: bool = False,
    ) -> None:
        get_task(task)
        unknown = [c for c in cameras if c not in CAMERAS]
        if unknown:
            raise EnvConfigError(f"unknown camera(s) {unknown}; use any of {list(CAMERAS)}")
        if action_mode not in ACTION_MODES:
            raise EnvConfigError(f"unknown action_mode {action_mode!r}; use one of {list(ACTION_MODES)}")
        if not 1 <= control_hz <= 100:
            raise EnvConfigError(f"control_hz={control_hz} is out of range; use 1 to 100 (10 to 20 is typical)")
        if not 16 <= image_size <= 640:
            raise EnvConfigError(f"image_size={image_size} is out of range; use 16 to 640 pixels")
        self.task_name = task
        self.image_size = image_size
        self.cameras = tuple(cameras) if render else ()
        self.action_mode = action_mode
        self.control_hz = control_hz
        self.substeps = max(1, round(1.0 / (control_hz * PHYSICS_TIMESTEP)))
        self._max_steps_override = max_steps
        self.render_mode = render_mode
        self.record_timings = record_timings

        self.model = mujoco.MjModel.from_xml_string(build_scene_xml())
        self.data = mujoco.MjData(self.model)
        self.controller = ArmController(self.model)
        self._renderer: mujoco.Renderer | None = None
        self._finger_qpos = np.array([self.model.jnt_qposadr[self.model.joint(n).id] for n in FINGER_JOINTS])
        self._evaluation_cache: dict[str, list[TaskState]] = {}
        self.task_state: TaskState | None = None
        self.steps = 0

        image = gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        spaces: dict[str, gym.Space] = {CAMERAS[c]: image for c in self.cameras}
        spaces["state"] = gym.spaces.Box(-4.0, 4.0, (STATE_DIM,), np.float32)  # metres and radians
        spaces["instruction"] = gym.spaces.Text(max_length=256, min_length=0, charset=INSTRUCTION_CHARSET)
        self.observation_space = gym.spaces.Dict(spaces)
        if action_mode == "delta_ee":
            config = self.controller.config
            limit = np.array([*[config.max_translation] * 3, *[config.max_rotation] * 3, 1], dtype=np.float32)
            self.action_space = gym.spaces.Box(-limit, limit, (ACTION_DIM,), np.float32)
        else:
            low = np.append(self.controller.joint_low, -1.0).astype(np.float32)
            high = np.append(self.controller.joint_high, 1.0).astype(np.float32)
            self.action_space = gym.spaces.Box(low, high, (ACTION_DIM,), np.float32)

    @property
    def max_steps(self) -> int:
        if self._max_steps_override is not None:
            return self._max_steps_override
        return round(MAX_STEPS_AT_10HZ[self.task_name] * self.control_hz / 10)

    # ---- episode -------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        """Start an episode. ``options``: ``"task"`` switches the task; ``"state_index"`` takes state
        ``i`` of the task's fixed evaluation set instead of a random one drawn from the seed."""
        super().reset(seed=seed)
        options = options or {}
        if "task" in options:
            get_task(options["task"])
            self.task_name = options["task"]
        index = options.get("state_index")
        if index is not None:
            states = self._evaluation_cache.setdefault(self.task_name, evaluation_states(self.task_name))
            if not 0 <= int(index) < len(states):
                raise EnvConfigError(f"state_index={index} is out of range; the evaluation set has {len(states)}")
            self.task_state = states[int(index)]
        else:
            self.task_state = sample_initial_state(self.task_name, self.np_random)
        apply_initial_state(self.model, self.data, self.task_state)
        self.controller.hold(self.data, gripper_command=-1.0)
        self.steps = 0
        info = {
            "task": self.task_name,
            "instruction": self.task_state.instruction,
            "state_index": index,
            "success": False,
        }
        return self._observation(), info

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        if self.task_state is None:
            raise ResetNeededError("step() was called before reset(); call env.reset() to start an episode")
        action = self._validated(action)
        started = time.perf_counter()
        self.controller.apply(self.data, action, self.action_mode)
        controlled = time.perf_counter()
        mujoco.mj_step(self.model, self.data, nstep=self.substeps)
        stepped = time.perf_counter()
        self.steps += 1
        succeeded = success(self.model, self.data, self.task_state)
        observation = self._observation()
        rendered = time.perf_counter()
        truncated = self.steps >= self.max_steps and not succeeded
        info: dict[str, Any] = {"success": succeeded, "steps": self.steps}
        if self.record_timings:  # off by default: wall-clock times would make info differ between runs
            info["timings"] = {
                "control_s": controlled - started,
                "physics_s": stepped - controlled,
                "observation_s": rendered - stepped,
            }
        return observation, float(succeeded), succeeded, truncated, info

    def _validated(self, action: Any) -> np.ndarray:
        try:
            vector = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise InvalidActionError(
                f"the action must be a vector of {ACTION_DIM} numbers, got {type(action).__name__} ({error}); "
                "pass a float array like env.action_space.sample()"
            ) from None
        if vector.shape != (ACTION_DIM,):
            raise InvalidActionError(
                f"the action must have shape ({ACTION_DIM},) ({self._action_meaning()}), got shape {vector.shape}; "
                "nothing was applied, send a 7-vector"
            )
        if not np.all(np.isfinite(vector)):
            bad = [i for i in range(ACTION_DIM) if not np.isfinite(vector[i])]
            raise InvalidActionError(
                f"the action has NaN or infinite values at dimension(s) {bad}; nothing was applied, "
                "send finite numbers (check the policy's output decoding)"
            )
        return vector

    def _action_meaning(self) -> str:
        if self.action_mode == "delta_ee":
            return "dx, dy, dz, droll, dpitch, dyaw, gripper"
        return "six joint angles, gripper"

    # ---- observations --------------------------------------------------------------------------

    def proprioceptive_state(self) -> np.ndarray:
        """The ``"state"`` vector (see :data:`STATE_LAYOUT`)."""
        position, rotation = self.controller.end_effector_pose(self.data)
        opening = self.data.qpos[self._finger_qpos].sum()
        joints = self.controller.arm_joint_positions(self.data)
        return np.concatenate([position, matrix_to_euler(rotation), [opening], joints]).astype(np.float32)

    def render_camera(self, camera: str) -> np.ndarray:
        """One RGB image (uint8, image_size x image_size x 3) from ``camera``."""
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.image_size, self.image_size)
        self._renderer.update_scene(self.data, camera=camera)
        return self._renderer.render()

    def _observation(self) -> dict[str, Any]:
        observation: dict[str, Any] = {CAMERAS[c]: self.render_camera(c) for c in self.cameras}
        observation["state"] = self.proprioceptive_state()
        observation["instruction"] = self.task_state.instruction if self.task_state else ""
        return observation

    def render(self) -> np.ndarray | None:
        if self.render_mode == "rgb_array":
            return self.render_camera("third_person")
        return None

    def privileged_state(self) -> dict[str, Any]:
        """Simulator truth for scripted experts and analysis (not part of the observation): the hand
        pose, the gripper, every object on the table (position and rotation matrix), the drawer."""
        if self.task_state is None:
            raise ResetNeededError("privileged_state() needs an episode; call env.reset() first")
        position, rotation = self.controller.end_effector_pose(self.data)
        objects = {
            name: (self.data.body(name).xpos.copy(), self.data.body(name).xmat.reshape(3, 3).copy())
            for name in self.task_state.placements
        }
        return {
            "task_state": self.task_state,
            "ee_position": position,
            "ee_rotation": rotation,
            "gripper_opening": float(self.data.qpos[self._finger_qpos].sum()),
            "objects": objects,
            "drawer_handle": drawer_handle_position(self.data),
            "drawer_opening": float(self.data.joint("drawer_slide").qpos[0]),
            "joint_positions": self.controller.arm_joint_positions(self.data),
        }

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


__all__ = [
    "ARM_JOINTS",
    "CAMERAS",
    "FINGER_TRAVEL",
    "STATE_DIM",
    "STATE_LAYOUT",
    "EnvConfigError",
    "InvalidActionError",
    "ResetNeededError",
    "TabletopEnv",
]
