"""``agent``: the toolkit's one console script. This layer only parses and calls."""

from __future__ import annotations

import sys

import typer

from magma.cli.data import data_app
from magma.cli.model import model_app
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
app.add_typer(model_app, name="model")
app.add_typer(data_app, name="data")
app.add_typer(sites_app, name="sites")
app.command(name="train")(train)
app.command(name="run")(run)
app.command(name="serve")(serve)
app.add_typer(robot_app, name="robot")

# Subcommands whose packages have not landed yet: each says so and names where it will live.
PLANNED_COMMANDS = {
    "lapa": ("latent action quantization, latent labelling and latent-VLA pretraining", "lapa/"),
    "rl": ("GRPO fine-tuning for text, web agents and robot policies", "magma/rl/"),
}


def _register_planned(name: str, summary: str, package: str) -> None:
    def planned(ctx: typer.Context) -> None:
        typer.echo(f"agent {name}: not built yet; it will live in {package}.", err=True)
        raise typer.Exit(code=2)

    app.command(
        name=name,
        help=f"{summary[0].upper()}{summary[1:]}. Not built yet: will live in {package}.",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(planned)


for _name, (_summary, _package) in PLANNED_COMMANDS.items():
    _register_planned(_name, _summary, _package)


def main() -> None:
    """Entry point: user-caused errors end in one message and exit status 2, never a traceback."""
    try:
        app()
    except UserFacingError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
