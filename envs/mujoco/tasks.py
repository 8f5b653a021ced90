"""Tasks of the tabletop suite: language instructions, seeded initial states, success checks.

Each task (``reach``, ``push``, ``pick_place``, ``stack``, ``open_drawer``) samples which objects
are on the table, where (x, y, yaw), and which of them the instruction names (its colours), as
one :class:`TaskState`. ``evaluation_states(task)`` is a fixed list of such states (a constant
seed), as LIBERO fixes its initial states, so that success rates compare across policies.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import mujoco
import numpy as np

from data_tools.errors import UserFacingError
from envs.mujoco.scene import (
    ARM_JOINTS,
    BOWL_COLORS,
    CUBE_COLORS,
    CUBE_HALF_SIZE,
    FINGER_JOINTS,
    HOME_JOINT_POSITIONS,
    PLATE_COLORS,
    PLATE_HALF_HEIGHT,
    PLATE_RADIUS,
    parking_position,
    scene_objects,
)

EVALUATION_SEED = 20240611
EVALUATION_COUNT = 50

# Where objects may start (the arm reaches all of it with the hand pointing down).
WORKSPACE_X = (0.32, 0.6)
WORKSPACE_Y = (-0.24, 0.18)
FOOTPRINT = {"cube": 0.05, "plate": PLATE_RADIUS, "bowl": PLATE_RADIUS, "target": 0.05}
CLEARANCE = 0.02

REACH_DISTANCE = 0.05  # end effector to the cube's centre
PUSH_DISTANCE = 0.04  # cube centre to the target's centre, in the plane
DRAWER_OPEN_DISTANCE = 0.1
BOWL_FLOOR_HEIGHT = 0.008


class UnknownTaskError(UserFacingError, KeyError):
    """A task name that is not in :data:`TASKS`."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


@dataclass(frozen=True)
class TaskState:
    """One initial state: the objects on the table as ``name -> (x, y, yaw)``, the roles the
    instruction gives (``"object"``, ``"receptacle"``, ``"base"``, ``"target"``), and the arm."""

    task: str
    instruction: str
    placements: dict[str, tuple[float, float, float]]
    roles: dict[str, str]
    arm_joints: tuple[float, ...] = HOME_JOINT_POSITIONS
    drawer_opening: float = 0.0


@dataclass(frozen=True)
class Task:
    """A task: its name, what it asks in general, and how to sample a state and check success."""

    name: str
    description: str
    sample: Callable[[np.random.Generator], TaskState] = field(repr=False)
    check: Callable[[mujoco.MjModel, mujoco.MjData, TaskState], bool] = field(repr=False)


# ---- sampling ---------------------------------------------------------------------------------


def _kind(name: str) -> str:
    return name.rsplit("_", 1)[-1]


def _color(name: str) -> str:
    return name.rsplit("_", 1)[0]


def _place(
    rng: np.random.Generator,
    names: list[str],
    fixed: dict[str, tuple[float, float]] | None = None,
    y_max: float = WORKSPACE_Y[1],
) -> dict[str, tuple[float, float, float]]:
    """Non-overlapping random placements (rejection sampling) in the workspace, after ``fixed`` ones."""
    placed: dict[str, tuple[float, float, float]] = {n: (x, y, 0.0) for n, (x, y) in (fixed or {}).items()}
    for name in names:
        radius = FOOTPRINT[_kind(name)]
        for _ in range(1000):
            x = rng.uniform(WORKSPACE_X[0] + radius * 0.5, WORKSPACE_X[1])
            y = rng.uniform(WORKSPACE_Y[0] + radius * 0.5, y_max - radius * 0.5)
            if all(
                np.hypot(x - px, y - py) > radius + FOOTPRINT[_kind(other)] + CLEARANCE
                for other, (px, py, _) in placed.items()
            ):
                yaw = rng.uniform(-0.5, 0.5) if _kind(name) == "cube" else 0.0
                placed[name] = (float(x), float(y), float(yaw))
                break
        else:  # pragma: no cover - the workspace is large enough for every task's objects
            raise RuntimeError(f"could not place {name} without overlap")
    return placed


def _arm(rng: np.random.Generator) -> tuple[float, ...]:
    return tuple(float(q) for q in np.asarray(HOME_JOINT_POSITIONS) + rng.uniform(-0.05, 0.05, len(ARM_JOINTS)))


def _cubes(rng: np.random.Generator, count: int) -> list[str]:
    return [f"{c}_cube" for c in rng.permutation(CUBE_COLORS)[:count]]


