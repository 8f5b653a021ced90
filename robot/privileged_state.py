"""Simulator truth on the wire, so the scripted expert can run in the policy server.

**Decision:** the MuJoCo scripted expert needs privileged state (object poses, the drawer handle),
which a camera image does not give. The simulated robot, when made with ``privileged=True``, adds it
to every observation as plain arrays and strings (:func:`privileged_observation`); the daemon
forwards it; the server's scripted policy rebuilds the expert's view from it (:func:`truth_from_wire`)
and drives an unchanged :class:`envs.mujoco.experts.ScriptedExpert`. The expert thus always acts on
the true state of the very simulation the daemon drives (no shadow simulation that could drift),
and a real robot, which has no such state, is refused by the scripted policy with a clear message.
Chunks planned ahead (a client behind latency) run the expert on a forecast that the tabletop's own
physics makes from each observation's truth (:class:`PhysicsForecast`), restarted at every observation.
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
        "motion": motion_observation(env),
    }


def motion_observation(env: Any) -> dict[str, Any]:
    """What :class:`PhysicsForecast` needs beyond the poses: the velocities of everything that moves, and
    each finger (the truth has only their sum). Sent as ``privileged["motion"]``."""
    from envs.mujoco.scene import ARM_JOINTS, FINGER_JOINTS

    data = env.data
    return {
        "joint_velocities": np.array([data.joint(name).qvel[0] for name in ARM_JOINTS], dtype=np.float64),
        "finger_positions": np.array([data.joint(name).qpos[0] for name in FINGER_JOINTS], dtype=np.float64),
        "finger_velocities": np.array([data.joint(name).qvel[0] for name in FINGER_JOINTS], dtype=np.float64),
        "drawer_velocity": float(data.joint("drawer_slide").qvel[0]),
        "object_velocities": {  # linear then angular; the push target is a mocap body and has none
            name: data.joint(f"{name}_joint").qvel.astype(np.float64)
            for name in env.task_state.placements
            if env.model.body(name).mocapid[0] < 0
        },
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
        truth = {
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
    truth["motion"] = _motion_from_wire(privileged.get("motion"), objects)
    return truth


class _ObservedEnv:
    """What ``ScriptedExpert`` needs of an env: its action mode and the latest privileged state."""

    action_mode = "delta_ee"

    def __init__(self) -> None:
        self.truth: dict[str, Any] | None = None

    def privileged_state(self) -> dict[str, Any]:
        assert self.truth is not None
        return self.truth


# Planned steps stay under this hand speed, below the daemon's safety clip (1.25 m/s per control period),
# so the robot runs exactly the actions the forecast stepped (an unclipped 5 cm step at 50 Hz would not be).
HAND_SPEED_M_S = 1.1


class PhysicsForecast:
    """The simulator truth a few ticks ahead: the tabletop's own physics and arm controller (a private
    ``TabletopEnv``), started from an observed truth and stepped with the planned actions.

    **Decision:** a chunk planned ahead is only as good as its forecast of the scene. Measured at 50 Hz,
    the hand's answer to a delta command depends on the arm's pose (a step along x also drops the hand a
    third as far; each joint servo lags with its own time constant) and on its velocity (it coasts a
    tenth of a step after the command stops), and a pushed cube slides and turns; a kinematic model of
    the hand and the objects missed grasps and pushes by millimetres, and a third of the 50 Hz episodes
    behind 220 ms failed. Stepping the very physics the robot runs, from the observed poses and
    ``motion``, reproduces the robot's next 25 ticks at 50 Hz within a micrometre, grasps and pushes
    included (measured on every task). It is no shadow simulation: every observation restarts it from
    the real truth, and it never runs further than one chunk ahead."""

    def __init__(self, control_hz: float) -> None:
        from envs.mujoco.env import TabletopEnv

        self.env = TabletopEnv(render=False, control_hz=control_hz)

    def start(self, truth: dict[str, Any]) -> None:
        """Put the forecast's scene where ``truth`` (from :func:`truth_from_wire`) says it is; without its
        ``motion`` (an older client), everything starts at rest and the fingers centred."""
        import mujoco

        from envs.mujoco.scene import ARM_JOINTS, FINGER_JOINTS
        from envs.mujoco.tasks import TaskState, apply_initial_state

        env, model, data = self.env, self.env.model, self.env.data
        observed = truth["task_state"]
        state = TaskState(
            task=observed.task,
            instruction=observed.instruction,
            placements=dict.fromkeys(truth["objects"], (0.0, 0.0, 0.0)),
            roles=observed.roles,
            arm_joints=tuple(float(angle) for angle in truth["joint_positions"]),
            drawer_opening=truth["drawer_opening"],
        )
        env.task_name, env.task_state, env.steps = state.task, state, 0
        apply_initial_state(model, data, state)  # the arm, the drawer; every object not on the table parked
        motion = truth["motion"] or {
            "joint_velocities": np.zeros(len(ARM_JOINTS)),
            "finger_positions": np.full(len(FINGER_JOINTS), truth["gripper_opening"] / len(FINGER_JOINTS)),
            "finger_velocities": np.zeros(len(FINGER_JOINTS)),
            "drawer_velocity": 0.0,
            "object_velocities": {},
        }
        for name, velocity in zip(ARM_JOINTS, motion["joint_velocities"], strict=True):
            data.joint(name).qvel[0] = velocity
        for name, position, velocity in zip(
            FINGER_JOINTS, motion["finger_positions"], motion["finger_velocities"], strict=True
        ):
            data.joint(name).qpos[0], data.joint(name).qvel[0] = position, velocity
        data.joint("drawer_slide").qvel[0] = motion["drawer_velocity"]
        for name, (position, rotation) in truth["objects"].items():
            if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, name) < 0:
                raise MissingPrivilegedStateError(
                    f"observation['privileged'] has an object {name!r} that the tabletop scene lacks; the policy "
                    "server and the simulated robot must run the same version of envs.mujoco"
                )
            quaternion = np.empty(4)
            mujoco.mju_mat2Quat(quaternion, rotation.flatten())
            mocap = model.body(name).mocapid[0]
            if mocap >= 0:
                data.mocap_pos[mocap], data.mocap_quat[mocap] = position, quaternion
                continue
            # The env reports poses from the kinematics of its last physics substep; since then the free joint
            # has moved on by one substep of its (current) velocity, as MuJoCo's integrator moves it (the
            # angular velocity of a free joint is in the body frame, as mju_quatIntegrate takes it).
            velocity = motion["object_velocities"].get(name)
            if velocity is not None:
                position = position + model.opt.timestep * velocity[:3]
                mujoco.mju_quatIntegrate(quaternion, velocity[3:], model.opt.timestep)
                data.joint(f"{name}_joint").qvel[:] = velocity
            data.joint(f"{name}_joint").qpos[:] = [*position, *quaternion]
        mujoco.mj_forward(model, data)
        # Likewise the hand pose the controller adds the next delta to is the last substep's, as observed.
        hand = model.site("ee").id
        data.site_xpos[hand], data.site_xmat[hand] = truth["ee_position"], truth["ee_rotation"].flatten()

    def step(self, action: np.ndarray) -> None:
        """One control tick of ``action`` (a 7-D delta end-effector action)."""
        self.env.step(action)

    def truth(self) -> dict[str, Any]:
        """The forecast scene as ``env.privileged_state()`` gives it."""
        return self.env.privileged_state()

    def close(self) -> None:
        self.env.close()


def _motion_from_wire(motion: Any, objects: dict[str, Any]) -> dict[str, Any] | None:
    """``privileged["motion"]`` (:func:`motion_observation`) checked, or None where the client sent none."""
    from envs.mujoco.scene import ARM_JOINTS, FINGER_JOINTS

    if motion is None:
        return None

    def vector(value: Any, size: int) -> np.ndarray:
        array = np.asarray(value, dtype=np.float64).reshape(-1)
        if array.shape != (size,) or not np.isfinite(array).all():
            raise ValueError(f"{value!r} is not {size} finite floats")
        return array

    try:
        velocities = motion["object_velocities"]
        unknown = set(velocities) - set(objects)
        if unknown:
            raise ValueError(f"object_velocities names {sorted(unknown)}, which are not in 'objects'")
        return {
            "joint_velocities": vector(motion["joint_velocities"], len(ARM_JOINTS)),
            "finger_positions": vector(motion["finger_positions"], len(FINGER_JOINTS)),
            "finger_velocities": vector(motion["finger_velocities"], len(FINGER_JOINTS)),
            "drawer_velocity": float(vector(motion["drawer_velocity"], 1)[0]),
            "object_velocities": {str(name): vector(value, 6) for name, value in velocities.items()},
        }
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        raise MissingPrivilegedStateError(
            f"observation['privileged']['motion'] is malformed ({error}); send what privileged_observation "
            "writes there, or leave it out (chunks are then forecast from a scene at rest)"
        ) from None


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

    With ``chunk_length`` > 1 it answers a chunk: the expert run ahead on the truth forecast tick by
    tick (:class:`PhysicsForecast`), for clients that run chunks while the next one is computed (a slow
    link, a loaded server). An observation's ``committed_actions`` (what the robot runs before the
    answer can arrive) are forecast first and answered as the chunk's prefix. The expert's phase is
    remembered for every tick of the chunk, and an observation that carries its ``action_step`` (the
    robot daemon sends it) restarts from the phase planned for that step: the steps the client skipped
    or never ran are not counted as done. With ``chunk_length`` 1 and nothing committed it is exactly the
    plain expert on the observed truth."""

    def __init__(self, chunk_length: int = 1, control_hz: float = 10.0) -> None:
        from envs.mujoco.experts import ScriptedExpert

        if chunk_length < 1:
            raise ValueError(f"chunk_length={chunk_length}; a chunk holds at least one action")
        self.chunk_length = chunk_length
        self.control_hz = control_hz
        self._env = _ObservedEnv()
        self.expert = ScriptedExpert(self._env)  # type: ignore[arg-type]
        if chunk_length > 1:  # planned open loop: no step the safety filter would clip (HAND_SPEED_M_S)
            self.expert.max_translation = min(self.expert.max_translation, HAND_SPEED_M_S / control_hz)
        self._planned_phases: dict[int, tuple[str, int]] = {}  # control tick -> expert phase before acting
        # built here, not on the first request, where its ~0.2 s would delay the first chunk
        self._forecast = PhysicsForecast(control_hz) if chunk_length > 1 else None

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
        committed = committed_actions(observation, self.expert_action_dim)
        length = max(self.chunk_length, len(committed) + 1)
        if length > 1:
            if self._forecast is None:
                self._forecast = PhysicsForecast(self.control_hz)
            self._forecast.start(truth)
        tick = observation.get("action_step")
        tick = tick if isinstance(tick, int) and not isinstance(tick, bool) else None
        if tick is not None and tick in self._planned_phases:
            self.expert.phase, self.expert.phase_steps = self._planned_phases[tick]
        self._planned_phases.clear()
        actions = []
        for step in range(length):
            if tick is not None:
                self._planned_phases[tick + step] = (self.expert.phase, self.expert.phase_steps)
            self._env.truth = truth
            action = self.expert.act(observation)  # also when committed: the expert's phase follows the ticks
            if step < len(committed):
                action = committed[step].astype(np.float32)
            actions.append(action)
            if step + 1 < length:
                assert self._forecast is not None
                self._forecast.step(action)
                truth = self._forecast.truth()
        if tick is not None:
            self._planned_phases[tick + len(actions)] = (self.expert.phase, self.expert.phase_steps)
        if len(committed):  # the ticks before the reply can arrive run the committed actions: answer after them
            return np.stack(actions)
        return actions[0] if self.chunk_length == 1 else np.stack(actions)
