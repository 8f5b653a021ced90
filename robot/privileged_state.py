"""Simulator truth on the wire, so the scripted expert can run in the policy server.

**Decision:** the MuJoCo scripted expert needs privileged state (object poses, the drawer handle),
which a camera image does not give. The simulated robot, when made with ``privileged=True``, adds it
to every observation as plain arrays and strings (:func:`privileged_observation`); the daemon
forwards it; the server's scripted policy rebuilds the expert's view from it (:func:`truth_from_wire`)
and drives an unchanged :class:`envs.mujoco.experts.ScriptedExpert`. The expert thus always acts on
the true state of the very simulation the daemon drives (no shadow simulation that could drift),
and a real robot, which has no such state, is refused by the scripted policy with a clear message.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from data_tools.errors import UserFacingError


class MissingPrivilegedStateError(UserFacingError, ValueError):
    """An observation without the simulator truth the scripted expert needs."""


class CommittedActionsError(UserFacingError, ValueError):
    """An observation whose ``committed_actions`` is not an (n, action_dim) array of finite floats."""


def privileged_observation(env: Any) -> dict[str, Any]:
    """The truth of a ``TabletopEnv`` episode as wire-friendly values."""
    truth = env.privileged_state()
    task_state = truth["task_state"]
    return {
        "task": task_state.task,
        "instruction": task_state.instruction,
        "roles": dict(task_state.roles),
        "objects": {
            name: {"position": position.astype(np.float64), "rotation": rotation.astype(np.float64)}
            for name, (position, rotation) in truth["objects"].items()
        },
        "ee_position": truth["ee_position"].astype(np.float64),
        "ee_rotation": truth["ee_rotation"].astype(np.float64),
        "gripper_opening": float(truth["gripper_opening"]),
        "drawer_handle": np.asarray(truth["drawer_handle"], dtype=np.float64),
        "drawer_opening": float(truth["drawer_opening"]),
        "joint_positions": truth["joint_positions"].astype(np.float64),
    }


def truth_from_wire(privileged: Any) -> dict[str, Any]:
    """The ``env.privileged_state()`` dict the scripted expert reads, rebuilt from :func:`privileged_observation`."""
    from envs.mujoco.tasks import TaskState

    try:
        objects = {
            name: (np.asarray(entry["position"], dtype=np.float64), np.asarray(entry["rotation"], dtype=np.float64))
            for name, entry in privileged["objects"].items()
        }
        task_state = TaskState(
            task=str(privileged["task"]),
            instruction=str(privileged["instruction"]),
            placements=dict.fromkeys(objects, (0.0, 0.0, 0.0)),
            roles={str(k): str(v) for k, v in privileged["roles"].items()},
        )
        return {
            "task_state": task_state,
            "ee_position": np.asarray(privileged["ee_position"], dtype=np.float64),
            "ee_rotation": np.asarray(privileged["ee_rotation"], dtype=np.float64).reshape(3, 3),
            "gripper_opening": float(privileged["gripper_opening"]),
            "objects": objects,
            "drawer_handle": np.asarray(privileged["drawer_handle"], dtype=np.float64),
            "drawer_opening": float(privileged["drawer_opening"]),
            "joint_positions": np.asarray(privileged["joint_positions"], dtype=np.float64),
        }
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        raise MissingPrivilegedStateError(
            f"the observation's 'privileged' entry is incomplete ({error!r}); the scripted expert needs the "
            "simulated robot's truth: use the simulated robot with privileged: true"
        ) from None


class _ObservedEnv:
    """What ``ScriptedExpert`` needs of an env: its action mode and the latest privileged state."""

    action_mode = "delta_ee"

    def __init__(self) -> None:
        self.truth: dict[str, Any] | None = None

    def privileged_state(self) -> dict[str, Any]:
        assert self.truth is not None
        return self.truth


HELD_PHASES = ("lift", "carry", "lower")  # pick_place / stack phases in which the cube moves with the hand
HAND_SPEED_M_S = 1.1  # the tabletop arm's hand speed when the servos are saturated (measured at 50 Hz)
HAND_TIME_CONSTANT_S = 0.033  # the hand covers 1 - exp(-period / this) of a commanded step in one period


def predict_truth(truth: dict[str, Any], action: np.ndarray, phase: str, control_hz: float) -> dict[str, Any]:
    """The simulator truth one control tick after ``action``, by kinematics: the hand covers the part of the
    commanded step its servos make in one period (a first-order lag, capped at its top speed), a held cube
    moves with it, a pulled drawer follows the hand, a pushed cube follows the fingers. Good for a few
    ticks: every chunk starts again from the real truth."""
    task_state = truth["task_state"]
    period = 1.0 / control_hz
    translation = np.asarray(action[:3], dtype=np.float64) * (1.0 - np.exp(-period / HAND_TIME_CONSTANT_S))
    length, top = float(np.linalg.norm(translation)), HAND_SPEED_M_S * period
    if length > top:
        translation = translation * (top / length)
    predicted = dict(truth)
    predicted["ee_position"] = truth["ee_position"] + translation
    predicted["ee_rotation"] = euler_matrix(np.asarray(action[3:6], dtype=np.float64)) @ truth["ee_rotation"]
    objects = dict(truth["objects"])
    roles = task_state.roles
    if task_state.task in ("pick_place", "stack") and phase in HELD_PHASES:
        position, rotation = objects[roles["object"]]
        objects[roles["object"]] = (position + translation, rotation)
    elif task_state.task == "push" and phase == "push":
        position, rotation = objects[roles["object"]]
        offset = objects[roles["target"]][0][:2] - position[:2]
        direction = offset / max(float(np.linalg.norm(offset)), 1e-6)
        moved = max(0.0, float(np.dot(translation[:2], direction)))
        objects[roles["object"]] = (position + np.array([*(direction * moved), 0.0]), rotation)
    elif task_state.task == "open_drawer" and phase == "pull":
        pulled = min(0.0, float(translation[1]))
        predicted["drawer_handle"] = truth["drawer_handle"] + np.array([0.0, pulled, 0.0])
        predicted["drawer_opening"] = truth["drawer_opening"] - pulled
    predicted["objects"] = objects
    return predicted


def euler_matrix(rpy: np.ndarray) -> np.ndarray:
    from envs.mujoco.controller import euler_to_matrix

    return euler_to_matrix(rpy)


def committed_actions(observation: dict[str, Any], action_dim: int) -> np.ndarray:
    """The observation's ``committed_actions``: what the client runs from the observation's tick on while
    it waits for the reply, (n, action_dim) finite floats; (0, action_dim) when the client sent none."""
    committed = observation.get("committed_actions")
    if committed is None:
        return np.zeros((0, action_dim))
    if (
        not isinstance(committed, np.ndarray)
        or committed.ndim != 2
        or committed.shape[1] != action_dim
        or committed.dtype.kind != "f"
        or not np.isfinite(committed).all()
    ):
        shape = getattr(committed, "shape", type(committed).__name__)
        raise CommittedActionsError(
            f"observation['committed_actions'] is {shape}; send a finite float array of shape (n, {action_dim}) "
            "holding the actions the robot runs while this request is answered, or leave it out"
        )
    return committed


class ObservedScriptedExpert:
    """The tabletop ``ScriptedExpert`` acting on the truth carried by each observation (Policy protocol).

    With ``chunk_length`` > 1 it answers a chunk: the expert run ahead on the truth predicted tick by
    tick (:func:`predict_truth`), for clients that run chunks while the next one is computed (a slow
    link, a loaded server). The expert's phase is remembered for every tick of the chunk, and an
    observation that carries its ``control_tick`` (the robot daemon sends it) restarts from the phase
    planned for that tick: the ticks the client skipped or never ran are not counted as done."""

    def __init__(self, chunk_length: int = 1, control_hz: float = 10.0) -> None:
        from envs.mujoco.experts import ScriptedExpert

        if chunk_length < 1:
            raise ValueError(f"chunk_length={chunk_length}; a chunk holds at least one action")
        self.chunk_length = chunk_length
        self.control_hz = control_hz
        self._env = _ObservedEnv()
        self.expert = ScriptedExpert(self._env)  # type: ignore[arg-type]
        if chunk_length > 1:  # planned open loop: no step larger than the hand makes in one tick
            self.expert.max_translation = min(self.expert.max_translation, HAND_SPEED_M_S / control_hz)
        self._planned_phases: dict[int, tuple[str, int]] = {}  # control tick -> expert phase before acting

    expert_action_dim = 7

    def reset(self, task: dict[str, Any]) -> None:
        self.expert.reset(task)
        self._planned_phases.clear()

    def act(self, observation: dict[str, Any]) -> np.ndarray:
        privileged = observation.get("privileged")
        if not isinstance(privileged, dict):
            raise MissingPrivilegedStateError(
                "the scripted expert needs simulator truth in observation['privileged']; it works only with the "
                "simulated robot made with privileged: true (robot.args.privileged in the daemon config)"
            )
        truth = truth_from_wire(privileged)
        tick = observation.get("action_step")
        tick = tick if isinstance(tick, int) and not isinstance(tick, bool) else None
        if tick is not None and tick in self._planned_phases:
            self.expert.phase, self.expert.phase_steps = self._planned_phases[tick]
        self._planned_phases.clear()
        committed = committed_actions(observation, self.expert_action_dim)
        actions = []
        for step in range(max(self.chunk_length, len(committed) + 1)):
            if tick is not None:
                self._planned_phases[tick + step] = (self.expert.phase, self.expert.phase_steps)
            self._env.truth = truth
            action = self.expert.act(observation)  # also when committed: the expert's phase follows the ticks
            if step < len(committed):
                action = committed[step].astype(np.float32)
            actions.append(action)
            truth = predict_truth(truth, action, self.expert.phase, self.control_hz)
        if tick is not None:
            self._planned_phases[tick + len(actions)] = (self.expert.phase, self.expert.phase_steps)
        if len(committed):  # the ticks before the reply can arrive run the committed actions: answer after them
            return np.stack(actions)
        return actions[0] if self.chunk_length == 1 else np.stack(actions)
