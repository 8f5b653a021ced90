"""Safety limits applied to every action before it reaches a robot, and checks of what the robot
actually did: per-step bounds on the end-effector motion (found through the robot's declared
``ActionLayout``: which entries move, rotate and grip, and how many metres one unit moves), a
workspace box the end effector may not leave (the commanded target is clipped into it; the measured
pose is checked against it), a speed limit on the measured end effector, joint limits, NaN/inf
rejection with escalation when invalid actions keep coming. ``safety_config_problems`` checks the
limits themselves at load; ``check_action_layout`` refuses a layout the filter cannot bound;
``clip_delta_action`` is the pure clipping; ``SafetyFilter`` is what the daemon runs on every action
and ``MeasuredStateMonitor`` on every measured state, naming and counting what they changed or
refused. Pure numpy."""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from data_tools.errors import UserFacingError

# Everything the daemon counts; the recording stores one flag per event and frame.
SAFETY_EVENTS = (
    "clipped",  # an action changed to fit the per-step, workspace or gripper limits
    "non_finite",  # a NaN or infinite action, refused (the robot held)
    "bad_dimension",  # an action whose size is not the robot's, refused
    "joint_limit",  # a measured joint outside its configured limits (safe stop)
    "workspace_exit",  # the measured end effector outside the workspace box (+ tolerance): pulled back
    "overspeed",  # the measured end effector faster than max_speed_m_s: held
    "stale_camera",  # a camera frame older than the tolerance (the robot held)
    "camera_lost",  # a camera whose reader stopped (safe stop)
    "policy_error",  # the policy server failed or could not be reached
)
MAX_STEP_TRANSLATION_M = 0.5  # a per-step bound above this is no limit at all
MAX_WORKSPACE_TOLERANCE_M = 0.1


class SafetyConfigError(UserFacingError, ValueError):
    """Limits that do not cover the robot (a joint without limits) or that make no sense."""


@dataclass(frozen=True)
class ActionLayout:
    """What each entry of a robot's delta end-effector action does, so the safety filter can bound every one.

    ``translation``: the entries of the end effector's x, y, z motion, one unit moving it ``metres_per_unit``
    metres; ``rotation``: the entries of its roll, pitch, yaw change in radians (None: the action rotates
    nothing); ``gripper``: the entry of the gripper command (None: no gripper). Every entry of the action has
    one of these roles, or the filter refuses the robot (``check_action_layout``)."""

    size: int
    translation: tuple[int, int, int] = (0, 1, 2)
    metres_per_unit: float = 1.0
    rotation: tuple[int, int, int] | None = None
    gripper: int | None = None

    def entries(self) -> list[int]:
        """Every entry the layout gives a role, in role order (duplicates kept, for the check)."""
        rotation = list(self.rotation) if self.rotation is not None else []
        gripper = [self.gripper] if self.gripper is not None else []
        return [*self.translation, *rotation, *gripper]


# (dx, dy, dz, droll, dpitch, dyaw, gripper) in metres and radians: the tabletop arm's and most VLAs' action
DELTA_END_EFFECTOR = ActionLayout(size=7, translation=(0, 1, 2), rotation=(3, 4, 5), gripper=6)


def action_layout_problems(layout: ActionLayout, action_dim: int) -> list[str]:
    """Why the filter could not bound every entry of a ``action_dim``-D action laid out as ``layout``; []: it can."""
    problems = []
    if layout.size != action_dim:
        problems.append(f"it describes {layout.size}-D actions but the robot takes {action_dim}-D ones")
    triples = [layout.translation] if layout.rotation is None else [layout.translation, layout.rotation]
    if not all(isinstance(triple, tuple | list) and len(triple) == 3 for triple in triples):
        return [*problems, "translation (and rotation, when given) must name three entries: x, y, z"]
    entries = layout.entries()
    if not all(isinstance(entry, int) and not isinstance(entry, bool) for entry in entries):
        return [*problems, f"its entries {entries} must be whole numbers"]
    outside = sorted({entry for entry in entries if not 0 <= entry < action_dim})
    if outside:
        problems.append(f"entries {outside} are outside a {action_dim}-D action")
    repeated = sorted({entry for entry in entries if entries.count(entry) > 1})
    if repeated:
        problems.append(f"entries {repeated} are given two roles")
    unbounded = sorted(set(range(action_dim)) - set(entries))
    if unbounded:
        problems.append(f"entries {unbounded} are neither translation, rotation nor gripper, so nothing bounds them")
    scale = layout.metres_per_unit
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not (math.isfinite(scale) and 0 < scale <= 1):
        problems.append(f"metres_per_unit={scale} must be a number above 0 and at most 1 (metres one unit moves)")
    return problems


