"""Policy requests off the control thread: the loop hands over an observation (or a reset, or a
reconnect probe) and goes on; the worker thread talks to the server and leaves the result for the
loop to collect at its next tick. One request is in flight at a time."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from robot.policy_client import PolicyClient


@dataclass
class PolicyResult:
    kind: str  # "infer" | "reset" | "connect"
    tick: int  # the tick whose observation was sent
    actions: np.ndarray | None = None  # (chunk, dim)
    timing: dict[str, float] | None = None
    error: BaseException | None = None


class PolicyWorker:
    def __init__(self, client: PolicyClient) -> None:
        self.client = client
        self._job: tuple[str, Any, int] | None = None
        self._wake = threading.Condition()
        self._results: deque[PolicyResult] = deque()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="policy-worker", daemon=True)

    @property
    def busy(self) -> bool:
        return self._job is not None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread.ident is not None:
            self._thread.join(timeout=self.client.request_timeout_s + 2)

    def submit(self, kind: str, payload: Any = None, tick: int = 0) -> bool:
        """Hand over a job; False (and nothing done) while another is in flight."""
        with self._wake:
            if self._job is not None:
                return False
            self._job = (kind, payload, tick)
            self._wake.notify()
            return True

    def drain(self) -> list[PolicyResult]:
        results = []
        while self._results:
            results.append(self._results.popleft())
        return results

    def _run(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._job is not None or self._stopping)
                if self._stopping:
                    return
                kind, payload, tick = self._job  # type: ignore[misc]
            result = PolicyResult(kind, tick)
            try:
                if kind == "infer":
                    chunk = self.client.act_chunk(payload)
                    result.actions, result.timing = chunk.actions, chunk.timing
                elif kind == "reset":
                    self.client.reset(payload)
                else:
                    self.client.connect()
            except Exception as error:  # reported to the loop, which counts it and lets the watchdog act
                result.error = error
            self._results.append(result)
            with self._wake:
                self._job = None
