"""The `agent` command run inside the test process: the console script's own ``main`` (argument parsing,
the one-message handling of user errors, the exit status), without a fresh interpreter's seconds of
imports for every call. For what needs a process of its own (a kill, ``accelerate launch``), use
``tests/agent_cli.py``.

(``tests/`` is on ``sys.path`` in a pytest run, next to ``conftest.py``.)
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import traceback
from unittest import mock

import torch

from magma.cli.app import main


def agent_in_process(*args: str) -> subprocess.CompletedProcess:
    """``agent ARGS`` as the console script runs it, with one torch thread (as ``OMP_NUM_THREADS=1`` gives
    a subprocess); stdout and stderr captured. An exception that escapes ``main`` is written to stderr as
    the interpreter would (a ``Traceback``) with exit status 1, so a test sees what a user would."""
    stdout, stderr = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    returncode: int = 0
    torch.set_num_threads(1)
    try:
        with (
            mock.patch.object(sys, "argv", ["agent", *args]),
            contextlib.redirect_stdout(stdout),
            contextlib.redirect_stderr(stderr),
        ):
            try:
                main()
            except SystemExit as exit_request:
                returncode = exit_status(exit_request.code, stderr)
            except Exception:
                traceback.print_exc(file=stderr)
                returncode = 1
    finally:
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess(["agent", *args], returncode, stdout.getvalue(), stderr.getvalue())


def exit_status(code: object, stderr: io.StringIO) -> int:
    """The process exit status ``sys.exit(code)`` gives: None is 0, a message is printed and is 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=stderr)
    return 1
