"""The policy server (``agent serve``): one process that loads a policy once and answers observations
with actions over a websocket in openpi's protocol (``robot.policy_protocol``, ``robot.wire``), so
openpi's ``WebsocketClientPolicy`` and our ``PolicyClient`` both drive it, plus ``GET /healthz`` and the
OpenAI API (``robot.openai_chat``: ``POST /v1/chat/completions``, whole or streamed as server-sent events,
and ``GET /v1/models``) on the same port. A streamed answer is made on the inference thread in its turn
like any request; the handler relays its chunks as they come, and a client that leaves stops it.

Who may call it follows ``robot.endpoint_access``: it binds 127.0.0.1 unless told otherwise and then
requires the token on every route but ``/healthz``, as ``Authorization: Bearer TOKEN`` or as openpi's
client sends its ``api_key`` (``Authorization: Api-Key TOKEN``); a request from a web page (it carries an
``Origin``) is refused unless that origin is listed with ``--allowed-origin``, and a ``Host`` that does
not name the server (DNS rebinding) is refused.

Message size is checked before anything is decoded, array bytes before they are viewed, observation
shapes, text length and image size before the policy sees them; a bad request gets one typed error
(a text frame openpi's client raises as RuntimeError, or an error map for our control envelope) and
the connection and the server go on serving. Clients take turns on the inference thread
(``robot.request_batcher``), so one client cannot hold it; a fast policy answers on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from data_tools.errors import UserFacingError
from robot.endpoint_access import check_allowed_origins, check_bind, host_refusal, origin_refusal, token_accepted
from robot.policy_protocol import (
    ERROR_CODES,
    InputLimits,
    ProtocolError,
    Request,
    canonical_observation,
    check_observation,
    check_request_values,
    error_reply,
    error_text,
    parse_request,
)
from robot.request_batcher import RequestBatcher
from robot.served_policy import ServedPolicy
from robot.wire import WireError, pack, unpack

MEGABYTE = 1024 * 1024
MAX_MESSAGE_MB = 1024.0  # the largest --max-message-mb: one request held in memory several times over
MAX_WAIT_MS = 1000.0  # a batch that waits longer than this for company only delays every client
MAX_INLINE_MS = 50.0  # holding the event loop longer than this would stall every other connection
MAX_BATCH = 1024
MAX_CHOICES_LIMIT = 128  # the upper bound of --max-choices: each choice is a row of the model's batch
MAX_COUNT = 2**40  # the upper bound of the count limits: any sane value, never an overflow
TRANSPORT_LIMIT_FACTOR = 4  # frames above this many times the limit are cut off by the websocket layer itself
HTTP_STATUS = {
    "malformed_request": 400,
    "bad_array": 400,
    "bad_shape": 400,
    "message_too_large": 413,
    "unauthorized": 401,
    "forbidden": 403,
    "prompt_too_long": 413,
    "image_too_large": 400,
    "overloaded": 429,
    "unsupported": 404,
    "policy_error": 500,
}
log = logging.getLogger("robot.policy_server")


class ServerConfigError(UserFacingError, ValueError):
    """A server setting that is unsafe or cannot work (a public bind without a token, a bad limit)."""


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8700
    token: str | None = None  # required unless host is a loopback address
    max_message_mb: float = 16.0
    batching: bool = True
    max_batch: int = 8
    max_wait_ms: float = 5.0  # how long a batch waits for other clients' requests
    allowed_origins: list[str] = field(default_factory=list)  # web pages (scheme://host[:port]) that may call it
    max_prompt_chars: int = 16_000  # text of one request, in characters (checked before tokenizing)
    max_prompt_tokens: int = 8192  # one prompt, in tokens, images included
    max_image_pixels: int = 4096 * 4096  # one image, checked from its header before it is decoded
    max_queued_per_client: int = 64  # requests one client may have waiting
    max_chat_items: int = 512  # messages and content parts of one chat request, counted together
    max_choices: int = 8  # a chat request's most choices (OpenAI's ``n``), rows of one generate call
    inline_max_ms: float = 1.0  # a policy whose inferences take less runs on the event loop (0: never)

    def check(self) -> None:
        check_bind(self.host, self.token, "agent serve", "set a bearer token with --token (or AGENT_POLICY_TOKEN)")
        self.allowed_origins = check_allowed_origins(self.allowed_origins, "agent serve --allowed-origin")
        check_range("port", self.port, 0, 65535, "a TCP port (0: any free port)", integer=True)
        check_range("max_message_mb", self.max_message_mb, 0.001, MAX_MESSAGE_MB, "megabytes")
        check_range("max_wait_ms", self.max_wait_ms, 0, MAX_WAIT_MS, "milliseconds")
        check_range("inline_max_ms", self.inline_max_ms, 0, MAX_INLINE_MS, "milliseconds")
        check_range("max_batch", self.max_batch, 1, MAX_BATCH, "requests", integer=True)
        check_range("max_choices", self.max_choices, 1, MAX_CHOICES_LIMIT, "choices per chat request", integer=True)
        for name in (
            "max_prompt_chars",
            "max_prompt_tokens",
            "max_image_pixels",
            "max_queued_per_client",
            "max_chat_items",
        ):
            check_range(name, getattr(self, name), 1, MAX_COUNT, "an integer", integer=True)

    def limits(self) -> InputLimits:
        return InputLimits(
            max_prompt_chars=self.max_prompt_chars,
            max_image_pixels=self.max_image_pixels,
            max_chat_items=self.max_chat_items,
        )


def check_range(name: str, value: Any, low: float, high: float, unit: str, integer: bool = False) -> None:
    """A numeric ``agent serve`` option: ServerConfigError unless ``value`` is a finite number (an integer
    with ``integer``) in ``low``..``high``."""
    kinds = (int,) if integer else (int, float)
    number = isinstance(value, kinds) and not isinstance(value, bool)
    if not number or not (isinstance(value, int) or math.isfinite(value)) or not low <= value <= high:
        flag = "--" + name.replace("_", "-")
        raise ServerConfigError(
            f"{name} is {repr(value)[:40]}; it must be {unit} from {low:g} to {high:g} (agent serve {flag})"
        )


class PolicyServer:
    """Serves one :class:`ServedPolicy`; ``run()`` blocks (``agent serve``), ``start_in_thread()`` does not."""

    def __init__(self, served: ServedPolicy, config: ServerConfig | None = None) -> None:
        self.served = served
        self.config = config or ServerConfig()
        self.config.check()
        self.max_bytes = int(self.config.max_message_mb * MEGABYTE)
        self.limits = self.config.limits()
        served.spec.max_message_bytes = self.max_bytes
        if served.processor is not None:
            served.processor.max_prompt_tokens = self.config.max_prompt_tokens
            served.processor.max_image_pixels = self.config.max_image_pixels
        self.batcher = RequestBatcher(
            served,
            self.config.max_batch if self.config.batching else 1,
            self.config.max_wait_ms / 1e3,
            self.config.max_queued_per_client,
            self.config.inline_max_ms / 1e3,
        )
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None
        self._websockets: set[web.WebSocketResponse] = set()
        self.started = int(time.time())  # /v1/models' "created": when this server loaded the model

    # ---- the app ------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=self.max_bytes)
        app.router.add_get("/", self._websocket)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.on_startup.append(self._startup)
        app.on_shutdown.append(self._close_websockets)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _startup(self, app: web.Application) -> None:
        self.batcher.start()

    async def _close_websockets(self, app: web.Application) -> None:
        for ws in list(self._websockets):
            await ws.close(code=1001, message=b"server shutting down")

    async def _cleanup(self, app: web.Application) -> None:
        await self.batcher.stop()

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Every route: a Host naming this server, no foreign web page; every route but /healthz: the token."""
        host = request.headers.get("Host")
        refusal = host_refusal(host, self.config.host) or origin_refusal(
            request.headers.get("Origin"), host, self.config.allowed_origins
        )
        if refusal:
            return _json_error("forbidden", f"{refusal} (agent serve --allowed-origin)")
        if request.path != "/healthz" and not token_accepted(
            _as_bearer(request.headers.get("Authorization")), self.config.token
        ):
            return _json_error(
                "unauthorized",
                "missing or wrong bearer token; send the header 'Authorization: Bearer TOKEN' (openpi's client: "
                "api_key=TOKEN)",
            )
        return await handler(request)

    async def _healthz(self, request: web.Request) -> web.Response:
        spec = self.served.spec
        return web.json_response(
            {"status": "ok", "policy": spec.policy, "model_id": spec.model_id, "actions": self.served.serves_actions}
        )

    async def _models(self, request: web.Request) -> web.Response:
        model = {
            "id": self.served.spec.model_id,
            "object": "model",
            "created": self.started,
            "owned_by": "embodied-agent-toolkit",
        }
        return web.json_response({"object": "list", "data": [model]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        from robot.openai_chat import parse_chat_request

        if self.served.chat is None:
            return _json_error(
                "unsupported", f"policy '{self.served.spec.policy}' has no language model; serve --policy magma"
            )
        try:
            body = json.loads(await request.read())
        except web.HTTPRequestEntityTooLarge:
            return _json_error("message_too_large", f"the request is over this server's limit of {self.max_bytes}")
        except (ValueError, RecursionError):  # not JSON, not UTF-8, nested beyond the parser's depth
            return _json_error("malformed_request", "the request body is not JSON; send an OpenAI chat request")
        if not isinstance(body, dict):
            return _json_error("malformed_request", "the request body must be a JSON object")
        client = ("chat", request.remote, str(body.get("user") or "")[:200])
        try:  # checked and decoded off the inference thread, so a bad request costs it nothing
            chat_request = await asyncio.to_thread(parse_chat_request, body, self.limits, self.config.max_choices)
            prepare = getattr(self.served.chat, "prepare", None)
            if prepare is not None:  # encoded and length-checked off the inference thread too
                chat_request = await asyncio.to_thread(prepare, chat_request)
            if chat_request.stream:
                return await self._chat_stream(request, chat_request, client)
            return web.json_response(await self.batcher.call(self.served.chat.complete, chat_request, client))
        except UserFacingError as error:
            return _json_error(_error_code(error, "malformed_request"), str(error), getattr(error, "param", None))
        except Exception as error:
            log.exception("chat completion failed")
            return _json_error("policy_error", f"the model failed: {type(error).__name__}: {error}")

    async def _chat_stream(self, request: web.Request, chat_request: Any, client: Any) -> web.StreamResponse:
        """Server-sent events as OpenAI streams them: each ``chat.completion.chunk`` as ``data: {json}`` the
        moment the inference thread makes it, then ``data: [DONE]``. The generation runs in the batcher's
        turn like any request; the handler only relays what it puts on a queue. A client that leaves ends
        the generation at its next step. An error after the stream began is an ``error`` event (OpenAI's
        client raises it)."""
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()

        def send(chunk: dict[str, Any]) -> None:  # on the inference thread
            loop.call_soon_threadsafe(chunks.put_nowait, chunk)

        def complete(argument: Any) -> Any:
            return self.served.chat.complete(argument, send, cancelled)

        job = asyncio.ensure_future(self.batcher.call(complete, chat_request, client))
        job.add_done_callback(lambda _: chunks.put_nowait(None))  # after every chunk: sent from the same thread
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        try:
            await response.prepare(request)
            while (chunk := await chunks.get()) is not None:
                await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            error = job.exception()
            if error is not None:
                if not isinstance(error, UserFacingError):
                    log.error("chat completion failed", exc_info=error)
                code = _error_code(error, "policy_error")
                event = {"error": {"message": str(error), "type": code, "code": code, "param": None}}
                await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionError:  # the client left: its generation stops at the next step
            cancelled.set()
            with contextlib.suppress(Exception):
                await job
        finally:
            cancelled.set()
        return response

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=self.max_bytes * TRANSPORT_LIMIT_FACTOR, compress=False)
        if not ws.can_prepare(request).ok:
            return web.json_response({**self.served.spec.to_metadata(), "hint": "connect with a websocket client"})
        await ws.prepare(request)
        connection = _Connection(ws, self.served.make_session())
        await ws.send_bytes(pack(self.served.spec.to_metadata()))
        writer = asyncio.create_task(self._send_in_order(connection))
        self.batcher.active_sessions += 1
        self._websockets.add(ws)
        try:
            async for message in ws:
                received = time.perf_counter()
                if message.type == WSMsgType.BINARY:
                    await self._receive(connection, message.data, received)
                elif message.type == WSMsgType.TEXT:
                    refusal = ProtocolError("malformed_request", "send msgpack in binary frames, not text frames")
                    await self._reply(connection, _done(self._refusal(refusal, None)), received)
        finally:
            self._websockets.discard(ws)
            self.batcher.active_sessions -= 1
            self.batcher.forget(connection.session)
            connection.replies.put_nowait(None)
            await writer
        return ws

    async def _receive(self, connection: _Connection, data: bytes, received: float) -> None:
        """Decode and check one request at once; answer it at once when that is possible in order (an
        error, or an observation a fast policy can answer on this thread), else queue its answer."""
        request: Request | None = None
        try:
            request = parse_request(unpack(data, self.max_bytes))
            self._check(request)
            if request.kind == "infer" and connection.idle and self.batcher.inline_ready():
                actions, timing = self.batcher.infer_inline(connection.session, request.body)
                answer = _done(self._actions(connection, request, actions, timing, received))
            else:
                answer = asyncio.ensure_future(self._answer(connection, request, received))
        except Exception as error:
            answer = _done(self._refusal(error, request))
        await self._reply(connection, answer, received)

    async def _reply(self, connection: _Connection, answer: asyncio.Future, received: float) -> None:
        if connection.idle and answer.done():  # nothing ahead of it: send from here, skip the writer's hop
            await self._send(connection, answer.result(), received)
        else:
            connection.pending += 1
            connection.replies.put_nowait((answer, received))

    async def _send_in_order(self, connection: _Connection) -> None:
        while (item := await connection.replies.get()) is not None:
            answer, received = item
            frame = await answer
            await self._send(connection, frame, received)
            connection.pending -= 1

    async def _send(self, connection: _Connection, frame: bytes | str, received: float) -> None:
        ws = connection.ws
        if ws.closed:
            return
        with contextlib.suppress(ConnectionError):  # the client left; its remaining replies are dropped
            await (ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_str(frame))
        connection.prev_total_ms = (time.perf_counter() - received) * 1e3

    def _check(self, request: Request) -> None:
        """Our key names, shapes, text and image bounds, before any model work (in place)."""
        if request.kind == "infer":
            request.body = canonical_observation(request.body, self.served.spec)
            check_observation(request.body, self.served.spec)
            check_request_values(request.body, self.limits, "observation")
        elif request.kind == "reset":
            check_request_values(request.body, self.limits, "task")

    async def _answer(self, connection: _Connection, request: Request, received: float) -> bytes | str:
        session = connection.session
        try:
            if request.kind == "metadata":
                return pack({**self.served.spec.to_metadata(), "id": request.request_id})
            if request.kind == "reset":
                await self.batcher.reset(session, request.body)
                return pack({"type": "reset", "id": request.request_id})
            actions, timing = await self.batcher.infer(session, request.body)
            return self._actions(connection, request, actions, timing, received)
        except Exception as error:
            return self._refusal(error, request)

    def _actions(
        self, connection: _Connection, request: Request, actions: Any, timing: dict[str, Any], received: float
    ) -> bytes:
        timing["server_ms"] = (time.perf_counter() - received) * 1e3
        if connection.prev_total_ms is not None:
            timing["prev_total_ms"] = connection.prev_total_ms  # as openpi's server: absent on the first reply
        if request.envelope:
            return pack({"type": "actions", "id": request.request_id, "actions": actions, "timing": timing})
        return pack({"actions": actions, "server_timing": timing})

    def _refusal(self, error: BaseException, request: Request | None) -> bytes | str:
        """One typed error: an error map for a control envelope, else openpi's text frame."""
        if isinstance(error, WireError | ProtocolError):
            code, message = error.code, str(error)
        elif isinstance(error, UserFacingError):
            code, message = _error_code(error, "policy_error"), str(error)
        else:
            log.error("policy failed", exc_info=error)
            code, message = "policy_error", f"the policy failed: {type(error).__name__}: {error}"
        if request is not None and request.envelope:
            return pack(error_reply(code, message, request.request_id))
        return error_text(code, message)

    # ---- running ------------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until SIGINT/SIGTERM."""
        web.run_app(self.app(), host=self.config.host, port=self.config.port, print=None, access_log=None)

    def start_in_thread(self) -> int:
        """Serve from a background thread (benchmarks, embedding); returns the bound port."""
        started = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def start() -> None:
            self._runner = web.AppRunner(self.app(), access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.config.host, self.config.port)
            await site.start()
            self.port = self._runner.addresses[0][1]
            started.set()

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(start())  # type: ignore[union-attr]
            self._loop.run_forever()  # type: ignore[union-attr]

        self._thread = threading.Thread(target=serve, name="policy-server", daemon=True)
        self._thread.start()
        if not started.wait(30):
            raise ServerConfigError(f"the policy server did not start on {self.config.host}:{self.config.port}")
        return self.port  # type: ignore[return-value]

    def stop(self) -> None:
        if self._loop is None or self._runner is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)


