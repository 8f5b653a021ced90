"""``MetaWorldEnv``: every Meta-World v3 task as one gymnasium environment of this toolkit's contract.

Observation (a dict): ``"image"`` (uint8 HxWx3 from ``camera``, upright: the ``corner*`` cameras of
Meta-World's scene look at the table upside down, so their frames are turned 180 degrees), ``"state"``
(Meta-World's 39-D observation as float32, goal observable as in its MT benchmarks: hand xyz, gripper
opening, two objects' position and quaternion, the same 18 values of the previous step, the goal xyz)
and ``"instruction"`` (``instructions.INSTRUCTIONS``). ``render=False`` leaves the image out. The image is
Meta-World's own rendering of the scene; ``fast_render=True`` skips shadows and reflections, several times
faster on software OpenGL (CPU-only machines), at the price of frames that differ from Meta-World's.

Action: Meta-World's own, 4 floats in [-1, 1]: hand motion (x 1 cm per unit, clipped by Meta-World) and
gripper effort (+1 closes). It reaches Meta-World's ``step`` unchanged, as float32. Reward is Meta-World's
dense reward (0 to 10); ``info["success"]`` is its success signal (a bool, per step); ``terminated`` is
success when ``terminate_on_success``; ``truncated`` comes at ``max_episode_steps`` (Meta-World's 500
at most).

Seeds: Meta-World's own ``reset(seed=...)`` ignores the seed. Here ``reset(seed=s)`` places objects and goal
exactly as Meta-World's ``gymnasium.make("Meta-World/goal_observable", env_name=task + "-v3", seed=s)``
does (its placement draw, under ``numpy.random.seed(s)``, with the global numpy state saved and restored
around it), so the same seed gives the same episode in both, and different seeds differ. A reset without
a seed draws the placement seed from the environment's own generator (seeded by the last seed given).
"""

from __future__ import annotations

import os
import string
import threading
from typing import Any, ClassVar

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym
import mujoco
import numpy as np
from metaworld.env_dict import ALL_V3_ENVIRONMENTS
from metaworld.sawyer_xyz_env import SawyerXYZEnv

from data_tools.errors import UserFacingError
from envs.metaworld.benchmarks import canonical_task, metaworld_name
from envs.metaworld.instructions import instruction_for

CAMERAS = ("topview", "corner", "corner2", "corner3", "corner4", "behindGripper", "gripperPOV")
UPSIDE_DOWN_CAMERAS = frozenset({"corner", "corner2", "corner3", "corner4"})
DEFAULT_CAMERA = "corner2"
DEFAULT_TASK = "reach"
STATE_DIM = 39
ACTION_DIM = 4
MAX_EPISODE_STEPS = SawyerXYZEnv.max_path_length  # 500: Meta-World refuses to step further
CONTROL_HZ = 80  # Meta-World's step: 5 physics steps of 2.5 ms
INSTRUCTION_CHARSET = string.ascii_letters + string.digits + " ,.'-"
# Bounds of the goal xyz over all 50 tasks' goal spaces (four tasks put goals below the hand's z range).
_GOAL_LOW = np.array([-0.525, 0.348, -0.15])
_GOAL_HIGH = np.array([0.525, 1.025, 0.7])
OBJECT_BOUND = 10.0
_SEED_LIMIT = 2**32  # numpy.random.seed's range
# Meta-World draws placements from numpy's global generator; one env at a time swaps its state.
_GLOBAL_NUMPY_RANDOM = threading.Lock()


class EnvConfigError(UserFacingError, ValueError):
    """An environment argument that cannot work (unknown camera, bad image size or episode length)."""


class InvalidActionError(UserFacingError, ValueError):
    """An action of the wrong shape or with NaN/infinite values; the simulation was not touched."""


class ResetNeededError(UserFacingError, RuntimeError):
    """``step`` before the first ``reset``, or after the episode reached ``max_episode_steps``."""


