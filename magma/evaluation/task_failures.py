"""Per-task failures of a suite run (web, Android): one task that cannot run is recorded with a category and
a one-line reason, and the run goes on with the next task.

Categories: ``task`` (its config or input images), ``start_page`` (its start URL is blocked, does not answer
or never finishes loading), ``policy`` (the policy or its endpoint failed on this task), ``environment`` (a
step or the grading failed), ``device`` (the phone went away) and ``run_stopped`` (the run stopped on a
streak of failures before this task could be judged). ``--resume`` skips tasks that failed for a reason of
their own, and reruns the ``device`` and ``run_stopped`` ones (and, with ``--retry-errors``, all of them); a
task cut off by a kill has no line yet and is always rerun.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from data_tools.errors import UserFacingError

RERUN_ON_RESUME = ("device", "run_stopped")


class RunStoppedError(UserFacingError):
    """Several tasks in a row failed the same way: something every task needs is broken (an endpoint down)."""


class EpisodePhaseError(RuntimeError):
    """An error inside an episode, tagged with the phase it came from (``policy`` or ``environment``)."""

    def __init__(self, phase: str, error: BaseException) -> None:
        super().__init__(str(error))
        self.phase = phase
        self.error = error


def failure_reason(error: BaseException) -> str:
    """One line: a user-facing message as it is, anything else with its type name."""
    inner = error.error if isinstance(error, EpisodePhaseError) else error
    lines = str(inner).strip().splitlines()
    first = lines[0] if lines else ""
    if isinstance(inner, UserFacingError):
        return first or type(inner).__name__
    return f"{type(inner).__name__}: {first}" if first else type(inner).__name__


def failure_category(error: BaseException, phase: str, device_errors: tuple[type, ...] = ()) -> str:
    """The category of ``error`` raised while the runner was in ``phase`` (see the module docstring)."""
    inner = error.error if isinstance(error, EpisodePhaseError) else error
    if device_errors and isinstance(inner, device_errors):
        return "device"
    return error.phase if isinstance(error, EpisodePhaseError) else phase


def should_run(record: dict[str, Any] | None, retry_errors: bool) -> bool:
    """Does ``--resume`` run this task again, given its last line in results.jsonl (None: none yet)."""
    if record is None:
        return True
    if record.get("status") == "done":
        return False
    return retry_errors or record.get("error_kind") in RERUN_ON_RESUME or record.get("error_kind") is None


@dataclass
class FailureStreak:
    """Counts tasks in a row (across workers) that failed with the same category; ``limit`` of them stop the
    run (0: never). The keys of the streak are kept so that they can be marked ``run_stopped``."""

    limit: int = 5
    category: str | None = None
    keys: list[str] = field(default_factory=list)

    def add(self, key: str, status: str, category: str | None) -> bool:
        """Count one finished task; True when the streak has reached the limit."""
        if status == "done" or category is None:
            self.category, self.keys = None, []
            return False
        if category != self.category:
            self.category, self.keys = category, []
        self.keys.append(key)
        return bool(self.limit) and len(self.keys) >= self.limit