def _sample_reach(rng: np.random.Generator) -> TaskState:
    cubes = _cubes(rng, 3)
    return TaskState("reach", f"reach the {_color(cubes[0])} cube", _place(rng, cubes), {"object": cubes[0]}, _arm(rng))


def _distance_to_segment(point: np.ndarray, start: np.ndarray, end: np.ndarray) -> float:
    along = np.clip(np.dot(point - start, end - start) / np.dot(end - start, end - start), 0.0, 1.0)
    return float(np.linalg.norm(point - (start + along * (end - start))))


def _sample_push(rng: np.random.Generator) -> TaskState:
    cube, distractor = _cubes(rng, 2)
    while True:  # a cube, and a target 10-16 cm away in some direction, both in the workspace
        x, y = rng.uniform(*WORKSPACE_X), rng.uniform(*WORKSPACE_Y)
        angle, distance = rng.uniform(-np.pi, np.pi), rng.uniform(0.1, 0.16)
        tx, ty = x + distance * np.cos(angle), y + distance * np.sin(angle)
        # the pusher starts 9 cm behind the cube: keep that spot clear of the drawer's handle
        behind_y = y - 0.09 * np.sin(angle)
        if WORKSPACE_X[0] <= tx <= WORKSPACE_X[1] and WORKSPACE_Y[0] <= ty <= WORKSPACE_Y[1] and behind_y < 0.16:
            break
    start, end = np.array([x, y]) - 0.12 * np.array([np.cos(angle), np.sin(angle)]), np.array([tx, ty])
    while True:  # the distractor stays well away from the whole pushing path
        placed = _place(rng, [distractor], fixed={cube: (float(x), float(y)), "target": (float(tx), float(ty))})
        if _distance_to_segment(np.array(placed[distractor][:2]), start, end) > 0.1:
            break
    placed[cube] = (float(x), float(y), float(rng.uniform(-0.5, 0.5)))
    instruction = f"push the {_color(cube)} cube to the green target"
    return TaskState("push", instruction, placed, {"object": cube, "target": "target"}, _arm(rng))


def _sample_pick_place(rng: np.random.Generator) -> TaskState:
    cubes = _cubes(rng, 2)
    receptacles = [f"{c}_plate" for c in PLATE_COLORS] + [f"{c}_bowl" for c in BOWL_COLORS]
    chosen = [str(r) for r in rng.permutation(receptacles)[:2]]
    placed = _place(rng, [*chosen, *cubes])
    receptacle = chosen[0]
    instruction = f"put the {_color(cubes[0])} cube {'on' if _kind(receptacle) == 'plate' else 'in'} the " + (
        f"{_color(receptacle)} {_kind(receptacle)}"
    )
    roles = {"object": cubes[0], "receptacle": receptacle}
    return TaskState("pick_place", instruction, placed, roles, _arm(rng))


def _sample_stack(rng: np.random.Generator) -> TaskState:
    cubes = _cubes(rng, 3)
    instruction = f"stack the {_color(cubes[0])} cube on the {_color(cubes[1])} cube"
    return TaskState("stack", instruction, _place(rng, cubes), {"object": cubes[0], "base": cubes[1]}, _arm(rng))


def _sample_open_drawer(rng: np.random.Generator) -> TaskState:
    placed = _place(rng, _cubes(rng, 2), y_max=0.02)  # out of the way of the opening drawer
    opening = float(rng.uniform(0.0, 0.02))
    return TaskState("open_drawer", "open the drawer", placed, {"drawer": "drawer"}, _arm(rng), opening)


# ---- success checks ---------------------------------------------------------------------------


def _touches_fingers(model: mujoco.MjModel, data: mujoco.MjData, body_name: str) -> bool:
    body = model.body(body_name).id
    fingers = {model.geom("finger_left_pad").id, model.geom("finger_right_pad").id}
    for contact in data.contact[: data.ncon]:
        pair = (contact.geom1, contact.geom2)
        if any(g in fingers for g in pair) and any(model.geom_bodyid[g] == body for g in pair):
            return True
    return False


def _check_reach(model: mujoco.MjModel, data: mujoco.MjData, state: TaskState) -> bool:
    distance = np.linalg.norm(data.site("ee").xpos - data.body(state.roles["object"]).xpos)
    return bool(distance < REACH_DISTANCE)


def _check_push(model: mujoco.MjModel, data: mujoco.MjData, state: TaskState) -> bool:
    cube = data.body(state.roles["object"]).xpos
    target = data.body(state.roles["target"]).xpos
    return bool(np.linalg.norm(cube[:2] - target[:2]) < PUSH_DISTANCE and cube[2] < CUBE_HALF_SIZE + 0.01)


