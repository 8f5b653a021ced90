"""How every benchmark reports: one JSON line per figure on stdout, progress on stderr.

With ``BENCH_RECORDS=FILE`` in the environment (``make bench`` sets it) each figure is also appended to
FILE, from which ``bench/summary.py`` prints the one table of every ratio and its goal.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

RECORDS_VARIABLE = "BENCH_RECORDS"


def emit(
    name: str,
    value: float,
    unit: str,
    baseline: str | None = None,
    ratio: float | None = None,
    device: str = "cpu",
    goal: str | None = None,
    **extra,
) -> None:
    """Print one figure. ``goal`` is the ratio's target as ``"<= 1.5"`` or ``">= 3"`` (bench/summary.py checks it)."""
    record = {
        "name": name,
        "value": round(value, 3),
        "unit": unit,
        "baseline": baseline,
        "ratio": None if ratio is None else round(ratio, 3),
        "device": device,
        **({"goal": goal} if goal else {}),
        "bench": Path(sys.argv[0]).stem,
        "load": [round(load, 2) for load in os.getloadavg()],
        **extra,
    }
    line = json.dumps(record)
    print(line, flush=True)
    records_path = os.environ.get(RECORDS_VARIABLE)
    if records_path:
        with open(records_path, "a", encoding="utf-8") as records:
            records.write(line + "\n")


def log(bench: str, message: str) -> None:
    print(f"[bench/{bench}] {message}", file=sys.stderr, flush=True)