def check_action_layout(layout: object, action_dim: int, robot: str = "robot") -> ActionLayout:
    """``layout`` when the filter can bound every entry of the robot's ``action_dim``-D action; else one
    SafetyConfigError naming every problem and the fix (raised before anything moves)."""
    fix = (
        "declare it on the driver class as action_layout = robot.safety.ActionLayout(size=..., translation=..., "
        "metres_per_unit=..., rotation=..., gripper=...)"
    )
    if not isinstance(layout, ActionLayout):
        raise SafetyConfigError(
            f"robot '{robot}' declares no action layout ({layout!r}), so the safety filter cannot tell which "
            f"entries of its {action_dim}-D action move, rotate or grip; {fix}"
        )
    problems = action_layout_problems(layout, action_dim)
    if problems:
        raise SafetyConfigError(
            f"robot '{robot}' declares an action layout the safety filter cannot bound ({layout}): "
            + "; ".join(problems)
            + f"; {fix}"
        )
    return layout


@dataclass
class SafetyLimits:
    """Limits of a delta end-effector action (per-step translation in metres and rotation in radians, the
    gripper command; which entries those are comes from the robot's ``ActionLayout``), of the measured end
    effector, and of the robot's joints (``joint_limits``: joint name -> [low, high] radians; the daemon
    requires every joint)."""

    max_translation_m: float = 0.05  # per step, per axis
    max_rotation_rad: float = 0.25  # per step, per axis
    workspace_min: list[float] = field(default_factory=lambda: [-0.6, -0.6, 0.0])  # end effector, metres
    workspace_max: list[float] = field(default_factory=lambda: [0.6, 0.6, 0.8])
    workspace_tolerance_m: float = 0.01  # the measured end effector may overshoot the box this much
    max_speed_m_s: float = 1.5  # measured end-effector speed
    measured_violation_ticks: int = 1  # workspace / speed violations this many ticks in a short span: safe stop
    max_invalid_actions: int = 5  # NaN/inf or wrong-size actions in a row, or twice this in 4x as many: safe stop
    gripper_range: tuple[float, float] = (-1.0, 1.0)
    joint_limits: dict[str, list[float]] = field(default_factory=dict)


def _finite_numbers(value: Any, length: int) -> list[float] | None:
    try:
        numbers = [float(item) for item in value]
    except (TypeError, ValueError):
        return None
    if len(numbers) != length or not all(math.isfinite(number) for number in numbers):
        return None
    return numbers


