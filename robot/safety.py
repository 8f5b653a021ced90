"""Safety limits applied to every action before it reaches a robot: per-step bounds on the
end-effector motion and a workspace box the end effector may not leave. Pure numpy."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SafetyLimits:
    """Limits of a 7-D delta end-effector action (dx, dy, dz, droll, dpitch, dyaw, gripper)."""

    max_translation_m: float = 0.05  # per step, per axis
    max_rotation_rad: float = 0.25  # per step, per axis
    workspace_min: list[float] = field(default_factory=lambda: [-0.6, -0.6, 0.0])  # end effector, metres
    workspace_max: list[float] = field(default_factory=lambda: [0.6, 0.6, 0.8])
    gripper_range: tuple[float, float] = (-1.0, 1.0)


@dataclass
class ClippedAction:
    action: np.ndarray  # what is sent
    clipped: bool  # whether anything changed


def clip_delta_action(action: np.ndarray, end_effector_xyz: np.ndarray, limits: SafetyLimits) -> ClippedAction:
    """Bound each step and keep the end effector's target inside the workspace box."""
    sent = np.array(action, dtype=np.float64)
    sent[:3] = np.clip(sent[:3], -limits.max_translation_m, limits.max_translation_m)
    sent[3:6] = np.clip(sent[3:6], -limits.max_rotation_rad, limits.max_rotation_rad)
    target = np.clip(end_effector_xyz + sent[:3], limits.workspace_min, limits.workspace_max)
    sent[:3] = target - end_effector_xyz
    sent[6] = np.clip(sent[6], *limits.gripper_range)
    return ClippedAction(action=sent, clipped=not np.allclose(sent, action))
