"""``agent sites serve``: the bundled offline web sites (Classifieds, Shopping, Reddit) on 127.0.0.1."""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import typer

sites_app = typer.Typer(help="Start the bundled offline web sites (VisualWebArena-style).", no_args_is_help=True)


@sites_app.command("serve")
def serve(
    data_dir: Annotated[
        str | None, typer.Option("--data-dir", help="Keep the seeded databases and images here between runs.")
    ] = None,
    port: Annotated[int, typer.Option("--port", help="First port (0: free ports).")] = 0,
) -> None:
    """Serve the three sites until Ctrl-C; prints their URLs and the test login."""
    from envs.web.sites.server import TEST_PASSWORD, TEST_USERNAME, start_sites

    sites = start_sites(data_dir, port=port)
    for name, url in sites.items():
        typer.echo(f"{name:12s} {url}")
    typer.echo(
        f"login: {TEST_USERNAME} / {TEST_PASSWORD}. Export CLASSIFIEDS, SHOPPING, REDDIT to use them. Ctrl-C stops."
    )
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())  # a service manager's stop cleans up too
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    finally:
        sites.stop()
