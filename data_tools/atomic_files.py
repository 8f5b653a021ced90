"""Files written whole or not at all: a temporary name in the same folder, then one rename.

The one home of this helper for every package (LeRobot metadata, run summaries, checkpoint counters,
suite reports), so a reader never sees half a file, and an interrupted write leaves only the old one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json_atomically(path: Path, payload: Any) -> None:
    """Write ``payload`` as JSON (4-space indent, LeRobot's own) under a temporary name in ``path``'s folder,
    then rename it into place; the folder is created when missing, the temporary file removed on any error.

    Non-finite floats are written as Python's json writes them (``NaN``), which Python, pandas and LeRobot
    read back: a run summary may hold a metric with no value (an evaluation with no decided episode), and
    that must not cost the run its summary. Data files are checked finite where they are made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(payload, file, indent=4)
            file.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
