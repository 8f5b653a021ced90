"""The command line that starts an ``agent`` subcommand (``train``, ``lapa train``, ``rl grpo``) in several
processes through ``accelerate launch``."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for the rendezvous of the processes)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(process: subprocess.Popen, timeout_s: float = 20) -> None:
    """Terminate a child process, and kill it if it has not exited within ``timeout_s``."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout_s)


def accelerate_agent_command(accelerate_config: Path, agent_arguments: list[str], port: int | None = None) -> list[str]:
    """``accelerate launch --config_file CONFIG -m magma.cli.app ARGS`` with this interpreter's
    accelerate and a free rendezvous port."""
    return [
        str(Path(sys.executable).with_name("accelerate")),
        "launch",
        "--config_file",
        str(accelerate_config),
        "--main_process_port",
        str(port or free_port()),
        "-m",
        "magma.cli.app",
        *agent_arguments,
    ]


def accelerate_train_command(accelerate_config: Path, train_arguments: list[str], port: int | None = None) -> list[str]:
    """``agent train ARGS`` through :func:`accelerate_agent_command`."""
    return accelerate_agent_command(accelerate_config, ["train", *train_arguments], port)
