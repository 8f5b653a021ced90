"""``agent rl``: GRPO fine-tuning of the Magma model with verifiable rewards, on text, on the web
sites and on the MuJoCo suite, from a recipe in ``configs/rl``::

    agent rl grpo --config text-digits
    agent rl grpo --config robot-reach model=runs/robot-bc/final max_steps=20
"""

from __future__ import annotations

from typing import Annotated

import typer

rl_app = typer.Typer(
    help="Reinforcement learning (GRPO) for text, web agents and robot policies.", no_args_is_help=True
)


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
) -> None:
    """Group-relative policy optimisation: roll out the policy in groups, score them with the task's
    reward, update with the clipped loss; writes metrics.jsonl, checkpoints, summary.json and final/."""
    from magma.rl.config import load_rl_config
    from magma.rl.trainer import GRPOTrainer, format_summary

    rl_config = load_rl_config(config, list(overrides or []))
    trainer = GRPOTrainer(rl_config, resume=resume)
    summary = trainer.train()
    if trainer.accelerator.is_main_process:
        typer.echo(format_summary(summary))
