"""Safety limits applied to every action before it reaches a robot: per-step bounds on the
end-effector motion, a workspace box the end effector may not leave, joint limits, NaN/inf
rejection. ``clip_delta_action`` is the pure clipping; ``SafetyFilter`` is what the daemon runs on
every action, naming and counting what it changed or refused. Pure numpy."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from data_tools.errors import UserFacingError

# Everything the daemon counts; the recording stores one flag per event and frame.
SAFETY_EVENTS = (
    "clipped",  # an action changed to fit the per-step, workspace or gripper limits
    "non_finite",  # a NaN or infinite action, refused (the robot held)
    "bad_dimension",  # an action whose size is not the robot's, refused
    "joint_limit",  # a measured joint outside its configured limits (safe stop)
    "stale_camera",  # a camera frame older than the tolerance (the robot held)
    "camera_lost",  # a camera whose reader stopped (safe stop)
    "policy_error",  # the policy server failed or could not be reached
)


class SafetyConfigError(UserFacingError, ValueError):
    """Limits that do not cover the robot (a joint without limits) or that make no sense."""


@dataclass
class SafetyLimits:
    """Limits of a 7-D delta end-effector action (dx, dy, dz, droll, dpitch, dyaw, gripper) and of the
    robot's joints (``joint_limits``: joint name -> [low, high] radians; the daemon requires every joint)."""

    max_translation_m: float = 0.05  # per step, per axis
    max_rotation_rad: float = 0.25  # per step, per axis
    workspace_min: list[float] = field(default_factory=lambda: [-0.6, -0.6, 0.0])  # end effector, metres
    workspace_max: list[float] = field(default_factory=lambda: [0.6, 0.6, 0.8])
    gripper_range: tuple[float, float] = (-1.0, 1.0)
    joint_limits: dict[str, list[float]] = field(default_factory=dict)


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


@dataclass
class FilteredAction:
    action: np.ndarray | None  # what may be sent; None: refused (send the hold action instead)
    events: list[str]


class SafetyFilter:
    """Checks and clips delta end-effector actions for one robot; ``counts`` per event of SAFETY_EVENTS."""

    def __init__(self, limits: SafetyLimits, joint_names: tuple[str, ...], action_dim: int = 7) -> None:
        missing = [name for name in joint_names if name not in limits.joint_limits]
        unknown = [name for name in limits.joint_limits if name not in joint_names]
        if missing or unknown:
            raise SafetyConfigError(
                f"safety.joint_limits must give [low, high] for every joint of the robot {list(joint_names)}; "
                f"missing: {missing}, unknown: {unknown}. Add them to the robot's config"
            )
        bounds = np.array([limits.joint_limits[name] for name in joint_names], dtype=np.float64).reshape(-1, 2)
        if len(joint_names) and np.any(bounds[:, 0] >= bounds[:, 1]):
            raise SafetyConfigError(f"safety.joint_limits has a low >= high: {limits.joint_limits}")
        if np.any(np.asarray(limits.workspace_min) >= np.asarray(limits.workspace_max)):
            raise SafetyConfigError("safety.workspace_min must be below workspace_max on every axis")
        self.limits = limits
        self.joint_names = joint_names
        self.joint_low, self.joint_high = bounds[:, 0], bounds[:, 1]
        self.action_dim = action_dim
        self.counts: Counter[str] = Counter()

    def count(self, event: str) -> None:
        self.counts[event] += 1

    def joints_outside(self, joints: np.ndarray | None) -> list[str]:
        """Names of measured joints outside their limits."""
        if joints is None or not len(self.joint_names):
            return []
        outside = (joints < self.joint_low) | (joints > self.joint_high)
        return [name for name, bad in zip(self.joint_names, outside, strict=True) if bad]

    def filter(self, action: np.ndarray, end_effector_xyz: np.ndarray) -> FilteredAction:
        """The action clipped to the limits, or None with the reason; events are counted here."""
        array = np.asarray(action, dtype=np.float64)
        if array.shape != (self.action_dim,):
            events = ["bad_dimension"]
        elif not np.all(np.isfinite(array)):
            events = ["non_finite"]
        else:
            clipped = clip_delta_action(array, np.asarray(end_effector_xyz, dtype=np.float64), self.limits)
            events = ["clipped"] if clipped.clipped else []
            for event in events:
                self.count(event)
            return FilteredAction(clipped.action, events)
        for event in events:
            self.count(event)
        return FilteredAction(None, events)
