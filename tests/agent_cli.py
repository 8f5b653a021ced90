"""Running the `agent` command as a user would, and what a user-caused error must look like.

(``tests/`` is on ``sys.path`` in a pytest run, next to ``conftest.py``.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AGENT = [sys.executable, "-m", "magma.cli.app"]
AGENT_TIMEOUT_S = 1800  # a generous bound for a machine loaded by other work, never a measure of speed


def agent(*args: str, **extra_env: str) -> subprocess.CompletedProcess:
    """``agent ARGS`` from the repository root, one thread per library, output captured."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **extra_env}
    return subprocess.run([*AGENT, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=AGENT_TIMEOUT_S)


def assert_one_clear_error(result: subprocess.CompletedProcess, *expected: str) -> None:
    """Exit status 2, no traceback, exactly one ``error:`` line, holding every ``expected`` text."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, result.stderr[-3000:]
    for text in expected:
        assert text in error_lines[0], (text, error_lines[0])
