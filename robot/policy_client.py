"""``PolicyClient``: a remote policy behind the policy protocol, so ``agent run``, the GRPO rollouts
and the robot daemon use it exactly like a local one. It talks to ``agent serve`` and to any server of
openpi's protocol (``robot.policy_protocol``): it sends each observation as openpi's bare map and reads
``reply["actions"]``, (chunk, dim) or (dim,).

``act(observation)`` returns the server's actions: a (dim,) action for a single-action policy, a
(chunk, dim) array for a chunking one (``act_chunk`` always returns the 2-D form with the server's
timing). ``reset(task)`` starts an episode: our server gets the task (its ``reset`` message); an openpi
server has no reset, so the task's ``instruction`` rides in every observation as openpi's ``prompt``.
What an openpi server's metadata does not say takes :class:`PolicySpec`'s defaults, and ``action_dim``
and ``chunk_length`` are taken from its first reply.

A lost connection is re-opened with exponential back-off, and the episode's task is sent again after a
reconnect; ``retry_for_s`` bounds how long one call keeps trying (0: one attempt, for callers such as
the daemon that must never block). An error reply raises :class:`PolicyServerError`; an openpi server
closes the connection after one, and the next call reconnects at once. A request that times out drops
the connection too, so a late reply can never be taken for the next request's.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException
from websockets.sync.client import ClientConnection, connect

from data_tools.errors import UserFacingError
from robot.policy_protocol import ERROR_CODES, PolicySpec
from robot.wire import WireError, pack, unpack

TOKEN_ENV = "AGENT_POLICY_TOKEN"
MAX_REPLY_BYTES = 1 << 30
OPENPI_TEXT_KEY = "prompt"  # where an openpi server reads the instruction


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
    """A websocket client of a policy server (see the module docstring)."""

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
        self._from_first_reply: set[str] = set()  # spec fields the metadata left out, read off the first reply
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
            first = connection.recv(timeout=self.connect_timeout_s)
            metadata = unpack(first, max_bytes=1 << 26) if isinstance(first, bytes) else first
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
        if not isinstance(metadata, dict):
            connection.close()
            raise PolicyServerError(
                "malformed_reply", f"{self.url} did not start with a metadata map (got {str(metadata)[:300]!r})"
            )
        if self.spec is not None:  # connected before
            self.reconnects += 1
        self._connection, self.spec = connection, PolicySpec.from_metadata(metadata)
        self._from_first_reply = {"action_dim", "chunk_length"} - metadata.keys()
        self._delay, self._next_attempt = self.backoff_s[0], 0.0
        if self._task is not None and self._speaks_reset:  # our server keeps one episode per connection
            self._control({"type": "reset", "task": self._task})
        return self.spec

    @property
    def _speaks_reset(self) -> bool:
        return self.spec is not None and self.spec.server_kind == "agent"

    def _back_off(self) -> None:
        self._next_attempt = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, self.backoff_s[1])

    def _drop(self, back_off: bool = True) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):  # the connection is gone either way
                self._connection.close()
        self._connection = None
        if back_off:
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
    def _exchange(self, message: dict[str, Any], request_id: int | None = None) -> dict[str, Any]:
        """Send one request and read its reply (skipping replies to earlier ids, for control messages)."""
        assert self._connection is not None
        try:
            self._connection.send(pack(message))
            while True:
                frame = self._connection.recv(timeout=self.request_timeout_s)
                if isinstance(frame, str):
                    self._raise_text_error(frame)
                reply = unpack(frame, max_bytes=MAX_REPLY_BYTES)
                if request_id is None or not isinstance(reply, dict) or reply.get("id") in (None, request_id):
                    break  # a reply to an earlier, abandoned request is skipped
        except (ConnectionClosed, OSError, TimeoutError) as error:
            self._drop()
            raise PolicyUnavailableError(f"lost the policy server at {self.url}: {error}") from None
        except WireError as error:
            raise PolicyServerError("malformed_reply", f"the server's reply cannot be decoded: {error}") from None
        if not isinstance(reply, dict):
            raise PolicyServerError("malformed_reply", f"the server answered {type(reply).__name__}, not a map")
        if reply.get("type") == "error":
            raise PolicyServerError(str(reply.get("code")), str(reply.get("message")))
        return reply

    def _raise_text_error(self, text: str) -> None:
        """A text frame is an error (openpi's convention). Ours is a typed JSON error and the connection
        stays; anything else (openpi's traceback) is followed by a close, so reconnect on the next call."""
        try:
            error = json.loads(text)
        except ValueError:
            error = None
        if isinstance(error, dict) and error.get("code") in ERROR_CODES:
            raise PolicyServerError(str(error["code"]), str(error.get("message")))
        self._drop(back_off=False)
        raise PolicyServerError("policy_error", f"the server reported an error and closed: {text[-2000:]}")

    def _control(self, message: dict[str, Any]) -> dict[str, Any]:
        self._next_id += 1
        return self._exchange({**message, "id": self._next_id}, self._next_id)

    def _with_retries(self, request: Any) -> Any:
        """``request()`` on an open connection, connecting (with back-off) for up to ``retry_for_s``."""
        give_up = time.monotonic() + self.retry_for_s
        while True:
            try:
                self.connect()
                return request()
            except PolicyUnavailableError:
                if time.monotonic() >= give_up:
                    raise
                time.sleep(max(0.0, min(self._next_attempt - time.monotonic(), give_up - time.monotonic())) + 0.01)

    def reset(self, task: dict[str, Any]) -> None:
        """Start an episode; ``task`` holds wire-friendly values (instruction, task name, indices)."""
        self._task = {key: value for key, value in task.items() if key != "env"}  # a local env never travels

        def send_reset() -> None:
            if self._speaks_reset:
                self._control({"type": "reset", "task": self._task})

        self._with_retries(send_reset)

    def act_chunk(self, observation: dict[str, Any]) -> ActionChunk:
        sent = time.perf_counter()
        reply = self._with_retries(lambda: self._exchange(self._outgoing(observation)))
        actions = self._actions_of(reply)
        timing = dict(reply.get("server_timing") or reply.get("timing") or {})
        timing["round_trip_ms"] = (time.perf_counter() - sent) * 1e3
        self.last_timing = timing
        return ActionChunk(actions=actions, timing=timing)

    def _outgoing(self, observation: dict[str, Any]) -> dict[str, Any]:
        """The observation as the server reads it: unchanged for ours; for an openpi server, the
        instruction (the observation's own, else the episode's) travels as openpi's ``prompt``."""
        if self._speaks_reset:
            return observation
        message = dict(observation)
        instruction = message.pop("instruction", None)
        if instruction is None and self._task is not None:
            instruction = self._task.get("instruction")
        if instruction is not None and OPENPI_TEXT_KEY not in message:
            message[OPENPI_TEXT_KEY] = instruction
        return message

    def _actions_of(self, reply: dict[str, Any]) -> np.ndarray:
        """``reply["actions"]`` as (chunk, dim) float32; a (dim,) reply is a chunk of one."""
        actions = reply.get("actions")
        if not isinstance(actions, np.ndarray) or actions.ndim not in (1, 2) or actions.size == 0:
            shown = f"shape {actions.shape}" if isinstance(actions, np.ndarray) else type(actions).__name__
            raise PolicyServerError(
                "malformed_reply",
                f"the reply's 'actions' is {'missing' if actions is None else shown}, not a (chunk, dim) or (dim,) "
                f"array (the reply has keys {sorted(map(str, reply))[:10]})",
            )
        if actions.dtype.kind not in "fiu":
            raise PolicyServerError("malformed_reply", f"the reply's actions are {actions.dtype}, not numbers")
        chunk = np.asarray(actions, dtype=np.float32).reshape(-1, actions.shape[-1])
        if self._from_first_reply and self.spec is not None:  # an openpi server's metadata did not say
            if "action_dim" in self._from_first_reply:
                self.spec.action_dim = chunk.shape[1]
            if "chunk_length" in self._from_first_reply:
                self.spec.chunk_length = chunk.shape[0]
            self._from_first_reply = set()
        return chunk

    def act(self, observation: dict[str, Any]) -> np.ndarray:
        chunk = self.act_chunk(observation).actions
        return chunk[0] if len(chunk) == 1 else chunk
