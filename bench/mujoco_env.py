"""Throughput of the MuJoCo tabletop environment against raw MuJoCo doing the same work.

Figures (one JSON line each on stdout; progress on stderr):

* ``mujoco_env_steps_per_s/camera128``: ``TabletopEnv.step`` with one 128 x 128 camera (IK,
  physics substeps, success check, the observation), against raw MuJoCo on the same model doing
  the same number of ``mj_step`` substeps and one ``Renderer.render`` per step. ``ratio`` is
  raw / env: the environment's overhead factor, target <= 1.15.
* ``mujoco_env_steps_per_s/state_only``: the same without rendering, against raw substeps alone.
* ``mujoco_env_steps_per_s/vector2``: ``gymnasium`` ``AsyncVectorEnv`` with 2 workers (one camera
  each), total env steps/s, against 1 worker; ``ratio`` is 2-worker / 1-worker throughput.

Env and raw runs alternate in rounds in the same process; each figure is the best round.

Usage: ``python bench/mujoco_env.py [--steps 200] [--rounds 3] [--quick]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout without an installed package
    sys.path.insert(0, str(ROOT))

import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
import report  # noqa: E402  (bench/report.py)

import envs.mujoco  # noqa: E402, F401  (registers the ids)
from envs.mujoco.env import TabletopEnv  # noqa: E402
from envs.mujoco.tasks import apply_initial_state  # noqa: E402

IMAGE_SIZE = 128


def wandering_actions(steps: int) -> np.ndarray:
    """Small delta actions that move the hand around its start and open and close the gripper."""
    t = np.arange(steps)[:, None]
    translation = 0.02 * np.sin(t * np.array([0.31, 0.23, 0.17]))
    gripper = np.sign(np.sin(t * 0.2))
    return np.concatenate([translation, np.zeros((steps, 3)), gripper], axis=1).astype(np.float32)


def env_steps_per_s(env: TabletopEnv, steps: int) -> float:
    env.reset(seed=0)
    actions = wandering_actions(steps)
    env.step(actions[0])  # warm-up (first render creates the GL context)
    started = time.perf_counter()
    for action in actions:
        env.step(action)
    return steps / (time.perf_counter() - started)


def raw_steps_per_s(env: TabletopEnv, steps: int, render: bool) -> float:
    """The same model, initial state and substeps in plain MuJoCo, with one render per step if asked."""
    model, data = env.model, mujoco.MjData(env.model)
    apply_initial_state(model, data, env.task_state)
    data.ctrl[:] = env.data.ctrl
    renderer = mujoco.Renderer(model, IMAGE_SIZE, IMAGE_SIZE) if render else None
    if renderer is not None:
        renderer.update_scene(data, camera="third_person")
        renderer.render()
    started = time.perf_counter()
    for _ in range(steps):
        mujoco.mj_step(model, data, nstep=env.substeps)
        if renderer is not None:
            renderer.update_scene(data, camera="third_person")
            renderer.render()
    elapsed = time.perf_counter() - started
    if renderer is not None:
        renderer.close()
    return steps / elapsed


def vector_steps_per_s(num_envs: int, steps: int) -> float:
    vector = gym.make_vec(
        "TabletopPickPlace-v0",
        num_envs=num_envs,
        vectorization_mode="async",
        vector_kwargs={"context": "spawn"},  # a fork would inherit this process's EGL contexts
        image_size=IMAGE_SIZE,
        cameras=("third_person",),
        max_steps=10**6,
    )
    try:
        vector.reset(seed=list(range(num_envs)))
        actions = wandering_actions(steps)
        vector.step(np.repeat(actions[:1], num_envs, axis=0))
        started = time.perf_counter()
        for action in actions:
            vector.step(np.repeat(action[None], num_envs, axis=0))
        return num_envs * steps / (time.perf_counter() - started)
    finally:
        vector.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="30 steps, 1 round (a smoke run)")
    args = parser.parse_args()
    steps, rounds = (30, 1) if args.quick else (args.steps, args.rounds)
    max_steps = 10**6

    camera_env = TabletopEnv(image_size=IMAGE_SIZE, cameras=("third_person",), max_steps=max_steps)
    state_env = TabletopEnv(render=False, max_steps=max_steps)
    best = {"env_camera": 0.0, "raw_camera": 0.0, "env_state": 0.0, "raw_state": 0.0}
    for round_index in range(rounds):
        best["env_camera"] = max(best["env_camera"], env_steps_per_s(camera_env, steps))
        best["raw_camera"] = max(best["raw_camera"], raw_steps_per_s(camera_env, steps, render=True))
        best["env_state"] = max(best["env_state"], env_steps_per_s(state_env, steps))
        best["raw_state"] = max(best["raw_state"], raw_steps_per_s(state_env, steps, render=False))
        report.log(
            "mujoco_env", f"round {round_index + 1}/{rounds}: " + ", ".join(f"{k} {v:.1f}/s" for k, v in best.items())
        )
    camera_env.close()
    state_env.close()

    substeps = camera_env.substeps
    report.emit(
        "mujoco_env_steps_per_s/camera128",
        best["env_camera"],
        "steps/s",
        baseline=f"raw mujoco: {substeps} mj_step substeps + 1 Renderer.render at {IMAGE_SIZE}x{IMAGE_SIZE}",
        ratio=best["raw_camera"] / best["env_camera"],
        baseline_value=round(best["raw_camera"], 3),
    )
    report.emit(
        "mujoco_env_steps_per_s/state_only",
        best["env_state"],
        "steps/s",
        baseline=f"raw mujoco: {substeps} mj_step substeps",
        ratio=best["raw_state"] / best["env_state"],
        baseline_value=round(best["raw_state"], 3),
    )
    one = max(vector_steps_per_s(1, steps) for _ in range(rounds))
    two = max(vector_steps_per_s(2, steps) for _ in range(rounds))
    report.emit(
        "mujoco_env_steps_per_s/vector2",
        two,
        "steps/s",
        baseline="AsyncVectorEnv with 1 worker",
        ratio=two / one,
        baseline_value=round(one, 3),
    )


if __name__ == "__main__":
    main()
