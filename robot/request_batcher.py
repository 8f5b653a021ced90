"""Fair batching of inference requests from several clients, run on the one inference thread (so the GPU
sees one batch at a time).

Each client (a websocket connection, a chat caller) has its own queue, and clients take turns: the
next request is always the head of the client served longest ago, so a client with many queued or
expensive requests cannot starve another, whose request joins the next batch at the latest. A batch
opens with the first waiting request and closes when it is full or after a bounded wait. A client's
own requests run in its order and a reset is never reordered around its inferences, so each client's
replies come back in the order it asked. A client may have at most ``max_queued_per_client`` requests
waiting; more are refused (``overloaded``) rather than queued without bound.

A batch waits for company only while other clients are connected. A fast policy skips the thread hop
altogether: when the inference thread is idle, nothing is queued and the policy's recent inferences took
under ``inline_max_s`` (a scripted expert, a zero policy), ``infer_inline`` runs it on the event loop,
where it holds the loop no longer than the hop to the thread and back would (~50 us) cost. Batched and
slow models (anything that measured slower, and every policy's first request) always run on the thread.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from robot.policy_protocol import ProtocolError
from robot.served_policy import ServedPolicy


@dataclass
class _Request:
    kind: str  # "infer" | "reset" | "call"
    session: Any
    payload: Any
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class RequestBatcher:
    """``await infer(session, observation)`` -> (actions, timing); ``await reset(session, task)``;
    ``await call(function, argument, client)`` runs any other model work (chat) on the inference thread.
    A websocket session is its own client; other work names its client."""

    def __init__(
        self,
        served: ServedPolicy,
        max_batch: int = 8,
        max_wait_s: float = 0.005,
        max_queued_per_client: int = 64,
        inline_max_s: float = 0.001,
    ) -> None:
        self.served = served
        self.inline_max_s = inline_max_s
        self.recent_infer_s: float | None = None  # a smoothed inference time; None until the first one
        self._busy = False  # the inference thread is running something
        self.max_batch = max(1, max_batch)
        self.max_wait_s = max_wait_s
        self.max_queued_per_client = max(1, max_queued_per_client)
        self.active_sessions = 0  # a batch waits for more only when other clients could add to it
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._queues: dict[Any, deque[_Request]] = {}  # client -> its waiting requests; dict order is the turn order
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.batches = 0
        self.requests = 0
        self.refused = 0  # requests refused because their client's queue was full

    def start(self) -> None:
        self._arrived = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    @property
    def waiting(self) -> int:
        """Requests queued and not yet started."""
        return sum(len(queue) for queue in list(self._queues.values()))  # list(): safe to call from another thread

    def _submit(self, kind: str, client: Any, session: Any, payload: Any) -> asyncio.Future:
        queue = self._queues.setdefault(client, deque())
        if len(queue) >= self.max_queued_per_client:
            self.refused += 1
            raise ProtocolError(
                "overloaded",
                f"this client already has {len(queue)} requests waiting (the most this server queues for one "
                "client); wait for replies before sending more",
            )
        future = asyncio.get_running_loop().create_future()
        queue.append(_Request(kind, session, payload, future))
        assert self._arrived is not None
        self._arrived.set()
        return future

    async def infer(self, session: Any, observation: dict[str, Any]) -> tuple[Any, dict[str, float]]:
        if self.inline_ready():
            return self.infer_inline(session, observation)
        return await self._submit("infer", session, session, observation)

    def inline_ready(self) -> bool:
        """Whether ``infer_inline`` may run now: a fast policy, nothing queued, the inference thread idle."""
        recent = self.recent_infer_s
        return recent is not None and recent < self.inline_max_s and not self._busy and not self._queues

    def infer_inline(self, session: Any, observation: dict[str, Any]) -> tuple[Any, dict[str, float]]:
        """Run one request on the calling (event loop) thread; only when ``inline_ready()``."""
        started = time.perf_counter()
        (actions,) = self.served.run_batch([session], [observation])
        elapsed = time.perf_counter() - started
        self._measured(elapsed)
        self.batches += 1
        self.requests += 1
        if isinstance(actions, Exception):
            raise actions
        return actions, {"queue_ms": 0.0, "infer_ms": elapsed * 1e3, "batch_size": 1}

    def _measured(self, elapsed_s: float) -> None:
        """Smooth the inference time; one slow call sends the next ones back to the thread at once."""
        recent = self.recent_infer_s
        slow = elapsed_s >= self.inline_max_s
        self.recent_infer_s = elapsed_s if recent is None or slow else 0.7 * recent + 0.3 * elapsed_s

    async def reset(self, session: Any, task: dict[str, Any]) -> None:
        await self._submit("reset", session, session, task)

    async def call(self, function: Any, argument: Any, client: Any = None) -> Any:
        return await self._submit("call", client, function, argument)

    def forget(self, client: Any) -> None:
        """Drop the waiting requests of a client that left (their replies could not be delivered)."""
        for request in self._queues.pop(client, ()):
            if not request.future.done():
                request.future.set_exception(ProtocolError("policy_error", "the client disconnected"))

    def _peek(self) -> _Request:
        return next(iter(self._queues.values()))[0]

    def _pop(self) -> _Request:
        """The head request of the client whose turn it is; that client goes to the back of the line."""
        client, queue = next(iter(self._queues.items()))
        request = queue.popleft()
        del self._queues[client]
        if queue:
            self._queues[client] = queue
        return request

    async def _next(self, deadline: float) -> bool:
        """Wait until a request is waiting or ``deadline`` passes; whether one is there."""
        assert self._arrived is not None
        while not self._queues:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return False
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return bool(self._queues)
        return True

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._next(float("inf"))
            first = self._pop()
            self._busy = True  # from here on: no inline request may overtake this one
            try:
                await self._run_popped(loop, first)
            finally:
                self._busy = False

    async def _run_popped(self, loop: asyncio.AbstractEventLoop, first: _Request) -> None:
        """``first`` alone, or with the other clients' requests that join its batch in time."""
        if first.kind != "infer":
            await self._run_single(loop, first)
            return
        batch = [first]
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch:
            if not self._queues and self.active_sessions <= len(batch):
                break  # nobody else could add to this batch
            if not await self._next(deadline) or self._peek().kind != "infer":
                break
            batch.append(self._pop())
        await self._run_batch(loop, batch)

    async def _run_single(self, loop: asyncio.AbstractEventLoop, request: _Request) -> None:
        try:
            if request.kind == "reset":
                result = await loop.run_in_executor(self.executor, request.session.reset, request.payload)
            else:
                result = await loop.run_in_executor(self.executor, request.session, request.payload)
        except Exception as error:
            if not request.future.done():
                request.future.set_exception(error)
            return
        if not request.future.done():
            request.future.set_result(result)

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Request]) -> None:
        started = time.perf_counter()
        sessions = [request.session for request in batch]
        observations = [request.payload for request in batch]
        try:
            results, infer_s = await loop.run_in_executor(
                self.executor, _timed, self.served.run_batch, sessions, observations
            )
        except Exception as error:  # run_batch catches policy errors; this is the last guard
            results, infer_s = [error] * len(batch), time.perf_counter() - started
        self._measured(infer_s)
        self.batches += 1
        self.requests += len(batch)
        for request, actions in zip(batch, results, strict=True):
            timing = {
                "queue_ms": (started - request.enqueued) * 1e3,
                "infer_ms": infer_s * 1e3,  # the policy's own time, on the inference thread
                "batch_size": len(batch),
            }
            if request.future.done():
                continue
            if isinstance(actions, Exception):
                request.future.set_exception(actions)
            else:
                request.future.set_result((actions, timing))


def _timed(function: Any, *arguments: Any) -> tuple[Any, float]:
    """``function(*arguments)`` and the seconds it took, measured on the thread that ran it."""
    started = time.perf_counter()
    result = function(*arguments)
    return result, time.perf_counter() - started