def _error_code(error: BaseException, default: str) -> str:
    """The protocol code a typed error carries (``ProtocolError``, ``PromptTooLongError``...), or ``default``."""
    code = getattr(error, "code", None)
    return code if code in ERROR_CODES else default


class _Connection:
    """One websocket client: its policy session, the replies not yet sent (in request order), and the
    time its last request took from receipt to reply (openpi's ``prev_total_ms``)."""

    def __init__(self, ws: web.WebSocketResponse, session: Any) -> None:
        self.ws = ws
        self.session = session
        self.replies: asyncio.Queue = asyncio.Queue()
        self.pending = 0  # replies queued for the writer and not yet sent
        self.prev_total_ms: float | None = None

    @property
    def idle(self) -> bool:
        return self.pending == 0


def _as_bearer(authorization: str | None) -> str | None:
    """openpi's ``Authorization: Api-Key TOKEN`` read as ``Bearer TOKEN`` (the same secret, another word)."""
    if authorization is not None and authorization.startswith("Api-Key "):
        return "Bearer " + authorization[len("Api-Key ") :]
    return authorization


def _done(value: Any) -> asyncio.Future:
    future = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future


def _json_error(code: str, message: str, param: str | None = None) -> web.Response:
    """An error in the OpenAI error shape (``param``: the request field at fault), with the HTTP status its
    code implies."""
    body = {"error": {"message": message, "type": code, "code": code, "param": param}}
    return web.json_response(body, status=HTTP_STATUS.get(code, 400))
