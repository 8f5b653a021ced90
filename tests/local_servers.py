"""Helpers the tests share: tiny HTTP servers on loopback and condition waits with generous bounds.

(``tests/`` is on ``sys.path`` in a pytest run, next to ``conftest.py``.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar

T = TypeVar("T")
LOADED_MACHINE_BOUND_S = 600.0  # machines loaded by other work run several times slower than idle ones


def serve_http(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """``handler`` served on 127.0.0.1 at a free port from a daemon thread; stop it with ``stop_http``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stop_http(*servers: ThreadingHTTPServer) -> None:
    for server in servers:
        server.shutdown()
        server.server_close()


def send_body(handler: BaseHTTPRequestHandler, body: bytes | str, content_type: str, status: int = 200) -> None:
    """One complete reply: status, Content-Type, Content-Length and the body."""
    data = body.encode() if isinstance(body, str) else body
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that keeps the test output free of access logs."""

    def log_message(self, *args: object) -> None:
        return None


def wait_for(
    condition: Callable[[], T],
    what: str = "the condition",
    timeout_s: float = LOADED_MACHINE_BOUND_S,
    interval_s: float = 0.02,
) -> T:
    """Poll ``condition`` until it is truthy and return its value; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)
