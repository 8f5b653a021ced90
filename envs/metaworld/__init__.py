"""Meta-World v3 (the ``metaworld`` package: 50 Sawyer-arm tasks, its benchmark sets, scripted experts
and success signal) as environments of this toolkit: image + state + instruction observations, seeded
resets, an upright camera of choice. Rendering is headless (``MUJOCO_GL=egl`` unless set).

Environment ids (``gymnasium.make(id, **kwargs)``; kwargs as ``envs.metaworld.env.MetaWorldEnv``):
``MetaWorld-v3`` (any task: ``task=`` or ``reset(options={"task": ...})``) and one per task,
``MetaWorld-<task>-v3`` (``MetaWorld-reach-v3``, ``MetaWorld-pick-place-v3``, ...). Task sets for runs are in
``envs.metaworld.benchmarks``. Importing this package imports neither MuJoCo nor Meta-World.
"""

from __future__ import annotations

import os

import gymnasium

from envs.metaworld.benchmarks import ALL_TASKS

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco

ENTRY_POINT = "envs.metaworld.env:MetaWorldEnv"
ENV_IDS: dict[str, str | None] = {"MetaWorld-v3": None, **{f"MetaWorld-{task}-v3": task for task in ALL_TASKS}}

for _env_id, _task in ENV_IDS.items():
    if _env_id not in gymnasium.registry:
        gymnasium.register(id=_env_id, entry_point=ENTRY_POINT, kwargs={} if _task is None else {"task": _task})
