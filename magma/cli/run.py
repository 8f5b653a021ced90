"""``agent run``: run a policy over an environment's task suite; a success table, a JSON line per
episode and an mp4 per episode in the output directory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

ENVIRONMENTS = ("mujoco",)
POLICIES = ("scripted", "magma")


def run(
    env: Annotated[str, typer.Option("--env", help="The environment: mujoco (web and android come later).")],
    task: Annotated[str, typer.Option("--task", help="A task name, or 'all' for the whole suite.")] = "all",
    policy: Annotated[str, typer.Option("--policy", help="scripted (privileged expert) or magma (a checkpoint).")] = (
        "scripted"
    ),
    checkpoint: Annotated[
        str | None, typer.Option("--checkpoint", help="The Magma checkpoint directory for --policy magma.")
    ] = None,
    statistics_key: Annotated[
        str | None, typer.Option("--statistics-key", help="Which dataset's action statistics to decode with.")
    ] = None,
    episodes: Annotated[int, typer.Option("--episodes", help="Episodes per task (evaluation states 0..N-1).")] = 10,
    image_size: Annotated[int, typer.Option("--image-size", help="Camera images, pixels per side.")] = 128,
    out: Annotated[str | None, typer.Option("--out", help="Output directory (default runs/run-ENV-TIME).")] = None,
    videos: Annotated[bool, typer.Option("--videos/--no-videos", help="Write an mp4 of every episode.")] = True,
) -> None:
    """Run a policy over tasks of an environment and print the success per task."""
    from envs.mujoco.tasks import TASKS, get_task

    if env not in ENVIRONMENTS:
        raise typer.BadParameter(f"--env must be one of {ENVIRONMENTS}; web and android are not built yet")
    if policy not in POLICIES:
        raise typer.BadParameter(f"--policy must be one of {POLICIES}")
    if policy == "magma" and not checkpoint:
        raise typer.BadParameter("--policy magma needs --checkpoint DIR (a model trained on robot actions)")
    tasks = list(TASKS) if task == "all" else [get_task(task).name]
    out_dir = Path(out or f"runs/run-{env}-{time.strftime('%Y%m%d-%H%M%S')}")

    from envs.mujoco.env import TabletopEnv
    from envs.mujoco.experts import ScriptedExpert
    from magma.agents.episodes import run_suite, success_table

    def make_env(name: str) -> TabletopEnv:
        return TabletopEnv(task=name, image_size=image_size)

    if policy == "magma":
        from magma.policies.robot import MagmaRobotPolicy

        magma_policy = MagmaRobotPolicy.from_pretrained(checkpoint, statistics_key=statistics_key)

        def make_policy(environment, name):
            return magma_policy
    else:

        def make_policy(environment, name):
            return ScriptedExpert(environment)

    def report(result) -> None:
        mark = "ok  " if result.success else "fail"
        typer.echo(f"{mark} {result.task:<12} state {result.state_index:>3}  {result.steps:>4} steps", err=True)

    results = run_suite(make_env, make_policy, tasks, episodes, out_dir, videos=videos, on_episode=report)
    typer.echo(success_table(results))
    typer.echo(f"episodes and videos: {out_dir}")
