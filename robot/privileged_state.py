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


class ObservedScriptedExpert:
    """The tabletop ``ScriptedExpert`` acting on the truth carried by each observation (Policy protocol)."""

    def __init__(self) -> None:
        from envs.mujoco.experts import ScriptedExpert

        self._env = _ObservedEnv()
        self.expert = ScriptedExpert(self._env)  # type: ignore[arg-type]

    def reset(self, task: dict[str, Any]) -> None:
        self.expert.reset(task)

    def act(self, observation: dict[str, Any]) -> np.ndarray:
        privileged = observation.get("privileged")
        if not isinstance(privileged, dict):
            raise MissingPrivilegedStateError(
                "the scripted expert needs simulator truth in observation['privileged']; it works only with the "
                "simulated robot made with privileged: true (robot.args.privileged in the daemon config)"
            )
        self._env.truth = truth_from_wire(privileged)
        return self.expert.act(observation)
