"""The MuJoCo tabletop manipulation suite: an arm with a parallel gripper, cubes, plates, bowls and
a drawer, built from primitives (no downloads); tasks with language instructions and fixed
evaluation sets; scripted experts. Rendering is headless (``MUJOCO_GL=egl`` unless set).

Environment ids (``gymnasium.make(id, **kwargs)``; kwargs as ``TabletopEnv``):
``Tabletop-v0`` (any task, ``task=`` or ``reset(options={"task": ...})``), and one per task:
``TabletopReach-v0``, ``TabletopPush-v0``, ``TabletopPickPlace-v0``, ``TabletopStack-v0``,
``TabletopOpenDrawer-v0``. Importing this package does not import MuJoCo.
"""

from __future__ import annotations

import os

import gymnasium

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco

ENTRY_POINT = "envs.mujoco.env:TabletopEnv"
ENV_IDS: dict[str, str | None] = {
    "Tabletop-v0": None,
    "TabletopReach-v0": "reach",
    "TabletopPush-v0": "push",
    "TabletopPickPlace-v0": "pick_place",
    "TabletopStack-v0": "stack",
    "TabletopOpenDrawer-v0": "open_drawer",
}

for _env_id, _task in ENV_IDS.items():
    if _env_id not in gymnasium.registry:
        gymnasium.register(id=_env_id, entry_point=ENTRY_POINT, kwargs={} if _task is None else {"task": _task})
