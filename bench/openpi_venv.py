"""The one venv that holds ``openpi-client`` from PyPI (it pins numpy < 2, so never the toolkit's own),
shared by ``bench/robot.py`` and ``scripts/interop_openpi.py``."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

VENV = Path(__file__).resolve().parent.parent / "runs" / ".bench-venvs" / "openpi-client"
# openpi-client imports typing_extensions without declaring it
REQUIREMENTS = ["openpi-client>=0.1,<1", "typing-extensions>=4.5,<5"]


def openpi_python(log: Callable[[str], None]) -> Path:
    """The venv's python, creating the venv first when openpi-client does not import there; raises
    ``subprocess.CalledProcessError`` / ``TimeoutExpired`` / ``OSError`` when it cannot be installed."""
    python = VENV / "bin" / "python"
    probe = [str(python), "-c", "import openpi_client.websocket_client_policy"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    log(f"installing {' '.join(REQUIREMENTS)} into {VENV} (its own venv)")
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *REQUIREMENTS], check=True, timeout=900)
    return python