def safety_config_problems(limits: SafetyLimits, prefix: str = "safety.") -> list[str]:
    """Every limit whose sign, range or ordering makes no sense, each with its fix; [] when all are sound."""
    problems = []

    def positive(name: str, value: Any, upper: float, unit: str) -> None:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not (math.isfinite(number) and 0 < number <= upper):
            problems.append(f"{prefix}{name}={value} must be a number above 0 and at most {upper:.4g} {unit}")

    positive("max_translation_m", limits.max_translation_m, MAX_STEP_TRANSLATION_M, "(metres per step)")
    positive("max_rotation_rad", limits.max_rotation_rad, math.pi, "(radians per step)")
    positive("max_speed_m_s", limits.max_speed_m_s, 10.0, "(metres per second)")
    tolerance = limits.workspace_tolerance_m
    if not (isinstance(tolerance, int | float) and 0 <= tolerance <= MAX_WORKSPACE_TOLERANCE_M):
        problems.append(
            f"{prefix}workspace_tolerance_m={tolerance} must be between 0 and {MAX_WORKSPACE_TOLERANCE_M} metres"
        )
    for name in ("measured_violation_ticks", "max_invalid_actions"):
        value = getattr(limits, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.append(f"{prefix}{name}={value} must be a whole number of at least 1")
    low, high = _finite_numbers(limits.workspace_min, 3), _finite_numbers(limits.workspace_max, 3)
    if low is None or high is None:
        problems.append(
            f"{prefix}workspace_min={list(limits.workspace_min)} and workspace_max={list(limits.workspace_max)} "
            "must each be three finite numbers [x, y, z] in metres"
        )
    elif any(lo >= hi for lo, hi in zip(low, high, strict=True)):
        axes = [axis for axis, lo, hi in zip("xyz", low, high, strict=True) if lo >= hi]
        problems.append(
            f"{prefix}workspace_min={low} is not below workspace_max={high} on axis {axes}; swap or fix the values"
        )
    gripper = _finite_numbers(limits.gripper_range, 2)
    if gripper is None or gripper[0] >= gripper[1]:
        problems.append(
            f"{prefix}gripper_range={list(limits.gripper_range)} must be two finite numbers [low, high] with low < high"
        )
    for joint, bounds in limits.joint_limits.items():
        numbers = _finite_numbers(bounds, 2)
        if numbers is None or numbers[0] >= numbers[1]:
            problems.append(
                f"{prefix}joint_limits.{joint}={list(bounds)} must be two finite numbers [low, high] radians "
                "with low < high"
            )
    return problems


def check_safety_limits(limits: SafetyLimits, prefix: str = "safety.") -> None:
    """SafetyConfigError listing every unsound limit (see ``safety_config_problems``)."""
    problems = safety_config_problems(limits, prefix)
    if problems:
        raise SafetyConfigError("unsafe safety limits: " + "; ".join(problems))


@dataclass
class ClippedAction:
    action: np.ndarray  # what is sent
    clipped: bool  # whether anything changed


def _step_bound(limit: float) -> float:
    """A per-step bound; one that is negative, NaN or infinite (refused at load) allows no motion."""
    return float(limit) if math.isfinite(limit) and limit > 0 else 0.0


def clip_delta_action(
    action: np.ndarray,
    end_effector_xyz: np.ndarray,
    limits: SafetyLimits,
    layout: ActionLayout = DELTA_END_EFFECTOR,
) -> ClippedAction:
    """Bound each step and keep the end effector's target inside the workspace box, in the action's own units
    (``layout.metres_per_unit``); entries within the limits stay exactly as they were.

    A measured pose outside the box gives a step back towards it, still within the per-step bound.
    Limits that make no sense (refused at load, see ``check_safety_limits``) fail safe: no motion."""
    sent = np.array(action, dtype=np.float64)
    unit = layout.metres_per_unit
    translation = _step_bound(limits.max_translation_m) / unit  # in action units
    moves = list(layout.translation)
    step = np.clip(sent[moves], -translation, translation)
    low = np.asarray(limits.workspace_min, dtype=np.float64)
    high = np.asarray(limits.workspace_max, dtype=np.float64)
    if low.shape == high.shape == (3,) and np.all(np.isfinite(low) & np.isfinite(high) & (low < high)):
        step = np.clip(step, (low - end_effector_xyz) / unit, (high - end_effector_xyz) / unit)
        sent[moves] = np.clip(step, -translation, translation)
    else:
        sent[moves] = 0.0
    if layout.rotation is not None:
        rotation = _step_bound(limits.max_rotation_rad)
        sent[list(layout.rotation)] = np.clip(sent[list(layout.rotation)], -rotation, rotation)
    if layout.gripper is not None:
        gripper_low, gripper_high = sorted(float(value) for value in limits.gripper_range)
        sent[layout.gripper] = np.clip(sent[layout.gripper], gripper_low, gripper_high)
    return ClippedAction(action=sent, clipped=not np.allclose(sent, action))


@dataclass
class FilteredAction:
    action: np.ndarray | None  # what may be sent; None: refused (send the hold action instead)
    events: list[str]


class SafetyFilter:
    """Checks and clips one robot's delta end-effector actions, laid out as its ``ActionLayout`` says
    (``check_action_layout`` refuses one it cannot bound); ``counts`` per event of SAFETY_EVENTS;
    ``invalid_streak`` counts refused actions in a row and ``recent_invalid`` flags the last
    4 x ``max_invalid_actions`` policy actions: the daemon safe-stops at ``max_invalid_actions`` in a row,
    or when half of the recent ones were refused (a policy that fails intermittently)."""

    def __init__(
        self, limits: SafetyLimits, joint_names: tuple[str, ...], layout: ActionLayout = DELTA_END_EFFECTOR
    ) -> None:
        check_safety_limits(limits)
        self.layout = check_action_layout(layout, layout.size if isinstance(layout, ActionLayout) else 0)
        missing = [name for name in joint_names if name not in limits.joint_limits]
        unknown = [name for name in limits.joint_limits if name not in joint_names]
        if missing or unknown:
            raise SafetyConfigError(
                f"safety.joint_limits must give [low, high] for every joint of the robot {list(joint_names)}; "
                f"missing: {missing}, unknown: {unknown}. Add them to the robot's config"
            )
        bounds = np.array([limits.joint_limits[name] for name in joint_names], dtype=np.float64).reshape(-1, 2)
        self.limits = limits
        self.joint_names = joint_names
        self.joint_low, self.joint_high = bounds[:, 0], bounds[:, 1]
        self.action_dim = self.layout.size
        self.counts: Counter[str] = Counter()
        self.invalid_streak = 0
        self.recent_invalid: deque[bool] = deque(maxlen=4 * limits.max_invalid_actions)

    def forget_invalid(self) -> None:
        """Start counting refused actions afresh (after the operator resumes)."""
        self.invalid_streak = 0
        self.recent_invalid.clear()

    def count(self, event: str) -> None:
        self.counts[event] += 1

    def joints_outside(self, joints: np.ndarray | None) -> list[str]:
        """Names of measured joints outside their limits (a NaN reading counts as outside)."""
        if joints is None or not len(self.joint_names):
            return []
        joints = np.asarray(joints, dtype=np.float64)
        inside = (joints >= self.joint_low) & (joints <= self.joint_high)
        return [name for name, ok in zip(self.joint_names, inside, strict=True) if not ok]

    def filter(self, action: np.ndarray, end_effector_xyz: np.ndarray) -> FilteredAction:
        """The action clipped to the limits, or None with the reason; events are counted here."""
        try:
            array = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError):
            array = np.zeros(0)
        if array.shape != (self.action_dim,):
            events = ["bad_dimension"]
        elif not np.all(np.isfinite(array)):
            events = ["non_finite"]
        else:
            self.invalid_streak = 0
            self.recent_invalid.append(False)
            clipped = clip_delta_action(array, np.asarray(end_effector_xyz, dtype=np.float64), self.limits, self.layout)
            events = ["clipped"] if clipped.clipped else []
            for event in events:
                self.count(event)
            return FilteredAction(clipped.action, events)
        self.invalid_streak += 1
        self.recent_invalid.append(True)
        for event in events:
            self.count(event)
        return FilteredAction(None, events)

    def clip(self, action: np.ndarray, end_effector_xyz: np.ndarray) -> np.ndarray:
        """``action`` (one the robot made, such as its hold) within the limits; nothing is counted."""
        return clip_delta_action(action, end_effector_xyz, self.limits, self.layout).action

    def step_towards(self, action: np.ndarray, target_xyz: np.ndarray, end_effector_xyz: np.ndarray) -> np.ndarray:
        """``action`` with its translation moving the end effector towards ``target_xyz`` (metres), within the
        per-step and workspace limits (the safe stop's move to the rest position)."""
        command = np.array(action, dtype=np.float64)
        offset = np.asarray(target_xyz, dtype=np.float64) - np.asarray(end_effector_xyz, dtype=np.float64)
        command[list(self.layout.translation)] = offset / self.layout.metres_per_unit
        return self.clip(command, end_effector_xyz)

    def too_many_invalid(self) -> str | None:
        """The safe-stop reason once ``max_invalid_actions`` actions in a row, or half of the recent ones,
        were refused; else None."""
        fix = "check the policy's output decoding, then resume"
        if self.invalid_streak >= self.limits.max_invalid_actions:
            return f"the policy sent {self.invalid_streak} invalid actions in a row (NaN/inf or the wrong size); {fix}"
        refused, window = sum(self.recent_invalid), self.recent_invalid.maxlen or 0
        if refused >= window // 2:
            return f"the policy sent {refused} invalid actions of its last {window} (NaN/inf or the wrong size); {fix}"
        return None


