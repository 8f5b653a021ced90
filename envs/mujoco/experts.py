"""Scripted experts, one per task: closed-loop waypoint phases on the simulator's privileged state.

An expert is built on the environment it drives (``ScriptedExpert(env.unwrapped)``) and reads
``env.privileged_state()`` (object poses, the drawer handle) on every ``act``; it implements the
policy protocol (``reset(task)``, ``act(observation) -> action``) and sends delta end-effector
actions, so the env must be in ``action_mode="delta_ee"``. Phases advance when the hand is
within a tolerance of its waypoint, so a slip is corrected rather than replayed blindly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.mujoco.controller import euler_to_matrix, matrix_to_euler
from envs.mujoco.env import EnvConfigError, TabletopEnv
from envs.mujoco.scene import CUBE_HALF_SIZE, PLATE_HALF_HEIGHT
from envs.mujoco.tasks import BOWL_FLOOR_HEIGHT

OPEN, HALF_OPEN, CLOSED = -1.0, 0.0, 1.0
CARRY_HEIGHT = 0.13
GRIPPER_WAIT_STEPS = 4


def cube_grasp_yaw(rotation: np.ndarray) -> float:
    """The hand yaw in [-pi/4, pi/4] that lines the fingers up with the cube's faces."""
    yaw = np.arctan2(rotation[1, 0], rotation[0, 0])
    return float((yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4)


class ScriptedExpert:
    """Solves any task of the suite from privileged state (see the module docstring)."""

    def __init__(self, env: TabletopEnv, max_translation: float = 0.05) -> None:
        if env.action_mode != "delta_ee":
            raise EnvConfigError(
                "ScriptedExpert sends delta end-effector actions; make the env with action_mode='delta_ee'"
            )
        self.env = env
        self.max_translation = max_translation
        self.phase = "start"
        self.phase_steps = 0

    def reset(self, task: dict[str, Any] | None = None) -> None:
        """Start over (the task itself is read from the env's privileged state)."""
        self.phase, self.phase_steps = "start", 0

    def act(self, observation: dict[str, Any] | None = None) -> np.ndarray:
        truth = self.env.privileged_state()
        handlers = {
            "reach": self._reach,
            "push": self._push,
            "pick_place": self._pick_place,
            "stack": self._pick_place,
            "open_drawer": self._open_drawer,
        }
        position, yaw, gripper = handlers[truth["task_state"].task](truth)
        self.phase_steps += 1
        return self._action(truth, position, yaw, gripper)

    # ---- helpers ---------------------------------------------------------------------------------

    def _goto(self, phase: str) -> None:
        self.phase, self.phase_steps = phase, 0

    def _action(self, truth: dict, target: np.ndarray, yaw: float, gripper: float) -> np.ndarray:
        translation = np.clip(target - truth["ee_position"], -self.max_translation, self.max_translation)
        rotation = matrix_to_euler(euler_to_matrix(np.array([0.0, 0.0, yaw])) @ truth["ee_rotation"].T)
        return np.concatenate([translation, np.clip(rotation, -0.25, 0.25), [gripper]]).astype(np.float32)

    @staticmethod
    def _near(truth: dict, target: np.ndarray, tolerance: float) -> bool:
        return bool(np.linalg.norm(truth["ee_position"] - target) < tolerance)

    # ---- tasks -----------------------------------------------------------------------------------

    def _reach(self, truth: dict) -> tuple[np.ndarray, float, float]:
        cube, rotation = truth["objects"][truth["task_state"].roles["object"]]
        return cube + np.array([0.0, 0.0, 0.02]), cube_grasp_yaw(rotation), OPEN

    def _push(self, truth: dict) -> tuple[np.ndarray, float, float]:
        roles = truth["task_state"].roles
        cube = truth["objects"][roles["object"]][0]
        target = truth["objects"][roles["target"]][0]
        offset = target[:2] - cube[:2]
        remaining = float(np.linalg.norm(offset))
        direction = offset / max(remaining, 1e-6)
        ee = truth["ee_position"]
        behind = np.array([*(cube[:2] - 0.09 * direction), 0.08])
        contact = cube[:2] - 0.036 * direction  # the closed fingers' centre when they touch the cube
        relative = ee[:2] - cube[:2]
        lateral = abs(float(direction[0] * relative[1] - direction[1] * relative[0]))
        if self.phase == "start":
            self._goto("behind_high")
        if self.phase == "behind_high":
            if self._near(truth, behind, 0.012):
                self._goto("behind_low")
            return behind, 0.0, CLOSED
        if self.phase == "behind_low":
            low = np.array([*behind[:2], 0.025])
            if self._near(truth, low, 0.01):
                self._goto("push")
            return low, 0.0, CLOSED
        # push: keep the fingers on the line through the cube and the target, a little past contact
        if lateral > 0.018 or float(np.dot(ee[:2] - cube[:2], direction)) > -0.02:
            self._goto("behind_high")
            return np.array([*ee[:2], 0.08]), 0.0, CLOSED
        ahead = contact + direction * min(0.015, remaining)
        return np.array([*ahead, 0.025]), 0.0, CLOSED

    def _pick_place(self, truth: dict) -> tuple[np.ndarray, float, float]:
        roles = truth["task_state"].roles
        cube, rotation = truth["objects"][roles["object"]]
        destination_name = roles.get("receptacle") or roles["base"]
        destination = truth["objects"][destination_name][0]
        ee = truth["ee_position"]
        yaw = cube_grasp_yaw(rotation)
        if destination_name.endswith("_plate"):
            release_height = 2 * PLATE_HALF_HEIGHT + CUBE_HALF_SIZE + 0.008
        elif destination_name.endswith("_bowl"):
            release_height = BOWL_FLOOR_HEIGHT + CUBE_HALF_SIZE + 0.01
        else:  # on another cube
            release_height = 3 * CUBE_HALF_SIZE + 0.006
        if self.phase == "start":
            self._goto("above")
        if self.phase == "above":
            above = cube + np.array([0.0, 0.0, 0.1])
            if self._near(truth, above, 0.015):
                self._goto("descend")
            return above, yaw, OPEN
        if self.phase == "descend":
            grasp = cube + np.array([0.0, 0.0, 0.0])
            if self._near(truth, grasp, 0.008):
                self._goto("close")
            return grasp, yaw, OPEN
        if self.phase == "close":
            if self.phase_steps >= GRIPPER_WAIT_STEPS:
                self._goto("lift")
            return cube.copy(), yaw, CLOSED
        if self.phase == "lift":
            if ee[2] > CARRY_HEIGHT - 0.02:
                self._goto("carry")
            return np.array([*ee[:2], CARRY_HEIGHT]), yaw, CLOSED
        # From here on, steer by where the held cube is, not the hand: the grasp need not be centred.
        hand_to_cube = cube - ee
        if self.phase == "carry":
            waypoint = np.array([*(destination[:2] - hand_to_cube[:2]), CARRY_HEIGHT])
            if np.linalg.norm(cube[:2] - destination[:2]) < 0.006 and self.phase_steps > 2:
                self._goto("lower")
            return waypoint, yaw, CLOSED
        if self.phase == "lower":
            waypoint = np.array([*(destination[:2] - hand_to_cube[:2]), destination[2] + release_height])
            if cube[2] < destination[2] + release_height + 0.006 or self.phase_steps > 20:
                self._goto("release")
            return waypoint, yaw, CLOSED
        if self.phase == "release":
            if self.phase_steps >= GRIPPER_WAIT_STEPS:
                self._goto("retreat")
            return ee.copy(), yaw, OPEN
        return np.array([*ee[:2], CARRY_HEIGHT]), yaw, OPEN

    def _open_drawer(self, truth: dict) -> tuple[np.ndarray, float, float]:
        handle = truth["drawer_handle"]
        if self.phase == "start":
            self._goto("above")
        if self.phase == "above":
            above = handle + np.array([0.0, 0.0, 0.08])
            if self._near(truth, above, 0.012):
                self._goto("descend")
            return above, 0.0, HALF_OPEN
        if self.phase == "descend":
            grasp = handle + np.array([0.0, 0.0, -0.005])
            if self._near(truth, grasp, 0.008):
                self._goto("close")
            return grasp, 0.0, HALF_OPEN
        if self.phase == "close":
            if self.phase_steps >= GRIPPER_WAIT_STEPS:
                self._goto("pull")
            return handle + np.array([0.0, 0.0, -0.005]), 0.0, CLOSED
        return handle + np.array([0.0, -0.03, -0.005]), 0.0, CLOSED


def run_expert_episode(env: TabletopEnv, state_index: int | None = None, seed: int | None = None) -> bool:
    """One episode of the task's expert (a state of the evaluation set, or one drawn from ``seed``); success."""
    expert = ScriptedExpert(env)
    options = {} if state_index is None else {"state_index": state_index}
    observation, info = env.reset(seed=seed, options=options)
    expert.reset(info)
    while True:
        observation, _, terminated, truncated, info = env.step(expert.act(observation))
        if terminated or truncated:
            return bool(info["success"])


def expert_success_rate(task: str, indices: range | list[int]) -> float:
    """The fraction of the given evaluation states of ``task`` that its expert solves (no rendering)."""
    env = TabletopEnv(task=task, render=False)
    try:
        return sum(run_expert_episode(env, state_index=i) for i in indices) / len(indices)
    finally:
        env.close()


if __name__ == "__main__":  # python -m envs.mujoco.experts: the full evaluation-set success rates
    from envs.mujoco.tasks import EVALUATION_COUNT, TASKS

    for name in TASKS:
        print(f"{name}: {expert_success_rate(name, range(EVALUATION_COUNT)):.0%}", flush=True)