def state_space() -> gym.spaces.Box:
    """The ``"state"`` box as float32: Meta-World's goal-observable bounds, except that objects (unbounded in
    Meta-World) get +-10 (metres, quaternion components): finite, and far beyond the table."""
    hand, gripper = SawyerXYZEnv._HAND_SPACE, np.array([-1.0])
    objects = np.full(14, OBJECT_BOUND)
    low = np.hstack([hand.low, gripper, -objects, hand.low, gripper, -objects, _GOAL_LOW])
    high = np.hstack([hand.high, -gripper, objects, hand.high, -gripper, objects, _GOAL_HIGH])
    return gym.spaces.Box(low.astype(np.float32), high.astype(np.float32), (STATE_DIM,), np.float32)


class MetaWorldEnv(gym.Env):
    """A Meta-World v3 task with an image, its state and an instruction (see the module docstring)."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": CONTROL_HZ}

    def __init__(
        self,
        task: str | None = None,
        image_size: int = 128,
        camera: str = DEFAULT_CAMERA,
        max_episode_steps: int = MAX_EPISODE_STEPS,
        terminate_on_success: bool = True,
        render_mode: str | None = "rgb_array",
        render: bool = True,
        fast_render: bool = False,
    ) -> None:
        self.task_name = canonical_task(task or DEFAULT_TASK)
        if camera not in CAMERAS:
            raise EnvConfigError(f"unknown camera '{camera}'; Meta-World's scene has {list(CAMERAS)}")
        if not 16 <= image_size <= 1024:
            raise EnvConfigError(f"image_size={image_size} is out of range; use 16 to 1024 pixels")
        if not 1 <= max_episode_steps <= MAX_EPISODE_STEPS:
            raise EnvConfigError(
                f"max_episode_steps={max_episode_steps} is out of range; Meta-World episodes last 1 to "
                f"{MAX_EPISODE_STEPS} steps"
            )
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise EnvConfigError(f"render_mode={render_mode!r} is not supported; use 'rgb_array' or None")
        self.image_size = image_size
        self.camera = camera
        self.max_episode_steps = max_episode_steps
        self.terminate_on_success = terminate_on_success
        self.render_mode = render_mode
        self.renders_images = render
        self.fast_render = fast_render
        self.sim: SawyerXYZEnv | None = None  # Meta-World's env of the current task
        self._sim_task: str | None = None
        self._renderer: mujoco.Renderer | None = None
        self._episode_started = False
        self.steps = 0
        self.placement_seed: int | None = None

        spaces: dict[str, gym.Space] = {}
        if render:
            spaces["image"] = gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        spaces["state"] = state_space()
        spaces["instruction"] = gym.spaces.Text(max_length=256, min_length=0, charset=INSTRUCTION_CHARSET)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)

    # ---- episode -------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        """Start an episode; ``options={"task": "push"}`` (or ``"push-v3"``) switches the task."""
        if seed is not None and not 0 <= int(seed) < _SEED_LIMIT:
            raise EnvConfigError(f"seed={seed} is out of range; Meta-World placements take seeds 0 to 2**32 - 1")
        super().reset(seed=seed)
        options = options or {}
        unknown = sorted(set(options) - {"task"})
        if unknown:
            raise EnvConfigError(f"unknown reset option(s) {unknown}; MetaWorldEnv.reset takes options={{'task': ...}}")
        if "task" in options:
            self.task_name = canonical_task(options["task"])
        sim = self._task_sim()
        self.placement_seed = int(seed) if seed is not None else int(self.np_random.integers(_SEED_LIMIT))
        with _GLOBAL_NUMPY_RANDOM:  # Meta-World's goal-observable construction, step for step
            saved = np.random.get_state()
            np.random.seed(self.placement_seed)
            try:
                sim._freeze_rand_vec = False
                sim.reset()
            finally:
                sim._freeze_rand_vec = True
                np.random.set_state(saved)
        state, _ = sim.reset()
        self.steps = 0
        self._episode_started = True
        info = {
            "task": self.task_name,
            "instruction": instruction_for(self.task_name),
            "seed": self.placement_seed,
            "success": False,
        }
        return self._observation(state), info

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        if not self._episode_started:
            raise ResetNeededError("step() was called before reset(); call env.reset() to start an episode")
        if self.steps >= self.max_episode_steps:
            raise ResetNeededError(
                f"the episode already lasted max_episode_steps={self.max_episode_steps} steps; call env.reset()"
            )
        action = self._validated(action)
        state, reward, _, _, sim_info = self.sim.step(action)
        self.steps += 1
        succeeded = bool(sim_info["success"])
        terminated = succeeded and self.terminate_on_success
        truncated = self.steps >= self.max_episode_steps and not terminated
        info = {**sim_info, "success": succeeded, "task": self.task_name, "steps": self.steps}
        return self._observation(state), float(reward), terminated, truncated, info

    def _validated(self, action: Any) -> np.ndarray:
        try:
            vector = np.asarray(action, dtype=np.float32)
        except (TypeError, ValueError) as error:
            raise InvalidActionError(
                f"the action must be {ACTION_DIM} numbers (dx, dy, dz, gripper), got {type(action).__name__} "
                f"({error}); pass a float array like env.action_space.sample()"
            ) from None
        if vector.shape != (ACTION_DIM,):
            raise InvalidActionError(
                f"the action must have shape ({ACTION_DIM},) (dx, dy, dz, gripper), got shape {vector.shape}; "
                "nothing was applied"
            )
        if not np.all(np.isfinite(vector)):
            raise InvalidActionError(
                f"the action {np.asarray(action).tolist()} has NaN or infinite values (or values beyond float32); "
                "nothing was applied, send finite numbers in [-1, 1]"
            )
        return vector

    def _task_sim(self) -> SawyerXYZEnv:
        """Meta-World's env of the current task, goal observable; built anew (and the old one closed) on a
        task switch, so at most one scene and one renderer are held."""
        if self.sim is not None and self._sim_task == self.task_name:
            return self.sim
        self.close()
        sim = ALL_V3_ENVIRONMENTS[metaworld_name(self.task_name)](width=self.image_size, height=self.image_size)
        sim._partially_observable = False  # the MT setting: the goal is part of the observation
        sim.__dict__.pop("sawyer_observation_space", None)  # recomputed with the goal's bounds
        sim._set_task_called = True  # placements come from reset(), not from a pickled Task
        self.sim, self._sim_task = sim, self.task_name
        return sim

    # ---- observations --------------------------------------------------------------------------

    def render_camera(self) -> np.ndarray:
        """The current frame of ``camera`` (uint8, image_size x image_size x 3), upright."""
        if self.sim is None:
            raise ResetNeededError("render needs an episode; call env.reset() first")
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.sim.model, self.image_size, self.image_size)
        self._renderer.update_scene(self.sim.data, camera=self.camera)
        if self.fast_render:
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        frame = self._renderer.render()
        if self.camera in UPSIDE_DOWN_CAMERAS:
            frame = np.ascontiguousarray(frame[::-1, ::-1])
        return frame

    def _observation(self, state: np.ndarray) -> dict[str, Any]:
        observation: dict[str, Any] = {}
        if self.renders_images:
            observation["image"] = self.render_camera()
        observation["state"] = np.asarray(state, dtype=np.float32)
        observation["instruction"] = instruction_for(self.task_name)
        return observation

    def render(self) -> np.ndarray | None:
        if self.render_mode == "rgb_array":
            return self.render_camera()
        return None

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        if self.sim is not None:
            self.sim.close()
            self.sim, self._sim_task = None, None
            self._episode_started = False


__all__ = [
    "CAMERAS",
    "CONTROL_HZ",
    "DEFAULT_CAMERA",
    "MAX_EPISODE_STEPS",
    "STATE_DIM",
    "EnvConfigError",
    "InvalidActionError",
    "MetaWorldEnv",
    "ResetNeededError",
]
