"""``PolicyClient``: a remote policy (``agent serve``) behind the policy protocol, so ``agent run``, the
GRPO rollouts and the robot daemon use it exactly like a local one.

``act(observation)`` returns the server's actions: a (dim,) action for a single-action policy, a
(chunk, dim) array for a chunking one (``act_chunk`` always returns the 2-D form with the server's
timing). A lost connection is re-opened with exponential back-off, and the episode's task is sent
again after a reconnect; ``retry_for_s`` bounds how long one call keeps trying (0: one attempt, for
callers such as the daemon that must never block).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException
from websockets.sync.client import ClientConnection, connect

from data_tools.errors import UserFacingError
from robot.policy_protocol import PolicySpec
from robot.wire import pack, unpack

TOKEN_ENV = "AGENT_POLICY_TOKEN"


class PolicyServerError(UserFacingError, RuntimeError):
    """The server refused a request (``code``: one of ``robot.policy_protocol.ERROR_CODES``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"policy server: {code}: {message}")
        self.code = code


class PolicyUnavailableError(UserFacingError, ConnectionError):
    """No connection to the policy server could be had (yet); the client keeps backing off."""


@dataclass
class ActionChunk:
    actions: np.ndarray  # (chunk, dim) float32
    timing: dict[str, float] = field(default_factory=dict)  # server's queue/infer/server ms + round_trip_ms


class PolicyClient:
    """A websocket client of the policy server (see the module docstring)."""

    def __init__(
        self,
        url: str = "ws://127.0.0.1:8700",
        token: str | None = None,
        request_timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        retry_for_s: float = 30.0,
        backoff_s: tuple[float, float] = (0.1, 5.0),
    ) -> None:
        self.url = url
        self.token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self.request_timeout_s = request_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.retry_for_s = retry_for_s
        self.backoff_s = backoff_s
        self.spec: PolicySpec | None = None
        self._connection: ClientConnection | None = None
        self._task: dict[str, Any] | None = None
        self._next_id = 0
        self._delay = backoff_s[0]
        self._next_attempt = 0.0
        self.reconnects = 0
        self.last_timing: dict[str, float] = {}

    # ---- connection ---------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connection is not None

    def connect(self) -> PolicySpec:
        """Open the connection now (or raise PolicyUnavailableError while backing off); the server's spec."""
        if self._connection is not None:
            return self.spec  # type: ignore[return-value]
        now = time.monotonic()
        if now < self._next_attempt:
            raise PolicyUnavailableError(
                f"policy server {self.url} unreachable; next attempt in {self._next_attempt - now:.2f} s"
            )
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            connection = connect(
                self.url,
                additional_headers=headers,
                open_timeout=self.connect_timeout_s,
                max_size=None,
                compression=None,
                close_timeout=1.0,
                proxy=None,
                legacy=True,
            )
            metadata = unpack(connection.recv(timeout=self.connect_timeout_s), max_bytes=1 << 26)
        except InvalidStatus as error:
            body = error.response.body.decode("utf-8", "replace")[:300] if error.response.body else ""
            raise PolicyServerError(
                "unauthorized" if error.response.status_code == 401 else "http_error",
                f"{self.url} answered HTTP {error.response.status_code} {body}; check --token / {TOKEN_ENV}",
            ) from None
        except InvalidURI as error:
            raise PolicyServerError("bad_url", f"{error}; use ws://HOST:PORT") from None
        except (OSError, TimeoutError, WebSocketException) as error:
            self._back_off()
            raise PolicyUnavailableError(f"cannot reach the policy server at {self.url}: {error}") from None
        if not isinstance(metadata, dict) or metadata.get("type") != "metadata":
            connection.close()
            raise PolicyServerError("malformed_reply", f"{self.url} did not start with a metadata message")
        if self.spec is not None or self._task is not None:
            self.reconnects += 1
        self._connection, self.spec = connection, PolicySpec.from_metadata(metadata)
        self._delay, self._next_attempt = self.backoff_s[0], 0.0
        if self._task is not None:  # the server keeps one episode per connection: tell the new one
            self._request({"type": "reset", "task": self._task})
        return self.spec

    def _back_off(self) -> None:
        self._next_attempt = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, self.backoff_s[1])

    def _drop(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):  # the connection is gone either way
                self._connection.close()
        self._connection = None
        self._back_off()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
        self._connection = None

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- requests -----------------------------------------------------------------------------
    def _request(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self._connection is not None
        self._next_id += 1
        message = {**message, "id": self._next_id}
        try:
            self._connection.send(pack(message))
            while True:
                reply = unpack(self._connection.recv(timeout=self.request_timeout_s), max_bytes=1 << 30)
                if not isinstance(reply, dict) or reply.get("id") in (None, self._next_id):
                    break  # a reply to an earlier, abandoned request is skipped
        except (ConnectionClosed, OSError, TimeoutError) as error:
            self._drop()
            raise PolicyUnavailableError(f"lost the policy server at {self.url}: {error}") from None
        if not isinstance(reply, dict):
            raise PolicyServerError("malformed_reply", f"the server answered {type(reply).__name__}, not a map")
        if reply.get("type") == "error":
            raise PolicyServerError(str(reply.get("code")), str(reply.get("message")))
        return reply

    def _with_retries(self, message: dict[str, Any]) -> dict[str, Any]:
        give_up = time.monotonic() + self.retry_for_s
        while True:
            try:
                self.connect()
                return self._request(message)
            except PolicyUnavailableError:
                if time.monotonic() >= give_up:
                    raise
                time.sleep(max(0.0, min(self._next_attempt - time.monotonic(), give_up - time.monotonic())) + 0.01)

    def reset(self, task: dict[str, Any]) -> None:
        """Start an episode; ``task`` holds wire-friendly values (instruction, task name, indices)."""
        self._task = {key: value for key, value in task.items() if key != "env"}  # a local env never travels
        self._with_retries({"type": "reset", "task": self._task})

    def act_chunk(self, observation: dict[str, Any]) -> ActionChunk:
        sent = time.perf_counter()
        reply = self._with_retries({"type": "infer", "observation": observation})
        actions = reply.get("actions")
        if not isinstance(actions, np.ndarray) or actions.ndim != 2:
            raise PolicyServerError("malformed_reply", "an actions reply without a (chunk, dim) array")
        timing = dict(reply.get("timing") or {})
        timing["round_trip_ms"] = (time.perf_counter() - sent) * 1e3
        self.last_timing = timing
        return ActionChunk(actions=actions, timing=timing)

    def act(self, observation: dict[str, Any]) -> np.ndarray:
        chunk = self.act_chunk(observation).actions
        return chunk[0] if len(chunk) == 1 else chunk
