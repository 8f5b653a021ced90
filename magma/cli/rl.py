"""``agent rl``: GRPO fine-tuning of the Magma model with verifiable rewards, on text, on the web
sites and on the MuJoCo suite, from a recipe in ``configs/rl``::

    agent rl grpo --config text-digits
    agent rl grpo --config robot-reach model=runs/robot-bc/final max_steps=20
    agent rl grpo --config robot-reach --engine ray --workers 8 --address HEAD:6379

``--engine ray`` plays the web and robot rollouts on Ray actors (``magma.rl.ray_rollouts``), with the same
samples as the local engine; the options set the recipe's ``rollout.*`` keys.
"""

from __future__ import annotations

from typing import Annotated

import typer

rl_app = typer.Typer(
    help="Reinforcement learning (GRPO) for text, web agents and robot policies.", no_args_is_help=True
)
SCALING = "Scaling out"


def rollout_overrides(engine: str | None, workers: int | None, address: str | None, max_tries: int | None) -> list[str]:
    """The ``rollout.*`` overrides of the options given (an option left out keeps the recipe's value)."""
    from data_tools.ray_cluster import check_engine

    if engine is not None:
        check_engine(engine)
    given = {"engine": engine, "workers": workers, "address": address, "max_tries": max_tries}
    return [f"rollout.{key}={value}" for key, value in given.items() if value is not None]


@rl_app.command(name="grpo")
def grpo(
    config: Annotated[str, typer.Option("--config", "-c", help="A recipe name in configs/rl or a YAML path.")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="Dotted key=value overrides, e.g. sampling.group_size=16 optim.lr=1e-6."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in run_dir from its last checkpoint, exactly.")
    ] = False,
    engine: Annotated[
        str | None,
        typer.Option(
            "--engine",
            help="Where web/robot rollouts run: local (this process, the default) or ray (rollout actors, each "
            "with its own environments; needs the ray extra). Sets rollout.engine.",
            rich_help_panel=SCALING,
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", help="With --engine ray: rollout actors (rollout.workers).", rich_help_panel=SCALING),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            help="With --engine ray: the cluster's head HOST:PORT, ray://HOST:PORT or auto (default: RAY_ADDRESS, "
            "else a local Ray instance on this machine).",
            rich_help_panel=SCALING,
        ),
    ] = None,
    max_tries: Annotated[
        int | None,
        typer.Option(
            "--max-tries",
            help="With --engine ray: plays of a share of groups whose actor process dies, before the step fails "
            "(rollout.max_tries, default 3).",
            rich_help_panel=SCALING,
        ),
    ] = None,
) -> None:
    """Group-relative policy optimisation: roll out the policy in groups, score them with the task's
    reward, update with the clipped loss; writes metrics.jsonl, checkpoints, summary.json and final/."""
    from magma.rl.config import load_rl_config
    from magma.rl.trainer import GRPOTrainer, format_summary

    scaling = rollout_overrides(engine, workers, address, max_tries)
    rl_config = load_rl_config(config, list(overrides or []) + scaling)
    trainer = GRPOTrainer(rl_config, resume=resume)
    summary = trainer.train()
    if trainer.accelerator.is_main_process:
        typer.echo(format_summary(summary))
