"""``agent run``: run a policy over an environment's task suite. MuJoCo: a success table, a JSON line per
episode and an mp4 per episode. VisualWebArena: results.jsonl, a summary by site and eval type and an HTML
trajectory report, over parallel browser contexts, resumable."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

ENVIRONMENTS = ("mujoco", "visualwebarena", "android")
POLICIES = {"mujoco": ("scripted", "magma", "remote"), "visualwebarena": ("oracle", "openai", "magma")}
POLICIES["android"] = ("scripted", "openai", "magma")
# The environments each environment-specific option applies to (the others apply to all): an option given
# for another environment is an error, not silently ignored.
OPTION_ENVIRONMENTS: dict[str, tuple[str, ...]] = {
    "task": ("mujoco",),
    "checkpoint": ("mujoco",),
    "server": ("mujoco",),
    "statistics_key": ("mujoco",),
    "episodes": ("mujoco",),
    "image_size": ("mujoco",),
    "videos": ("mujoco",),
    "tasks": ("visualwebarena", "android"),
    "model": ("visualwebarena", "android"),
    "max_steps": ("visualwebarena", "android"),
    "resume": ("visualwebarena", "android"),
    "retry_errors": ("visualwebarena", "android"),
    "workers": ("visualwebarena",),
    "auth_dir": ("visualwebarena",),
    "images_root": ("visualwebarena",),
    "grading": ("visualwebarena",),
    "judge_model": ("visualwebarena",),
    "device": ("android",),
    "adb": ("android",),
    "record": ("android",),
}


def options_of(env: str) -> list[str]:
    """The command-line options that apply to ``env``, as typed (``--max-steps``)."""
    return [f"--{name.replace('_', '-')}" for name, envs in OPTION_ENVIRONMENTS.items() if env in envs]


def refuse_options_of_other_environments(context: typer.Context, env: str) -> None:
    """A BadParameter naming every option given on the command line that does not apply to ``env``."""
    given = {"COMMANDLINE", "ENVIRONMENT"}  # by name: typer ships its own copy of click's ParameterSource
    foreign = [
        name
        for name, envs in OPTION_ENVIRONMENTS.items()
        if env not in envs and getattr(context.get_parameter_source(name), "name", None) in given
    ]
    if foreign:
        listed = ", ".join(f"--{name.replace('_', '-')} ({'/'.join(OPTION_ENVIRONMENTS[name])})" for name in foreign)
        raise typer.BadParameter(
            f"{listed} do(es) not apply to --env {env}; its own options are {', '.join(options_of(env))} "
            "(plus --policy and --out)"
        )


def run(
    context: typer.Context,
    env: Annotated[str, typer.Option("--env", help="The environment: mujoco, visualwebarena or android.")],
    task: Annotated[str, typer.Option("--task", help="mujoco: a task name, or 'all' for the whole suite.")] = "all",
    policy: Annotated[
        str | None,
        typer.Option(
            "--policy",
            help="mujoco: scripted (privileged expert, default), magma, or remote (a policy served by `agent serve`, "
            "--server); visualwebarena: oracle (bundled tasks' "
            "recorded trajectories, default), openai (OPENAI_BASE_URL / OPENAI_API_KEY) or magma.",
        ),
    ] = None,
    checkpoint: Annotated[
        str | None, typer.Option("--checkpoint", help="mujoco: the Magma checkpoint directory for --policy magma.")
    ] = None,
    server: Annotated[
        str, typer.Option("--server", help="mujoco: the policy server's URL for --policy remote (token: env).")
    ] = "ws://127.0.0.1:8700",
    tasks: Annotated[
        list[str] | None,
        typer.Option(
            "--tasks",
            help="visualwebarena: bundled (default), a bundled site (shopping), a VWA task FILE or DIR, each "
            "optionally with :ids (shopping:0-9, test_reddit.raw.json:3,7). Repeatable.",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", help="visualwebarena: a Magma checkpoint DIR (magma) or the model name (openai)."),
    ] = None,
    max_steps: Annotated[int, typer.Option("--max-steps", help="visualwebarena: steps per task.")] = 30,
    workers: Annotated[int, typer.Option("--workers", help="visualwebarena: parallel browser contexts.")] = 1,
    resume: Annotated[bool, typer.Option("--resume", help="visualwebarena, android: finish the run in --out.")] = False,
    retry_errors: Annotated[
        bool,
        typer.Option(
            "--retry-errors",
            help="visualwebarena, android: with --resume, also rerun tasks that failed for a reason of their own "
            "(a start page that did not load, a bad endpoint reply); without it only unfinished tasks run.",
        ),
    ] = False,
    auth_dir: Annotated[
        str | None, typer.Option("--auth-dir", help="visualwebarena: VWA's .auth folder for the official sites.")
    ] = None,
    images_root: Annotated[
        str | None, typer.Option("--images-root", help="visualwebarena: where official task images live (VWA repo).")
    ] = None,
    grading: Annotated[
        str, typer.Option("--grading", help="visualwebarena: fixed (VWA's bugs fixed) or official (VWA's code).")
    ] = "fixed",
    judge_model: Annotated[
        str | None,
        typer.Option(
            "--judge-model",
            help="visualwebarena: a chat model (same OpenAI-compatible endpoint) that grades fuzzy_match answers "
            "and VQA questions about page images; without one those tasks are reported undecided.",
        ),
    ] = None,
    statistics_key: Annotated[
        str | None, typer.Option("--statistics-key", help="Which dataset's action statistics to decode with.")
    ] = None,
    episodes: Annotated[int, typer.Option("--episodes", help="Episodes per task (evaluation states 0..N-1).")] = 10,
    image_size: Annotated[int, typer.Option("--image-size", help="Camera images, pixels per side.")] = 128,
    out: Annotated[str | None, typer.Option("--out", help="Output directory (default runs/run-ENV-TIME).")] = None,
    videos: Annotated[bool, typer.Option("--videos/--no-videos", help="Write an mp4 of every episode.")] = True,
    device: Annotated[
        str | None,
        typer.Option("--device", help="android: the SERIAL from `adb devices` (default: the only one) or 'simulated'."),
    ] = None,
    adb: Annotated[
        str, typer.Option("--adb", help="android: the adb server HOST:PORT and client (HOST:PORT/adbutils or /adb).")
    ] = "127.0.0.1:5037/adbutils",
    record: Annotated[
        str | None, typer.Option("--record", help="android: also write the episodes as training shards into DIR.")
    ] = None,
) -> None:
    """Run a policy over tasks of an environment and print the success per task.

    Each option's help starts with the environments it applies to; an option given for another
    environment is refused, naming the options of the chosen one."""
    if env not in ENVIRONMENTS:
        raise typer.BadParameter(f"--env must be one of {ENVIRONMENTS}")
    refuse_options_of_other_environments(context, env)
    policy = policy or POLICIES[env][0]
    if policy not in POLICIES[env]:
        raise typer.BadParameter(f"--policy for --env {env} must be one of {POLICIES[env]}")
    if env == "android":
        run_android(tasks, policy, model, max_steps, resume, out, device, adb, record, retry_errors)
        return
    if env == "visualwebarena":
        run_web(
            tasks or ["bundled"],
            policy,
            model,
            max_steps,
            workers,
            resume,
            out,
            auth_dir,
            images_root,
            grading,
            judge_model,
            retry_errors,
        )
        return
    from envs.mujoco.tasks import TASKS, get_task

    if policy == "magma" and not checkpoint:
        raise typer.BadParameter("--policy magma needs --checkpoint DIR (a model trained on robot actions)")
    tasks = list(TASKS) if task == "all" else [get_task(task).name]
    out_dir = Path(out or f"runs/run-{env}-{time.strftime('%Y%m%d-%H%M%S')}")

    from envs.mujoco.env import TabletopEnv
    from magma.agents.episodes import run_suite, success_table

    def make_env(name: str) -> TabletopEnv:
        return TabletopEnv(task=name, image_size=image_size)

    make_policy = mujoco_policy_factory(policy, checkpoint, server, statistics_key)

    def report(result) -> None:
        mark = "ok  " if result.success else "fail"
        typer.echo(f"{mark} {result.task:<12} state {result.state_index:>3}  {result.steps:>4} steps", err=True)

    results = run_suite(make_env, make_policy, tasks, episodes, out_dir, videos=videos, on_episode=report)
    typer.echo(success_table(results))
    typer.echo(f"episodes and videos: {out_dir}")


def mujoco_policy_factory(
    policy: str, checkpoint: str | None, server: str, statistics_key: str | None
) -> Callable[[Any, str], Any]:
    """``make_policy(env, task)`` for a MuJoCo run: the privileged expert (one per episode), one Magma policy
    loaded once, or one client of a policy served by ``agent serve`` (it reconnects with back-off)."""
    if policy == "magma":
        from magma.policies.robot import MagmaRobotPolicy

        shared = MagmaRobotPolicy.from_pretrained(checkpoint, statistics_key=statistics_key)
        return lambda environment, task: shared
    if policy == "remote":
        from robot.policy_client import PolicyClient

        shared = PolicyClient(server)
        return lambda environment, task: shared
    from envs.mujoco.experts import ScriptedExpert

    return lambda environment, task: ScriptedExpert(environment)


def run_web(
    tasks: list[str],
    policy: str,
    model: str | None,
    max_steps: int,
    workers: int,
    resume: bool,
    out: str | None,
    auth_dir: str | None,
    images_root: str | None,
    grading: str,
    judge_model: str | None = None,
    retry_errors: bool = False,
) -> None:
    from magma.agents.web_suite import WebRunOptions, WebRunSettings, run_web_suite, summary_table, web_policy_factory

    if resume and not out:
        raise typer.BadParameter("--resume needs --out, the directory of the run to finish")
    if grading not in ("fixed", "official"):
        raise typer.BadParameter("--grading must be fixed or official")
    settings = WebRunSettings(
        tasks=list(tasks),
        policy=policy,
        model=model,
        max_steps=max_steps,
        grading_mode=grading,
        judge_model=judge_model,
    )
    if retry_errors and not resume:
        raise typer.BadParameter("--retry-errors goes with --resume (it reruns the failed tasks of a run)")
    options = WebRunOptions(workers=workers, auth_dir=auth_dir, images_root=images_root, retry_errors=retry_errors)
    out_dir = Path(out or f"runs/run-visualwebarena-{time.strftime('%Y%m%d-%H%M%S')}")

    def report(result) -> None:
        mark = {True: "ok  ", False: "fail", None: "??? "}[result.success] if result.status == "done" else "err "
        detail = f"{result.error_kind}: {result.error}" if result.error else result.early_stop or result.eval_status
        typer.echo(f"{mark} {result.key:<24} {result.steps:>3} steps {result.seconds:>6.1f} s  {detail}", err=True)

    factory = web_policy_factory(policy, model)
    from magma.agents.web_suite import summarize

    results = run_web_suite(settings, options, out_dir, factory, resume=resume, on_result=report)
    typer.echo(summary_table(summarize(results)))
    typer.echo(f"results: {out_dir / 'results.jsonl'}  report: {out_dir / 'report.html'}")


def run_android(
    tasks: list[str] | None,
    policy: str,
    model: str | None,
    max_steps: int,
    resume: bool,
    out: str | None,
    device: str | None,
    adb: str,
    record: str | None,
    retry_errors: bool = False,
) -> None:
    from magma.agents.android_suite import (
        AndroidRunOptions,
        AndroidRunSettings,
        android_policy_factory,
        run_android_suite,
    )
    from magma.agents.web_suite import summarize, summary_table

    if resume and not out:
        raise typer.BadParameter("--resume needs --out, the directory of the run to finish")
    if retry_errors and not resume:
        raise typer.BadParameter("--retry-errors goes with --resume (it reruns the failed tasks of a run)")
    if tasks and len(tasks) > 1:
        raise typer.BadParameter("--env android takes one --tasks FILE (a JSON list of tasks)")
    endpoint, _, client = adb.partition("/")
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit() or client not in ("", "adbutils", "adb"):
        raise typer.BadParameter(f"--adb must be HOST:PORT or HOST:PORT/adbutils|adb, got {adb!r}")
    settings = AndroidRunSettings(policy=policy, model=model, max_steps=max_steps, device=device)
    if tasks:
        settings.tasks = tasks[0]
    options = AndroidRunOptions(adb_host=host, adb_port=int(port), client=client or "adbutils", record_dir=record)
    out_dir = Path(out or f"runs/run-android-{time.strftime('%Y%m%d-%H%M%S')}")

    def report(result) -> None:
        mark = {True: "ok  ", False: "fail", None: "??? "}[result.success] if result.status == "done" else "err "
        detail = f"{result.error_kind}: {result.error}" if result.error else result.early_stop
        detail = detail or "; ".join(result.eval_notes)
        typer.echo(f"{mark} {result.key:<24} {result.steps:>3} steps {result.seconds:>6.1f} s  {detail}", err=True)

    factory = android_policy_factory(policy, model)
    results = run_android_suite(settings, options, out_dir, factory, resume, report, retry_errors)
    typer.echo(summary_table(summarize(results)))
    typer.echo(f"results: {out_dir / 'results.jsonl'}  report: {out_dir / 'report.html'}")
    if record:
        typer.echo(f"training shards: {record}")
