"""``agent run mujoco`` and ``agent run metaworld``: a robot policy over simulated manipulation tasks, one
episode per (task, episode index), through the one suite runner (``magma.evaluation.runner``): resumable,
parallel over worker threads (each with its own simulator), a success table per task, an mp4 per episode
and the HTML report.

Episode ``i`` of a task starts from a fixed state: the MuJoCo suite's evaluation state ``i``, Meta-World's
state for seed ``i`` (``envs.metaworld``). Success is the simulator's own signal (``info["success"]``).

A policy may answer one action (D,) per observation or a chunk (H, D) of them (a Magma model with
``action.chunk_length`` H, a served chunking policy): a chunk runs open loop for ``execute_steps`` of its H
steps (all of them by default), then the policy plans again on the observation it reached.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_tools.errors import UserFacingError
from data_tools.video import write_mp4
from magma.evaluation.results import EpisodeResult
from magma.evaluation.runner import Attempt, RunOptions, episode_units, run_suite
from magma.evaluation.task_failures import EpisodePhaseError
from magma.policies import Policy

SIM_ENVIRONMENTS = ("mujoco", "metaworld")
VIDEO_NAME = "episode.mp4"

SimPolicyFactory = Callable[[Any, str], Policy]


@dataclass
class SimRunSettings:
    """Everything that decides a run's results; ``--resume`` refuses a directory made with other settings."""

    env: str = "mujoco"
    tasks: list[str] = field(default_factory=list)
    episodes: int = 10
    policy: str = "scripted"
    checkpoint: str | None = None
    server: str | None = None
    statistics_key: str | None = None
    image_size: int = 128
    camera: str | None = None  # None: the environment's default camera
    max_steps: int | None = None  # None: the environment's own episode length
    fast_render: bool = False  # Meta-World: no shadows or reflections (several times faster on a CPU)
    execute_steps: int | None = None  # of each chunk the policy answers, steps run before it plans again (None: all)


@dataclass
class EpisodeOutcome:
    """What one simulated episode did."""

    instruction: str
    success: bool
    steps: int
    reward: float
    invalid_outputs: int  # policy outputs that did not decode to an action (held instead)
    policy_seconds: float
    policy_calls: int = 0  # observations the policy answered (fewer than ``steps`` for a chunking policy)


class ExecuteStepsError(UserFacingError, ValueError):
    """``--execute-steps`` asks to run more steps of a chunk than the policy answers."""


def check_execute_steps(execute_steps: int | None, chunk_length: int) -> None:
    """Refuse running ``execute_steps`` steps of chunks of ``chunk_length`` actions (1: single actions)."""
    if execute_steps is None:
        return
    if execute_steps < 1:
        raise ExecuteStepsError(
            f"--execute-steps {execute_steps}: run at least 1 step of each chunk (1 plans again every step)"
        )
    if execute_steps > chunk_length:
        answers = "one action per observation" if chunk_length == 1 else f"chunks of {chunk_length} actions"
        raise ExecuteStepsError(
            f"--execute-steps {execute_steps} is more than the policy plans ahead: it answers {answers}; use "
            f"--execute-steps 1 to {chunk_length}, or leave it out to run each whole chunk"
        )


def actions_to_run(answer: Any, execute_steps: int | None) -> list[Any]:
    """The actions of one policy answer that run before the policy is asked again: a single action (D,) or
    anything that is not a float array (a UI action) as it is; the first ``execute_steps`` rows of a chunk."""
    if not isinstance(answer, np.ndarray) or answer.ndim != 2:
        check_execute_steps(execute_steps, 1)
        return [answer]
    check_execute_steps(execute_steps, len(answer))
    return list(answer[: execute_steps or len(answer)])