def _check_pick_place(model: mujoco.MjModel, data: mujoco.MjData, state: TaskState) -> bool:
    cube_name, receptacle = state.roles["object"], state.roles["receptacle"]
    cube, base = data.body(cube_name).xpos, data.body(receptacle).xpos
    floor = 2 * PLATE_HALF_HEIGHT if _kind(receptacle) == "plate" else BOWL_FLOOR_HEIGHT
    resting = base[2] + floor + CUBE_HALF_SIZE - 0.01 < cube[2] < base[2] + floor + CUBE_HALF_SIZE + 0.015
    inside = np.linalg.norm(cube[:2] - base[:2]) < PLATE_RADIUS - CUBE_HALF_SIZE
    return bool(resting and inside and not _touches_fingers(model, data, cube_name))


def _check_stack(model: mujoco.MjModel, data: mujoco.MjData, state: TaskState) -> bool:
    top_name = state.roles["object"]
    top, base = data.body(top_name).xpos, data.body(state.roles["base"]).xpos
    aligned = np.linalg.norm(top[:2] - base[:2]) < CUBE_HALF_SIZE * 1.1
    on_top = abs(top[2] - base[2] - 2 * CUBE_HALF_SIZE) < 0.01 and base[2] < CUBE_HALF_SIZE + 0.01
    return bool(aligned and on_top and not _touches_fingers(model, data, top_name))


def _check_open_drawer(model: mujoco.MjModel, data: mujoco.MjData, state: TaskState) -> bool:
    return bool(data.joint("drawer_slide").qpos[0] >= DRAWER_OPEN_DISTANCE)


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task("reach", "move the gripper to the named cube", _sample_reach, _check_reach),
        Task("push", "push the named cube onto the target disc", _sample_push, _check_push),
        Task("pick_place", "put the named cube on a plate or in a bowl", _sample_pick_place, _check_pick_place),
        Task("stack", "stack one named cube on another", _sample_stack, _check_stack),
        Task("open_drawer", "pull the drawer open by its handle", _sample_open_drawer, _check_open_drawer),
    )
}


def get_task(name: str) -> Task:
    """The task called ``name``, or an :class:`UnknownTaskError` that lists the known names."""
    if name not in TASKS:
        raise UnknownTaskError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    return TASKS[name]


def sample_initial_state(task: str, rng: np.random.Generator) -> TaskState:
    """A random initial state of ``task`` drawn from ``rng``."""
    return get_task(task).sample(rng)


def evaluation_states(task: str, count: int = EVALUATION_COUNT) -> list[TaskState]:
    """The fixed evaluation set of ``task``: state ``i`` is the same on every machine and every call."""
    get_task(task)
    task_key = zlib.crc32(task.encode())
    return [sample_initial_state(task, np.random.default_rng([EVALUATION_SEED, task_key, i])) for i in range(count)]


def success(model: mujoco.MjModel, data: mujoco.MjData, state: TaskState) -> bool:
    """Whether the simulation in ``data`` satisfies the success condition of ``state``'s task."""
    return get_task(state.task).check(model, data, state)


def apply_initial_state(model: mujoco.MjModel, data: mujoco.MjData, state: TaskState) -> None:
    """Reset ``data`` and put the arm, the drawer and every object where ``state`` says (the rest parked)."""
    mujoco.mj_resetData(model, data)
    for i, obj in enumerate(scene_objects()):
        x, y, z = parking_position(i)
        yaw, lift = 0.0, {"cube": CUBE_HALF_SIZE, "plate": PLATE_HALF_HEIGHT, "bowl": 0.0, "target": 0.001}[obj.kind]
        z += lift
        if obj.name in state.placements:
            x, y, yaw = state.placements[obj.name]
            z = lift
        quat = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]
        if obj.kind == "target":
            mocap = model.body(obj.name).mocapid[0]
            data.mocap_pos[mocap] = (x, y, z)
            data.mocap_quat[mocap] = quat
        else:
            data.joint(f"{obj.name}_joint").qpos[:] = [x, y, z, *quat]
    for name, angle in zip(ARM_JOINTS, state.arm_joints, strict=True):
        data.joint(name).qpos[0] = angle
    for name in FINGER_JOINTS:
        data.joint(name).qpos[0] = 0.04
    data.joint("drawer_slide").qpos[0] = state.drawer_opening
    mujoco.mj_forward(model, data)


def drawer_handle_position(data: mujoco.MjData) -> np.ndarray:
    """Where the middle of the drawer's handle bar is now."""
    return data.site("drawer_handle").xpos.copy()