@dataclass
class MeasuredCheck:
    events: list[str]  # workspace_exit / overspeed this tick
    restrain: bool  # send the robot's return-to-workspace hold instead of the policy's action
    stop_reason: str | None  # the violation persists: safe stop


class MeasuredStateMonitor:
    """Checks the MEASURED end effector each tick: inside the workspace box (+ ``workspace_tolerance_m``)
    and no faster than ``max_speed_m_s`` (from consecutive poses). ``measured_violation_ticks`` violation
    ticks without as many clean ticks in between end in a safe stop (default 1: at once, like a robot
    controller's protective stop); before that, a violating tick restrains the robot (the daemon sends a
    hold that steps back into the box). Commanded clipping alone cannot catch these: a rotation-only
    command can carry the end effector out of the box."""

    def __init__(self, limits: SafetyLimits, period_s: float) -> None:
        check_safety_limits(limits)
        self.limits = limits
        self.period_s = period_s
        self.box_low = np.asarray(limits.workspace_min, dtype=np.float64)
        self.box_high = np.asarray(limits.workspace_max, dtype=np.float64)
        self.low = self.box_low - limits.workspace_tolerance_m  # what the measured pose may reach
        self.high = self.box_high + limits.workspace_tolerance_m
        self.counts: Counter[str] = Counter()  # incidents (a run of violating ticks counts once)
        self.reset()

    def reset(self) -> None:
        """Forget the history (a new episode, an operator's resume). A pose outside the box right after
        this is stepped back in (restrained, not stopped) as long as it keeps getting closer."""
        self._previous: tuple[np.ndarray, float] | None = None
        self._violations = 0
        self._clean = 0
        self._violating: set[str] = set()
        self._returning = math.inf  # started or resumed outside the box: its distance while stepping back in

    def check(self, end_effector_xyz: np.ndarray | None, now: float) -> MeasuredCheck:
        if end_effector_xyz is None:
            return MeasuredCheck([], False, None)
        position = np.asarray(end_effector_xyz, dtype=np.float64)
        events, details, returning = [], [], False
        if not np.all(np.isfinite(position)):
            events.append("workspace_exit")
            details.append(f"the measured end effector is not finite ({position.tolist()})")
        else:
            beyond = np.maximum(self.low - position, 0.0) + np.maximum(position - self.high, 0.0)
            distance = float(np.linalg.norm(beyond))
            returning = 0 < distance < self._returning + 1e-4  # still coming back in since the reset
            self._returning = distance if returning else -math.inf  # once in (or moving away), no more grace
            if distance > 0:
                outside = np.maximum(self.box_low - position, 0.0) + np.maximum(position - self.box_high, 0.0)
                events.append("workspace_exit")
                details.append(
                    f"end effector measured at {np.round(position, 3).tolist()}, "
                    f"{100 * float(np.linalg.norm(outside)):.1f} cm outside the workspace box "
                    f"(tolerance {100 * self.limits.workspace_tolerance_m:.1f} cm)"
                )
            if self._previous is not None:
                last_position, last_time = self._previous
                speed = float(np.linalg.norm(position - last_position)) / max(now - last_time, self.period_s)
                if speed > self.limits.max_speed_m_s:
                    events.append("overspeed")
                    details.append(f"end effector measured at {speed:.2f} m/s > {self.limits.max_speed_m_s} m/s")
            self._previous = (position, now)
        for event in set(events) - self._violating:
            self.counts[event] += 1
        self._violating = set(events)
        if not events:
            self._clean += 1
            if self._clean >= self.limits.measured_violation_ticks:
                self._violations = 0
            return MeasuredCheck([], False, None)
        self._clean = 0
        if returning and events == ["workspace_exit"]:
            return MeasuredCheck(events, True, None)  # stepped back into the box, not counted towards a stop
        self._violations += 1
        stop = None
        if self._violations >= self.limits.measured_violation_ticks:
            ticks = f" ({self._violations} ticks)" if self._violations > 1 else ""
            stop = "; ".join(details) + f"{ticks}; check the policy and the arm, then resume"
        return MeasuredCheck(events, True, stop)
