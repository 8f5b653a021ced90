"""What the daemon shows and takes from the operator: loop statistics (rate, jitter, slips), a local
HTTP endpoint (``GET /status``; ``POST /estop``, ``/resume``, ``/stop``), the one-line live display
and the metrics JSON lines."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np


class LoopStats:
    """Tick periods and lateness of the control loop (a rolling window for the display, all for the summary)."""

    def __init__(self, period_s: float, window: int = 500) -> None:
        self.period_s = period_s
        self.periods: list[float] = []
        self.recent: deque[float] = deque(maxlen=window)
        self.latency_ms: deque[float] = deque(maxlen=window)
        self.slips = 0  # ticks skipped because the loop fell more than a period behind

    def add_period(self, seconds: float) -> None:
        self.periods.append(seconds)
        self.recent.append(seconds)

    @staticmethod
    def jitter_ms(periods: Any, period_s: float) -> tuple[float, float]:
        """p50 and p99 of |period - nominal| in milliseconds."""
        if len(periods) == 0:
            return 0.0, 0.0
        deviation = np.abs(np.asarray(periods) - period_s) * 1e3
        return float(np.percentile(deviation, 50)), float(np.percentile(deviation, 99))

    def snapshot(self) -> dict[str, float]:
        p50, p99 = self.jitter_ms(self.recent, self.period_s)
        rate = 1.0 / float(np.mean(self.recent)) if self.recent else 0.0
        latency = float(np.median(self.latency_ms)) if self.latency_ms else 0.0
        return {
            "rate_hz": rate,
            "jitter_p50_ms": p50,
            "jitter_p99_ms": p99,
            "policy_latency_ms": latency,
            "slips": self.slips,
        }


def live_line(status: dict[str, Any]) -> str:
    counts = status["counts"]
    return (
        f"{status['state']:<12} ep {status['episode']} tick {status['tick']:>5} | {status['rate_hz']:5.1f} Hz "
        f"jitter p99 {status['jitter_p99_ms']:5.1f} ms | policy {status['policy_latency_ms']:6.1f} ms | "
        f"queue {status['queue_depth']:>2} | clip {counts.get('clipped', 0)} drop {status['dropped']} | "
        f"{status['reason'][:60]}"
    )


class StatusReporter:
    """Prints the live line (stderr, when it is a terminal) and appends metrics lines every ``every_s``."""

    def __init__(self, metrics_path: Path, every_s: float, live: bool) -> None:
        self.metrics_path = metrics_path
        self.every_s = every_s
        self.live = live and sys.stderr.isatty()
        self._last = 0.0

    def maybe_report(self, status: Callable[[], dict[str, Any]], now: float) -> None:
        if now - self._last < self.every_s:
            return
        self._last = now
        snapshot = status()
        with self.metrics_path.open("a") as metrics:
            metrics.write(json.dumps({"time": time.time(), **snapshot}) + "\n")
        if self.live:
            print("\r" + live_line(snapshot), end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.live:
            print(file=sys.stderr)


class StatusServer:
    """``GET /status`` (JSON); ``POST /estop``, ``/resume``, ``/stop`` call the daemon's controls."""

    def __init__(
        self, host: str, port: int, status: Callable[[], dict[str, Any]], actions: dict[str, Callable[[], str]]
    ) -> None:
        reporter_status, reporter_actions = status, actions

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/") in ("", "/status"):
                    self._reply(HTTPStatus.OK, reporter_status())
                else:
                    self._reply(HTTPStatus.NOT_FOUND, {"error": f"no {self.path}; use GET /status"})

            def do_POST(self) -> None:
                action = reporter_actions.get(self.path.strip("/"))
                if action is None:
                    names = ", ".join(f"/{name}" for name in reporter_actions)
                    self._reply(HTTPStatus.NOT_FOUND, {"error": f"no {self.path}; use POST {names}"})
                    return
                self._reply(HTTPStatus.OK, {"ok": True, "message": action()})

            def log_message(self, *args: Any) -> None:  # keep the terminal for the live line
                return None

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="daemon-status", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
