"""Policy requests off the control thread: the loop hands over an observation (or a reset, or a
reconnect probe) and goes on; the worker thread talks to the server and leaves the result for the
loop to collect. The loop may wait for a result within its tick (``wait``), bounded, so a fast
policy's action runs on the observation it was computed from. One request is in flight at a time."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from robot.policy_client import PolicyClient


@dataclass
class PolicyResult:
    kind: str  # "infer" | "reset" | "connect"
    step: int  # the episode's action step when the observation was taken (robot.chunking)
    episode: int = -1  # the episode the request belonged to: a reply from an earlier one is dropped
    capture_time: float = 0.0  # when the observation was captured (monotonic seconds)
    actions: np.ndarray | None = None  # (chunk, dim)
    timing: dict[str, float] | None = None
    error: BaseException | None = None


class PolicyWorker:
    def __init__(self, client: PolicyClient) -> None:
        self.client = client
        self._job: tuple[str, Any, int, int, float] | None = None
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

    def submit(
        self, kind: str, payload: Any = None, step: int = 0, episode: int = -1, capture_time: float = 0.0
    ) -> bool:
        """Hand over a job; False (and nothing done) while another is in flight."""
        with self._wake:
            if self._job is not None:
                return False
            self._job = (kind, payload, step, episode, capture_time)
            self._wake.notify_all()
            return True

    def wait(self, deadline: float) -> bool:
        """Block until a result is ready or the monotonic clock reaches ``deadline``; whether one is."""
        with self._wake:
            while not self._results:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._wake.wait(remaining)
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
                kind, payload, step, episode, capture_time = self._job  # type: ignore[misc]
            result = PolicyResult(kind, step, episode, capture_time)
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
            with self._wake:
                self._results.append(result)
                self._job = None
                self._wake.notify_all()
