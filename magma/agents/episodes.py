"""Run a policy over tasks of an environment: one episode per evaluation state, success per task,
an mp4 of each episode and a JSON line per episode in the output directory."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_tools.video import write_mp4
from magma.policies import Policy


@dataclass
class EpisodeResult:
    task: str
    state_index: int
    instruction: str
    success: bool
    steps: int
    seconds: float
    invalid_outputs: int = 0
    video: str | None = None


def run_episode(env: Any, policy: Policy, task: str, state_index: int, video_path: Path | None, fps: float):
    """One episode from evaluation state ``state_index``; the policy sees the env through ``reset``'s
    task dict (``instruction``, ``task``, ``state_index`` and ``env`` for privileged scripted experts)."""
    started = time.perf_counter()
    observation, info = env.reset(seed=state_index, options={"state_index": state_index})
    invalid_before = getattr(policy, "invalid_outputs", 0)
    policy.reset(
        {"instruction": observation["instruction"], "task": task, "state_index": state_index, "env": env.unwrapped}
    )
    frames = [observation["image"]]
    steps, success = 0, False
    while True:
        observation, _, terminated, truncated, info = env.step(policy.act(observation))
        steps += 1
        frames.append(observation["image"])
        if terminated or truncated:
            success = bool(info.get("success", False))
            break
    video = str(write_mp4(frames, video_path, fps)) if video_path is not None else None
    return EpisodeResult(
        task=task,
        state_index=state_index,
        instruction=str(observation["instruction"]),
        success=success,
        steps=steps,
        seconds=time.perf_counter() - started,
        invalid_outputs=getattr(policy, "invalid_outputs", 0) - invalid_before,
        video=video,
    )


def run_suite(
    make_env: Callable[[str], Any],
    make_policy: Callable[[Any, str], Policy],
    tasks: list[str],
    episodes: int,
    out_dir: Path,
    videos: bool = True,
    fps: float = 10.0,
    on_episode: Callable[[EpisodeResult], None] | None = None,
) -> list[EpisodeResult]:
    """``episodes`` episodes per task (evaluation states 0..episodes-1); results.jsonl in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    with (out_dir / "results.jsonl").open("a") as log:
        for task in tasks:
            env = make_env(task)
            policy = make_policy(env, task)
            try:
                for state_index in range(episodes):
                    video = out_dir / "videos" / f"{task}-{state_index:03d}.mp4" if videos else None
                    if video is not None:
                        video.parent.mkdir(parents=True, exist_ok=True)
                    result = run_episode(env, policy, task, state_index, video, fps)
                    results.append(result)
                    log.write(json.dumps(asdict(result)) + "\n")
                    log.flush()
                    if on_episode is not None:
                        on_episode(result)
            finally:
                env.close()
    return results


def success_table(results: list[EpisodeResult]) -> str:
    """Success rate per task and overall, as a text table."""
    lines = [f"{'task':<16} {'episodes':>8} {'success':>8} {'rate':>7} {'steps':>7}"]
    tasks = list(dict.fromkeys(result.task for result in results))
    for task in [*tasks, "all"]:
        rows = [r for r in results if task in ("all", r.task)]
        successes = sum(r.success for r in rows)
        mean_steps = float(np.mean([r.steps for r in rows])) if rows else 0.0
        rate = successes / len(rows) if rows else 0.0
        lines.append(f"{task:<16} {len(rows):>8} {successes:>8} {rate:>7.1%} {mean_steps:>7.1f}")
    return "\n".join(lines)
