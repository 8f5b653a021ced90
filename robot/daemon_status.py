"""What the daemon shows and takes from the operator: its run summary, a local HTTP endpoint
(``GET /status``; ``POST /estop``, ``/resume``, ``/stop``; loopback, token and origin checked), the
one-line live display and the metrics JSON lines. The numbers they show come from ``robot.loop_stats``."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from data_tools.errors import UserFacingError
from robot.endpoint_access import check_allowed_origins, check_bind, host_refusal, origin_refusal, token_accepted


@dataclass
class EpisodeSummary:
    index: int
    steps: int
    success: bool
    ended_by: str  # "robot" (the task ended it), "max_steps", "stop" (operator / signal)
    dataset: str | None


@dataclass
class DaemonSummary:
    run_dir: str
    episodes: list[EpisodeSummary] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    policy_actions: int = 0  # ticks that sent a (filtered) policy action, not a hold or rest
    dropped: int = 0
    holds: int = 0
    safe_stops: int = 0
    safe_stop_reasons: list[str] = field(default_factory=list)
    slips: int = 0
    jitter_p50_ms: float = 0.0
    jitter_p99_ms: float = 0.0
    skipped_steps: int = 0  # chunk actions that arrived after their tick had passed (robot.chunking)
    stale_chunks: int = 0  # replies with no action left for the present: dropped whole, the robot held
    stale_replies: int = 0  # replies to an observation of an earlier episode: dropped
    action_latency_p50_ms: float = 0.0  # observation captured -> first action from it sent
    action_latency_p99_ms: float = 0.0

    def format(self) -> str:
        lines = [f"run      : {self.run_dir}"]
        for episode in self.episodes:
            mark = "ok  " if episode.success else "fail"
            lines.append(f"{mark} episode {episode.index}: {episode.steps} steps, ended by {episode.ended_by}")
        lines.append(
            f"loop     : jitter p50 {self.jitter_p50_ms:.2f} ms, p99 {self.jitter_p99_ms:.2f} ms, {self.slips} slips"
        )
        lines.append(
            f"policy   : observation to action p50 {self.action_latency_p50_ms:.1f} ms, p99 "
            f"{self.action_latency_p99_ms:.1f} ms; {self.skipped_steps} late chunk steps skipped, "
            f"{self.stale_chunks} stale chunks, {self.stale_replies} replies from an earlier episode"
        )
        lines.append(
            f"safety   : {dict(self.counts)}; {self.dropped} dropped, {self.holds} holds, {self.safe_stops} safe stops"
        )
        lines += [f"safe stop: {reason}" for reason in self.safe_stop_reasons]
        return "\n".join(lines)


class StatusEndpointError(UserFacingError, OSError):
    """The control endpoint cannot listen where it was told (a port in use, an address not on this machine)."""


def live_line(status: dict[str, Any]) -> str:
    counts = status["counts"]
    return (
        f"{status['state']:<12} ep {status['episode']} tick {status['tick']:>5} | {status['rate_hz']:5.1f} Hz "
        f"jitter p99 {status['jitter_p99_ms']:5.1f} ms | policy {status['policy_latency_ms']:6.1f} ms "
        f"obs->act {status['action_latency_p50_ms']:6.1f} ms skip {status['skipped_steps']} | "
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


def _log_one_line(what: str, error: BaseException | None) -> None:
    """One line on stderr for an unexpected error of the status endpoint (the live line stays readable)."""
    detail = f"{type(error).__name__}: {error}" if error is not None else "unknown error"
    print(f"\n{what}: {detail}"[:300], file=sys.stderr, flush=True)


class StatusServer:
    """``GET /status`` (JSON); ``POST /estop``, ``/resume``, ``/stop`` call the daemon's controls
    (no body needed); ``GET /healthz`` says only that it is up.

    Who may call it (``robot.endpoint_access``): it binds loopback unless given a token; with a token
    every route but ``/healthz`` needs ``Authorization: Bearer TOKEN``; a request from a web page of
    another origin (browsers send ``Origin``, ``no-cors`` included) is refused, as is a ``Host`` that
    does not name this endpoint (DNS rebinding). Refusals are JSON errors, nothing is called."""

    def __init__(
        self,
        host: str,
        port: int,
        status: Callable[[], dict[str, Any]],
        actions: dict[str, Callable[[], str]],
        token: str | None = None,
        allowed_origins: list[str] | None = None,
        token_hint: str = "set a token in AGENT_DAEMON_TOKEN",
    ) -> None:
        check_bind(host, token, "status endpoint", token_hint)
        origins = check_allowed_origins(allowed_origins or [], "status endpoint")
        reporter_status, reporter_actions = status, actions

        class Handler(BaseHTTPRequestHandler):
            timeout = 30  # seconds a client may take to send its request; a stalled one is dropped

            def _reply(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(data)

            def _refusal(self, route: str) -> tuple[int, str] | None:
                """Why this request may not go on (status code, message), or None."""
                reason = host_refusal(self.headers.get("Host"), host) or origin_refusal(
                    self.headers.get("Origin"), self.headers.get("Host"), origins
                )
                if reason is not None:
                    return HTTPStatus.FORBIDDEN, reason
                if route != "healthz" and not token_accepted(self.headers.get("Authorization"), token):
                    return HTTPStatus.UNAUTHORIZED, (
                        "missing or wrong bearer token; send the header 'Authorization: Bearer TOKEN' "
                        "(the daemon reads TOKEN from its status.token_env variable)"
                    )
                return None

            def _handle(self, route_request: Callable[[str], None]) -> None:
                """Guard, then route; an exception in either is a JSON error reply, never a dropped connection."""
                route = self.path.split("?", 1)[0].strip("/")
                try:
                    refusal = self._refusal(route)
                except Exception as error:  # a header the guard cannot read (an Origin with port "abc")
                    self.close_connection = True
                    self._reply(HTTPStatus.BAD_REQUEST, {"error": f"malformed request headers ({error})"[:300]})
                    return
                if refusal is not None:
                    self._reply(refusal[0], {"error": refusal[1]})
                    return
                try:
                    route_request(route)
                except (ConnectionError, TimeoutError):
                    raise  # the client went away: nothing to answer (the server drops it silently)
                except Exception as error:
                    _log_one_line(f"status endpoint: {self.command} {self.path[:100]} failed", error)
                    self.close_connection = True
                    with contextlib.suppress(OSError):  # a reply may already be half sent
                        self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error ({error})"[:300]})

            def _get(self, route: str) -> None:
                if route == "healthz":
                    self._reply(HTTPStatus.OK, {"status": "ok"})
                elif route in ("", "status"):
                    self._reply(HTTPStatus.OK, reporter_status())
                else:
                    self._reply(HTTPStatus.NOT_FOUND, {"error": f"no {self.path[:100]}; use GET /status"})

            def _post(self, route: str) -> None:
                action = reporter_actions.get(route)
                if action is None:
                    names = ", ".join(f"/{name}" for name in reporter_actions)
                    self._reply(HTTPStatus.NOT_FOUND, {"error": f"no {self.path[:100]}; use POST {names}"})
                    return
                self._reply(HTTPStatus.OK, {"ok": True, "message": action()})

            def do_GET(self) -> None:
                self._handle(self._get)

            def do_POST(self) -> None:
                self._handle(self._post)

            def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
                """Malformed requests and other methods (PUT, DELETE...) get a JSON error too."""
                self.close_connection = True
                self._reply(code, {"error": message or HTTPStatus(code).phrase})

            def log_message(self, *args: Any) -> None:  # keep the terminal for the live line
                return None

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

            def handle_error(self, request: Any, client_address: Any) -> None:
                """A client that hung up or stalled is no news; anything else is one line, not a traceback
                over the operator's live display."""
                error = sys.exc_info()[1]
                if isinstance(error, (ConnectionError, TimeoutError)):
                    return
                _log_one_line(f"status endpoint: request from {client_address[0]} failed", error)

        try:
            self.server = Server((host, port), Handler)
        except OSError as error:
            raise StatusEndpointError(
                f"the status endpoint cannot listen on {host}:{port} ({error.strerror or error}); "
                "pick another status.port (0: any free port), or stop the program using it"
            ) from None
        self.server.daemon_threads = True
        bound_port = self.server.server_address[1]
        self.url = f"http://[{host}]:{bound_port}" if ":" in host else f"http://{host}:{bound_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="daemon-status", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self.server.shutdown()
        self.server.server_close()
