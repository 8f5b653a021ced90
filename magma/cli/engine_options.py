"""The options every command that can run on Ray takes, spelled once: ``--engine local|ray``, ``--address``,
``--max-tries`` (corpus jobs, ``agent run``, ``agent rl``, ``agent lapa label``)."""

from __future__ import annotations

from typing import Annotated

import typer

EngineOption = Annotated[
    str,
    typer.Option(
        "--engine",
        help="local: processes or threads on this machine; ray: a Ray cluster (needs the package's ray extra).",
        rich_help_panel="Scaling out",
    ),
]
AddressOption = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="With --engine ray: the cluster's head HOST:PORT, ray://HOST:PORT or auto (default: RAY_ADDRESS, "
        "else a local Ray instance on this machine).",
        rich_help_panel="Scaling out",
    ),
]
MaxTriesOption = Annotated[
    int,
    typer.Option(
        "--max-tries",
        help="With --engine ray: tries of a unit whose worker process dies, before it is counted failed.",
        rich_help_panel="Scaling out",
    ),
]
