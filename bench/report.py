"""How every benchmark reports: one JSON line per figure on stdout, progress on stderr."""

from __future__ import annotations

import json
import sys


def emit(
    name: str,
    value: float,
    unit: str,
    baseline: str | None = None,
    ratio: float | None = None,
    device: str = "cpu",
    **extra,
) -> None:
    record = {
        "name": name,
        "value": round(value, 3),
        "unit": unit,
        "baseline": baseline,
        "ratio": None if ratio is None else round(ratio, 3),
        "device": device,
        **extra,
    }
    print(json.dumps(record), flush=True)


def log(bench: str, message: str) -> None:
    print(f"[bench/{bench}] {message}", file=sys.stderr, flush=True)