def run_sim_episode(
    env: Any,
    policy: Policy,
    task: str,
    index: int,
    video_path: Path | None = None,
    fps: float = 10.0,
    evaluation_states: bool = True,
    execute_steps: int | None = None,
) -> EpisodeOutcome:
    """One episode from start state ``index`` of ``task`` (``evaluation_states``: the env's fixed evaluation
    state ``index``, as the MuJoCo suite has; else the state of seed ``index``). The policy sees the env
    through ``reset``'s task dict (``instruction``, ``task``, ``state_index`` and ``env`` for privileged scripted
    experts). A chunk (H, D) runs ``execute_steps`` steps (None: all H) before the policy plans again. Success
    is the simulator's signal at the episode's end (a terminating success, or the last step's)."""
    options: dict[str, Any] = {"task": task, "state_index": index} if evaluation_states else {"task": task}
    observation, _ = env.reset(seed=index, options=options)
    invalid_before = getattr(policy, "invalid_outputs", 0)
    try:
        policy.reset(
            {"instruction": observation["instruction"], "task": task, "state_index": index, "env": env.unwrapped}
        )
    except Exception as error:
        raise EpisodePhaseError("policy", error) from error
    frames = [observation["image"]] if video_path is not None else []
    steps, reward, policy_seconds, policy_calls, info = 0, 0.0, 0.0, 0, {}
    done = False
    while not done:
        started = time.perf_counter()
        try:
            actions = actions_to_run(policy.act(observation), execute_steps)
        except Exception as error:
            raise EpisodePhaseError("policy", error) from error
        policy_seconds += time.perf_counter() - started
        policy_calls += 1
        for action in actions:
            try:
                observation, step_reward, terminated, truncated, info = env.step(action)
            except Exception as error:
                raise EpisodePhaseError("environment", error) from error
            steps += 1
            reward += float(step_reward)
            if video_path is not None:
                frames.append(observation["image"])
            done = terminated or truncated
            if done:
                break
    if video_path is not None:
        write_mp4(frames, video_path, fps)
    return EpisodeOutcome(
        instruction=str(observation["instruction"]),
        success=bool(info.get("success", False)),
        steps=steps,
        reward=reward,
        invalid_outputs=getattr(policy, "invalid_outputs", 0) - invalid_before,
        policy_seconds=policy_seconds,
        policy_calls=policy_calls,
    )


def make_sim_env(settings: SimRunSettings) -> Any:
    """The simulator of ``settings.env`` at the run's image size, camera and episode length."""
    extra: dict[str, Any] = {}
    if settings.max_steps is not None:
        extra["max_steps" if settings.env == "mujoco" else "max_episode_steps"] = settings.max_steps
    if settings.env == "mujoco":
        from envs.mujoco.env import TabletopEnv

        if settings.camera is not None:
            extra["cameras"] = (settings.camera,)
        return TabletopEnv(task=settings.tasks[0], image_size=settings.image_size, **extra)
    if settings.env == "metaworld":
        from envs.metaworld.env import MetaWorldEnv

        if settings.camera is not None:
            extra["camera"] = settings.camera
        extra["fast_render"] = settings.fast_render
        return MetaWorldEnv(task=settings.tasks[0], image_size=settings.image_size, **extra)
    raise UserFacingError(f"--env {settings.env!r} is not a simulator; use one of {', '.join(SIM_ENVIRONMENTS)}")


class SimWorker:
    """One worker's simulator; a scripted expert is made per episode, a model policy once per run."""

    device_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, settings: SimRunSettings, make_policy: SimPolicyFactory, videos: bool, fps: float) -> None:
        self.env = make_sim_env(settings)
        self.make_policy, self.videos, self.fps = make_policy, videos, fps
        self.evaluation_states = settings.env == "mujoco"
        self.execute_steps = settings.execute_steps

    def run(self, attempt: Attempt) -> EpisodeResult:
        task, index = attempt.unit.payload
        attempt.phase = "policy"
        policy = self.make_policy(self.env, task)
        attempt.phase = "environment"
        video = attempt.trajectory_dir / VIDEO_NAME if self.videos else None
        started = time.perf_counter()
        outcome = run_sim_episode(
            self.env, policy, task, index, video, self.fps, self.evaluation_states, self.execute_steps
        )
        result = attempt.result
        result.seconds = time.perf_counter() - started
        result.intent, result.status, result.success = outcome.instruction, "done", outcome.success
        result.steps, result.reward, result.failed_steps = outcome.steps, outcome.reward, outcome.invalid_outputs
        result.policy_seconds = outcome.policy_seconds
        if video is not None:
            result.video = f"trajectories/{attempt.trajectory_dir.name}/{VIDEO_NAME}"
        return result

    def close(self) -> None:
        self.env.close()


def run_sim_suite(
    settings: SimRunSettings,
    out_dir: str | Path,
    make_policy: SimPolicyFactory,
    options: RunOptions | None = None,
    videos: bool = True,
    fps: float = 10.0,
) -> list[dict[str, Any]]:
    """``settings.episodes`` episodes of every task, not finished yet in ``out_dir``; returns all results of
    the run, in task and episode order."""
    units = episode_units(settings.tasks, settings.episodes, "success")
    options = options or RunOptions()
    options.title, options.group_name = f"{settings.env} run report", "task"
    return run_suite(units, settings, out_dir, lambda index: SimWorker(settings, make_policy, videos, fps), options)
