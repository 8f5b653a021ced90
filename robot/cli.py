"""``agent robot run``: the robot control daemon for the lab machine (robot/daemon.py); the command group this
package contributes to the ``agent`` app."""

from __future__ import annotations

from typing import Annotated

import typer

robot_app = typer.Typer(help="The robot control daemon for the lab machine.", no_args_is_help=True)


@robot_app.command("run")
def run(
    config: Annotated[str, typer.Option("--config", "-c", help="A config name in configs/robot or a YAML path.")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Dotted key=value overrides, e.g. control_hz=20 episode.episodes=3.")
    ] = None,
) -> None:
    """Drive the configured robot at a fixed rate from a policy server, with safety limits, a watchdog,
    e-stop (SIGUSR1, POST /estop, the e-stop file) and recording; SIGTERM ends the episode cleanly. The control
    endpoint listens on loopback; off loopback it needs a token in $AGENT_DAEMON_TOKEN (status.token_env)."""
    from robot.daemon import RobotDaemon
    from robot.daemon_config import load_daemon_config

    daemon = RobotDaemon(load_daemon_config(config, list(overrides or [])))
    typer.echo(f"run directory: {daemon.run_dir}; e-stop: touch {daemon.estop_file} or kill -USR1", err=True)
    summary = daemon.run()
    typer.echo(summary.format())
