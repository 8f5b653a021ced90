"""The operator's e-stop latch: asked for from any thread (``POST /estop``, SIGUSR1, the e-stop file),
latched by the control thread at its next tick, held until the operator resumes with the file gone."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any


class EstopLatch:
    """One e-stop, from request to resume, in one object: the request may come from any thread, only the
    control thread latches it (so it takes effect at a tick boundary, and the log says which), and the
    rules live here rather than in the loop: the first request wins until a resume; the e-stop file is a
    request as long as it exists, so a resume is refused until it is removed; every latched e-stop is
    logged with the tick it was asked for and the tick it took effect (the status and summary report it)."""

    def __init__(self, estop_file: Path) -> None:
        self.estop_file = estop_file
        self.log: list[dict[str, Any]] = []  # {"source", "requested_tick", "effective_tick"} per latched e-stop
        self._lock = threading.Lock()
        self._request: tuple[str, int] | None = None  # (source, tick) of the pending or latched e-stop
        self._resume_requested = False
        self._latched_at: int | None = None  # the tick it took effect; None while not latched

    def request(self, source: str, tick: int) -> None:
        """Ask for an e-stop (any thread); it latches at the control thread's next ``latch_pending``."""
        with self._lock:
            if self._request is None:
                self._request = (source, tick)

    def request_resume(self) -> None:
        """Ask to resume (any thread); the control thread decides at its next tick."""
        with self._lock:
            self._resume_requested = True

    @property
    def latched(self) -> bool:
        return self._latched_at is not None

    def latch_pending(self, tick: int) -> str | None:
        """At the start of ``tick`` (control thread): an e-stop file that exists is a request; a request not
        latched yet is latched now and its source returned (the caller stops the robot), else None."""
        if self._request is None and self.estop_file.exists():
            self.request(f"file {self.estop_file}", tick)
        with self._lock:
            request = self._request
        if request is None or self._latched_at is not None:
            return None
        source, requested_tick = request
        self._latched_at = tick
        self.log.append({"source": source, "requested_tick": requested_tick, "effective_tick": tick})
        return source

    def take_resume_request(self) -> bool:
        """Whether the operator asked to resume since the last call (the request is used up)."""
        with self._lock:
            asked, self._resume_requested = self._resume_requested, False
        return asked

    def resume_refusal(self) -> str | None:
        """Why a resume may not go ahead now (the e-stop file is still there), or None."""
        if self.estop_file.exists():
            return f"resume refused: remove the e-stop file {self.estop_file} first"
        return None

    def clear(self) -> None:
        """The operator resumed: a new request may latch again (the log keeps the old ones)."""
        with self._lock:
            self._request = None
        self._latched_at = None
