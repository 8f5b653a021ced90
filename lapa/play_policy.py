"""A play policy for the simulated arm: the end effector moves along one of the six axis directions
(+x, -x, +y, -y, +z, -z), held for a few steps, inside a workspace box, gripper open. Its episodes
are videos whose true motion is known (from the recorded states), for training the quantizer on
varied motion and for probing whether its codes carry the motion."""

from __future__ import annotations

from typing import Any

import numpy as np

AXIS_DIRECTIONS = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float64)
WORKSPACE_LOW = np.array([0.3, -0.22, 0.05])
WORKSPACE_HIGH = np.array([0.6, 0.18, 0.3])
OPEN = -1.0


class RandomMotionPolicy:
    """Implements ``magma.policies.Policy``: ``act`` returns a 7-D delta end-effector action."""

    def __init__(self, seed: int, step_m: float = 0.03, hold_steps: tuple[int, int] = (2, 5)) -> None:
        self.rng = np.random.default_rng(seed)
        self.step_m = step_m
        self.hold_steps = hold_steps
        self.direction = AXIS_DIRECTIONS[0]
        self.remaining = 0

    def reset(self, task: dict[str, Any] | None = None) -> None:
        self.remaining = 0

    def _inside(self, position: np.ndarray, direction: np.ndarray) -> bool:
        target = position + direction * self.step_m
        return bool((target >= WORKSPACE_LOW).all() and (target <= WORKSPACE_HIGH).all())

    def act(self, observation: dict[str, Any]) -> np.ndarray:
        state = observation.get("observation.state", observation.get("state"))
        position = np.asarray(state[:3], dtype=np.float64)
        if self.remaining <= 0 or not self._inside(position, self.direction):
            allowed = [d for d in AXIS_DIRECTIONS if self._inside(position, d)] or list(AXIS_DIRECTIONS)
            self.direction = allowed[self.rng.integers(len(allowed))]
            self.remaining = int(self.rng.integers(self.hold_steps[0], self.hold_steps[1] + 1))
        self.remaining -= 1
        return np.concatenate([self.direction * self.step_m, np.zeros(3), [OPEN]]).astype(np.float32)
