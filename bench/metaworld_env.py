"""Step cost of ``MetaWorldEnv`` against Meta-World's own environment doing the same work.

Figures (one JSON line each on stdout; progress on stderr):

* ``metaworld_env_steps_per_s/camera128``: ``MetaWorldEnv.step`` with the corner2 camera at 128 x 128 (the
  Meta-World step, the upright frame, the observation dict), against Meta-World's raw env of the same task
  (``Meta-World/MT1``'s unwrapped env, rendering corner2 at 128 x 128 itself): ``step`` + ``render()``.
  ``ratio`` is raw / ours: our overhead factor, target <= 1.15.
* ``metaworld_env_steps_per_s/state_only``: the same without rendering, against ``step`` of the raw Meta-World
  env inside a second ``MetaWorldEnv`` (the same class, the same placement from the same seed).

Both sides take the same wandering actions from the same reset; ours and raw alternate in rounds in the same
process; each figure is the best round. Rendering runs on whatever OpenGL ``MUJOCO_GL`` gives (EGL: the GPU
when there is one, else software, where shadows dominate the frame time).

Usage: ``python bench/metaworld_env.py [--task reach] [--steps 100] [--rounds 3] [--quick]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout without an installed package
    sys.path.insert(0, str(ROOT))

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import report  # noqa: E402  (bench/report.py)

from envs.metaworld.env import MetaWorldEnv  # noqa: E402

IMAGE_SIZE = 128
CAMERA = "corner2"


def wandering_actions(steps: int) -> np.ndarray:
    """Hand motions that wander around the start and a gripper that opens and closes."""
    t = np.arange(steps)[:, None]
    motion = 0.8 * np.sin(t * np.array([0.31, 0.23, 0.17]))
    gripper = np.sign(np.sin(t * 0.2))
    return np.concatenate([motion, gripper], axis=1).astype(np.float32)


def ours_steps_per_s(env: MetaWorldEnv, actions: np.ndarray) -> float:
    env.reset(seed=0)
    started = time.perf_counter()
    for action in actions:
        env.step(action)
    return len(actions) / (time.perf_counter() - started)


def raw_steps_per_s(raw: gym.Env, actions: np.ndarray, render: bool) -> float:
    if render:
        raw.reset()
    else:  # the raw env inside a MetaWorldEnv: placed by the same seed as ours
        raw.reset(seed=0)
        raw = raw.sim
    if render:
        raw.render()  # warm-up: the first render creates the GL context
    started = time.perf_counter()
    for action in actions:
        raw.step(action)
        if render:
            raw.render()
    return len(actions) / (time.perf_counter() - started)


def make_raw(task: str) -> gym.Env:
    """Meta-World's own env of ``task``, rendering ``CAMERA`` at ``IMAGE_SIZE`` itself."""
    import metaworld  # noqa: F401  (registers Meta-World/MT1)

    kwargs = {"render_mode": "rgb_array", "camera_name": CAMERA, "width": IMAGE_SIZE, "height": IMAGE_SIZE}
    env = gym.make("Meta-World/MT1", env_name=f"{task}-v3", seed=0, **kwargs)
    env.reset()  # its task-select wrapper gives the env a task (a placement); later resets keep it
    return env.unwrapped  # the raw Meta-World env, without wrappers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="reach")
    parser.add_argument("--steps", type=int, default=100, help="steps per round (at most 500, one episode)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="20 steps, 1 round (a smoke run)")
    args = parser.parse_args()
    steps, rounds = (20, 1) if args.quick else (min(args.steps, 500), args.rounds)
    warnings.filterwarnings("ignore", module="gymnasium")  # Meta-World's own spaces trip gymnasium's notes
    actions = wandering_actions(steps)

    ours_camera = MetaWorldEnv(task=args.task, image_size=IMAGE_SIZE, camera=CAMERA)
    ours_state = MetaWorldEnv(task=args.task, render=False)
    raw_camera, raw_state = make_raw(args.task), MetaWorldEnv(task=args.task, render=False)
    ours_steps_per_s(ours_camera, actions[:2])  # warm-up: GL context, scene
    best = {"ours_camera": 0.0, "raw_camera": 0.0, "ours_state": 0.0, "raw_state": 0.0}
    for round_index in range(rounds):
        best["ours_camera"] = max(best["ours_camera"], ours_steps_per_s(ours_camera, actions))
        best["raw_camera"] = max(best["raw_camera"], raw_steps_per_s(raw_camera, actions, render=True))
        best["ours_state"] = max(best["ours_state"], ours_steps_per_s(ours_state, actions))
        best["raw_state"] = max(best["raw_state"], raw_steps_per_s(raw_state, actions, render=False))
        report.log(
            "metaworld_env",
            f"round {round_index + 1}/{rounds}: " + ", ".join(f"{k} {v:.1f}/s" for k, v in best.items()),
        )
    for env in (ours_camera, ours_state, raw_camera, raw_state):
        env.close()

    report.emit(
        "metaworld_env_steps_per_s/camera128",
        best["ours_camera"],
        "steps/s",
        baseline=f"Meta-World's raw {args.task}-v3 env: step + render() of {CAMERA} at {IMAGE_SIZE}x{IMAGE_SIZE}",
        ratio=best["raw_camera"] / best["ours_camera"],
        baseline_value=round(best["raw_camera"], 3),
    )
    report.emit(
        "metaworld_env_steps_per_s/state_only",
        best["ours_state"],
        "steps/s",
        baseline=f"Meta-World's raw {args.task}-v3 env (same placement): step",
        ratio=best["raw_state"] / best["ours_state"],
        baseline_value=round(best["raw_state"], 3),
    )


if __name__ == "__main__":
    main()
