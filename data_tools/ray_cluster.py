"""The Ray engine's one entry point: importing Ray (an optional extra), joining a cluster or starting a local
instance, and the errors a user can meet there, each one line naming the fix.

Every part that runs on Ray (corpus jobs, ``agent run --engine ray``, GRPO rollout actors) calls
:func:`connect` and nothing else of Ray's start-up, so the extra's message, the address check and the
local instance's settings are the same everywhere. The local engine never imports this module's Ray.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from data_tools.errors import UserFacingError

ENGINES = ("local", "ray")
RAY_EXTRA = "pip install 'embodied-agent-toolkit[ray]'"
DEFAULT_MAX_TRIES = 3  # a unit whose worker dies this many times is counted failed and the job goes on


class RayEngineError(UserFacingError, RuntimeError):
    """Ray is missing, or the cluster asked for does not answer."""


def check_engine(engine: str) -> str:
    """``engine`` if it is one this toolkit runs on, else one error naming them."""
    if engine not in ENGINES:
        raise RayEngineError(f"--engine is {engine!r}; give one of {', '.join(ENGINES)}")
    return engine


def import_ray() -> Any:
    """The ``ray`` module, or one error naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        message = f"--engine ray needs Ray, which is not installed; install the extra: {RAY_EXTRA}"
        raise RayEngineError(message) from None
    return ray


def _host_and_port(address: str) -> tuple[str, int] | None:
    """``host:port`` of a cluster address (``ray://host:port`` for Ray Client), or None for ``auto``."""
    if address == "auto":
        return None
    bare = address.removeprefix("ray://")
    host, _, port = bare.rpartition(":")
    if not host or not port.isdigit():
        raise RayEngineError(
            f"--address {address!r} is not a cluster address; give HOST:PORT of the head node "
            "(as `ray start --head` prints it), ray://HOST:PORT for Ray Client, or auto"
        )
    return host.strip("[]"), int(port)


def check_address_answers(address: str, timeout: float = 10.0) -> None:
    """Fail at once, in one line, when nothing listens at ``address`` (Ray itself would retry for minutes)."""
    target = _host_and_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise RayEngineError(
            f"no Ray cluster answers at {address} ({reason}); start one there with `ray start --head`, check the "
            "host and port, or leave out --address to start a local instance"
        ) from None


def connect(address: str | None = None, num_cpus: int | None = None) -> Any:
    """Ray, initialised: joined to the cluster at ``address`` (else ``RAY_ADDRESS``), or a local instance with
    ``num_cpus`` CPUs when neither is given. A process already connected keeps its connection."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS") or None
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False, "include_dashboard": False}
    if address is None:
        ray.init(address="local", num_cpus=num_cpus, _node_ip_address="127.0.0.1", **quiet)
        return ray
    check_address_answers(address)
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, TimeoutError) as error:
        raise RayEngineError(
            f"cannot join the Ray cluster at {address} ({str(error).splitlines()[0][:200]}); check that the "
            "head node runs the same Ray and Python versions, or leave out --address for a local instance"
        ) from None
    return ray


def worker_death_errors(ray: Any) -> tuple[type[BaseException], ...]:
    """Ray's errors for a task or actor whose process died (killed, out of memory, a crash in native code)."""
    exceptions = ray.exceptions
    names = ("WorkerCrashedError", "ActorDiedError", "ActorUnavailableError", "OutOfMemoryError", "NodeDiedError")
    return tuple(getattr(exceptions, name) for name in names if hasattr(exceptions, name))
