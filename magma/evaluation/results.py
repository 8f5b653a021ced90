"""The results of a suite run, whatever the environment: ``EpisodeResult`` (one task's or one episode's
outcome, one line of ``results.jsonl``), reading those lines back (a damaged line is skipped, so
``--resume`` reruns its task), and the summary by group (a site, an app group, a robot task) and by check
type, as JSON and as a text table."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from data_tools.errors import UserFacingError

RUN_FILE = "run.json"
RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"

_log = logging.getLogger(__name__)


class RunDirectoryError(UserFacingError):
    """An output directory that holds another run, or a ``--resume`` with different settings."""


@dataclass
class EpisodeResult:
    """One task's outcome (a web or Android task, one robot episode), one line of results.jsonl."""

    key: str
    intent: str  # the instruction
    group: str  # what the summary groups by: the site, the app group, the robot task
    eval_types: list[str]  # how success was decided (a grader's check types; "success" for a simulator's signal)
    status: str  # "done", or "error" when the episode could not run to its end (``error`` says why)
    success: bool | None = None
    reward: float = 0.0
    eval_status: str = ""
    eval_notes: list[str] = field(default_factory=list)
    answer: str = ""
    steps: int = 0
    failed_steps: int = 0
    early_stop: str | None = None
    seconds: float = 0.0
    policy_seconds: float = 0.0
    error: str | None = None
    error_kind: str | None = None  # the failure's category (magma.evaluation.task_failures) when status is "error"
    worker: int = 0
    video: str | None = None  # the episode's mp4, relative to the run directory
    search: dict[str, Any] | None = None  # a searched task's figures (magma.search.tree.SearchStats, as a dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# the type each field of a results.jsonl line must have (a line with another is treated as not there)
_TEXT = (str,)
_OPTIONAL_TEXT = (str, type(None))
_RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "key": _TEXT,
    "intent": _TEXT,
    "group": _TEXT,
    "eval_types": (list,),
    "status": _TEXT,
    "success": (bool, type(None)),
    "reward": (int, float),
    "eval_status": _TEXT,
    "eval_notes": (list,),
    "answer": _TEXT,
    "steps": (int,),
    "failed_steps": (int,),
    "early_stop": _OPTIONAL_TEXT,
    "seconds": (int, float),
    "policy_seconds": (int, float),
    "error": _OPTIONAL_TEXT,
    "error_kind": _OPTIONAL_TEXT,
    "worker": (int,),
    "video": _OPTIONAL_TEXT,
    "search": (dict, type(None)),
}
# what a line that lacks a field reads as (an old or hand-written line); ``key`` and ``status`` have none
_RECORD_DEFAULTS: dict[str, Any] = {
    "intent": "",
    "group": "?",
    "eval_types": [],
    "success": None,
    "reward": 0.0,
    "eval_status": "",
    "eval_notes": [],
    "answer": "",
    "steps": 0,
    "failed_steps": 0,
    "early_stop": None,
    "seconds": 0.0,
    "policy_seconds": 0.0,
    "error": None,
    "error_kind": None,
    "worker": 0,
    "video": None,
    "search": None,
}
RECORD_STATUSES = ("done", "error")


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def _field_ok(name: str, value: Any) -> bool:
    types = _RECORD_TYPES.get(name)
    if types is None:
        return True  # a field this version does not know: kept as it is, never read
    if isinstance(value, bool) and bool not in types:
        return False  # JSON true is not a step count
    if not isinstance(value, types):
        return False
    if isinstance(value, list):
        return all(isinstance(item, str) for item in value)
    if isinstance(value, dict):
        return all(isinstance(item, int | float | type(None)) for item in value.values())
    return True


def parse_result_line(line: bytes | str) -> dict[str, Any] | None:
    """One results.jsonl line as a record with every field of the right type (missing ones at their
    defaults), or None when it is not one: cut by a crash, not UTF-8, not an object with a str ``key`` and a
    known ``status``, a field of another type, NaN or a nesting too deep to read."""
    try:
        text = line.decode("utf-8") if isinstance(line, bytes) else line
        record = json.loads(text, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("key"), str):
        return None
    if record.get("status") not in RECORD_STATUSES:
        return None
    if not all(_field_ok(name, value) for name, value in record.items()):
        return None
    if "group" not in record and isinstance(record.get("site"), str):
        record["group"] = record["site"]  # a line written before results had groups
    return {**_RECORD_DEFAULTS, **record}


def holds_file(path: Path, what: str) -> bool:
    """Does ``path`` hold a file (False: nothing there); anything else there is a RunDirectoryError."""
    if not path.exists() and not path.is_symlink():
        return False
    if not path.is_file():
        raise RunDirectoryError(
            f"{path} ({what}) is not a regular file; move the run directory aside or pass another --out"
        )
    return True


