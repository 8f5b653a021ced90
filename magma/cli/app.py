"""``agent``: the toolkit's one console script. This layer only parses and calls.

The app is assembled from a registry of ``(name, "module:attribute")`` entries: each package contributes
its own commands (``lapa.cli``, ``robot.cli``) and the app imports them by path here, so no module of
``magma`` outside this CLI imports ``lapa`` or ``robot`` (``tests/test_layers.py``). A command module
imports only typer at load; its work is imported when the command runs, so ``agent --help`` loads no
model code."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import typer

from data_tools.errors import UserFacingError

# (name, "module:attribute"): a typer.Typer is added as a command group, a function as one command.
# In the order `agent --help` lists them.
COMMANDS: tuple[tuple[str, str], ...] = (
    ("run", "magma.cli.run:run_app"),
    ("train", "magma.cli.train:train"),
    ("data", "magma.cli.data:data_app"),
    ("lapa", "lapa.cli:lapa_app"),
    ("rl", "magma.cli.rl:rl_app"),
    ("serve", "magma.cli.serve:serve"),
    ("robot", "robot.cli:robot_app"),
    ("sites", "magma.cli.sites:sites_app"),
    ("model", "magma.cli.model:model_app"),
    ("demo", "magma.cli.demo:demo"),
)


def load_command(target: str) -> Any:
    """The object at ``module:attribute`` of the registry."""
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def build_app(commands: tuple[tuple[str, str], ...] = COMMANDS) -> typer.Typer:
    """The ``agent`` app with every registered command group and command."""
    agent = typer.Typer(
        name="agent",
        help="Multimodal embodied agents: the Magma VLA stack, its data tools, environments, RL and robot daemon.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    for name, target in commands:
        command = load_command(target)
        if isinstance(command, typer.Typer):
            agent.add_typer(command, name=name)
        else:
            agent.command(name=name)(command)
    return agent


app = build_app()


def main() -> None:
    """Entry point: user-caused errors end in one message and exit status 2, never a traceback."""
    try:
        app()
    except UserFacingError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
