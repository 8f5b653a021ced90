"""``agent``: the toolkit's one console script. This layer only parses and calls."""

from __future__ import annotations

import sys

import typer

from magma.cli.data import data_app
from magma.cli.lapa import lapa_app
from magma.cli.model import model_app
from magma.cli.rl import rl_app
from magma.cli.robot import robot_app
from magma.cli.run import run
from magma.cli.serve import serve
from magma.cli.sites import sites_app
from magma.cli.train import train
from magma.errors import UserFacingError

app = typer.Typer(
    name="agent",
    help="Multimodal embodied agents: the Magma VLA stack, its data tools, environments, RL and robot daemon.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command(name="run")(run)
app.command(name="train")(train)
app.add_typer(data_app, name="data")
app.add_typer(lapa_app, name="lapa")
app.add_typer(rl_app, name="rl")
app.command(name="serve")(serve)
app.add_typer(robot_app, name="robot")
app.add_typer(sites_app, name="sites")
app.add_typer(model_app, name="model")


def main() -> None:
    """Entry point: user-caused errors end in one message and exit status 2, never a traceback."""
    try:
        app()
    except UserFacingError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