def read_results(out_dir: Path, warn: bool = True) -> dict[str, dict[str, Any]]:
    """The last valid line per task of results.jsonl. Lines that are not a result (cut by a crash, edited,
    damaged) are skipped with one warning; their tasks count as not finished, so --resume runs them again."""
    results: dict[str, dict[str, Any]] = {}
    path = out_dir / RESULTS_FILE
    if not holds_file(path, "the run's results"):
        return results
    try:
        data = path.read_bytes()
    except OSError as error:
        raise RunDirectoryError(
            f"cannot read {path} ({error.strerror}); fix its permissions or pass another --out"
        ) from None
    skipped = 0
    for line in data.splitlines():
        if not line.strip():
            continue
        record = parse_result_line(line)
        if record is None:
            skipped += 1
            continue
        results[record["key"]] = record
    if skipped and warn:
        _log.warning(
            "%s: skipped %d line(s) that are not task results; those tasks count as not finished", path, skipped
        )
    return results


def read_run_settings(out_dir: Path) -> dict[str, Any]:
    """run.json of a run directory as a dict; a damaged one is one RunDirectoryError naming the fix."""
    path = out_dir / RUN_FILE
    fix = "move the run directory aside (or delete it) and start again, or pass another --out"
    if not holds_file(path, "the run's settings"):
        raise RunDirectoryError(f"{path} is missing; {fix}")
    try:
        settings = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_refuse_constant)
    except OSError as error:
        raise RunDirectoryError(f"cannot read {path} ({error.strerror}); {fix}") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise RunDirectoryError(f"{path} is damaged (not a JSON object of run settings); {fix}") from None
    if not isinstance(settings, dict):
        raise RunDirectoryError(
            f"{path} is damaged (a JSON {type(settings).__name__}, not an object of settings); {fix}"
        )
    return settings


def _rate(passed: int, decided: int) -> float | None:
    return round(passed / decided, 4) if decided else None


def _group_row(records: list[dict[str, Any]]) -> dict[str, Any]:
    passed = sum(record.get("success") is True for record in records)
    failed = sum(record.get("success") is False for record in records)
    errors = sum(record.get("status") == "error" for record in records)
    finished = [record for record in records if record.get("status") == "done"]
    return {
        "tasks": len(records),
        "passed": passed,
        "failed": failed,
        "undecided": len(finished) - passed - failed,
        "errors": errors,
        "success_rate": _rate(passed, passed + failed),
        "mean_steps": round(sum(r["steps"] for r in finished) / len(finished), 2) if finished else None,
        "mean_seconds": round(sum(r["seconds"] for r in finished) / len(finished), 2) if finished else None,
    }


def summarize(results: list[dict[str, Any]], group_name: str = "group") -> dict[str, Any]:
    """Success by group and by eval type (a task with two eval types counts in both), and overall;
    ``group_name`` is what a group is called in the table (site, task)."""
    by_group: dict[str, list[dict[str, Any]]] = {}
    by_eval: dict[str, list[dict[str, Any]]] = {}
    for record in results:
        by_group.setdefault(record["group"], []).append(record)
        for eval_type in record.get("eval_types") or ["?"]:
            by_eval.setdefault(eval_type, []).append(record)
    kinds = sorted({str(record.get("error_kind")) for record in results if record.get("status") == "error"})
    return {
        "group_name": group_name,
        "overall": _group_row(results),
        "errors_by_kind": {
            kind: sum(str(record.get("error_kind")) == kind and record.get("status") == "error" for record in results)
            for kind in kinds
        },
        "by_group": {name: _group_row(rows) for name, rows in sorted(by_group.items())},
        "by_eval_type": {name: _group_row(rows) for name, rows in sorted(by_eval.items())},
    }


def summary_table(summary: dict[str, Any]) -> str:
    """The summary as a plain-text table: passed/decided, undecided (needs a judge), errors, steps, seconds."""
    header = f"{'group':<28} {'tasks':>5} {'passed':>6} {'failed':>6} {'undec.':>6} {'errors':>6} {'success':>8} "
    header += f"{'steps':>6} {'sec':>7}"
    lines = [header, "-" * len(header)]

    def row(name: str, values: dict[str, Any]) -> str:
        rate = "-" if values["success_rate"] is None else f"{100 * values['success_rate']:.1f}%"
        steps = "-" if values["mean_steps"] is None else f"{values['mean_steps']:.1f}"
        seconds = "-" if values["mean_seconds"] is None else f"{values['mean_seconds']:.1f}"
        return (
            f"{name:<28} {values['tasks']:>5} {values['passed']:>6} {values['failed']:>6} {values['undecided']:>6} "
            f"{values['errors']:>6} {rate:>8} {steps:>6} {seconds:>7}"
        )

    for name, values in summary["by_group"].items():
        lines.append(row(f"{summary.get('group_name', 'group')} {name}", values))
    if len(summary["by_eval_type"]) > 1:  # one check type for every task says no more than "all"
        for name, values in summary["by_eval_type"].items():
            lines.append(row(f"eval {name}", values))
    lines.append(row("all", summary["overall"]))
    return "\n".join(lines)


def describe_result(result: EpisodeResult) -> str:
    """One line for the progress log: outcome, key, steps, seconds and why (an error, an early stop, notes)."""
    mark = {True: "ok  ", False: "fail", None: "??? "}[result.success] if result.status == "done" else "err "
    detail = f"{result.error_kind}: {result.error}" if result.error else result.early_stop or result.eval_status
    detail = detail or "; ".join(result.eval_notes)
    return f"{mark} {result.key:<28} {result.steps:>4} steps {result.seconds:>6.1f} s  {detail}"
