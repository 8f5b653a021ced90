"""What the control daemon measures of its own run: the loop's timing and what became of the policy's
actions, reported by the status endpoint, the metrics lines and the run's summary."""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np


class LoopStats:
    """The daemon's timings and action counters, kept in one object so that the live status and the
    summary report the same numbers from the same records: tick periods (rate, jitter) and slips, the
    policy's round trips and the observation-to-action latency (a rolling window of ``window`` for the
    live view, the whole run for the summary), and the policy actions run, dropped by the safety filter,
    skipped late, and thrown away stale."""

    def __init__(self, period_s: float, window: int = 500) -> None:
        self.period_s = period_s
        self.periods: list[float] = []  # every tick period of the run, for the summary's jitter
        self.recent: deque[float] = deque(maxlen=window)
        self.round_trips_ms: deque[float] = deque(maxlen=window)  # policy round trips
        self.action_latency_ms: deque[float] = deque(maxlen=window)  # observation captured -> first action sent
        self.all_action_latency_ms: list[float] = []  # the same over the whole run, for the summary
        self.slips = 0  # ticks skipped because the loop fell more than a period behind
        self.skipped_steps = 0  # chunk actions whose tick had passed (robot.chunking)
        self.stale_chunks = 0  # chunks with nothing left for the present: dropped whole
        self.stale_replies = 0  # replies to an observation of an earlier episode: dropped
        self.policy_actions = 0  # ticks that sent a (filtered) policy action, not a hold or rest
        self.dropped = 0  # policy actions the safety filter refused (NaN, wrong size)

    def add_period(self, seconds: float) -> None:
        self.periods.append(seconds)
        self.recent.append(seconds)

    def add_round_trip(self, milliseconds: float) -> None:
        self.round_trips_ms.append(milliseconds)

    def last_round_trip_s(self) -> float:
        """The latest policy round trip in seconds (0 before the first)."""
        return self.round_trips_ms[-1] / 1e3 if self.round_trips_ms else 0.0

    def add_action_latency(self, seconds: float) -> None:
        self.action_latency_ms.append(seconds * 1e3)
        self.all_action_latency_ms.append(seconds * 1e3)

    def expected_latency_s(self, recent: int = 20) -> float:
        """The median of the last ``recent`` policy round trips (0 before the first)."""
        if not self.round_trips_ms:
            return 0.0
        return float(np.median(list(self.round_trips_ms)[-recent:])) / 1e3

    @staticmethod
    def percentiles_ms(values: Any) -> tuple[float, float]:
        """p50 and p99 of ``values`` (0, 0 when there are none)."""
        if len(values) == 0:
            return 0.0, 0.0
        return float(np.percentile(values, 50)), float(np.percentile(values, 99))

    @staticmethod
    def jitter_ms(periods: Any, period_s: float) -> tuple[float, float]:
        """p50 and p99 of |period - nominal| in milliseconds."""
        if len(periods) == 0:
            return 0.0, 0.0
        deviation = np.abs(np.asarray(periods) - period_s) * 1e3
        return float(np.percentile(deviation, 50)), float(np.percentile(deviation, 99))

    def snapshot(self) -> dict[str, float]:
        """The live view over the recent window (the status endpoint and the metrics lines)."""
        p50, p99 = self.jitter_ms(self.recent, self.period_s)
        rate = 1.0 / float(np.mean(self.recent)) if self.recent else 0.0
        latency = float(np.median(self.round_trips_ms)) if self.round_trips_ms else 0.0
        action_p50, action_p99 = self.percentiles_ms(self.action_latency_ms)
        return {
            "rate_hz": rate,
            "jitter_p50_ms": p50,
            "jitter_p99_ms": p99,
            "policy_latency_ms": latency,
            "action_latency_p50_ms": action_p50,
            "action_latency_p99_ms": action_p99,
            "skipped_steps": self.skipped_steps,
            "stale_chunks": self.stale_chunks,
            "stale_replies": self.stale_replies,
            "slips": self.slips,
        }

    def totals(self) -> dict[str, float | int]:
        """The whole run, under the names of ``DaemonSummary``'s fields."""
        jitter_p50, jitter_p99 = self.jitter_ms(self.periods, self.period_s)
        action_p50, action_p99 = self.percentiles_ms(self.all_action_latency_ms)
        return {
            "policy_actions": self.policy_actions,
            "dropped": self.dropped,
            "slips": self.slips,
            "jitter_p50_ms": jitter_p50,
            "jitter_p99_ms": jitter_p99,
            "skipped_steps": self.skipped_steps,
            "stale_chunks": self.stale_chunks,
            "stale_replies": self.stale_replies,
            "action_latency_p50_ms": action_p50,
            "action_latency_p99_ms": action_p99,
        }
