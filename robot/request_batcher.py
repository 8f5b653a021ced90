"""Fair batching of inference requests from several clients, run on the one inference thread (so the GPU
sees one batch at a time).

Each client (a websocket connection, a chat caller) has its own queue, and clients take turns: the
next request is always the head of the client served longest ago, so a client with many queued or
expensive requests cannot starve another, whose request joins the next batch at the latest. A batch
opens with the first waiting request and closes when it is full or after a bounded wait. A client's
own requests run in its order and a reset is never reordered around its inferences, so each client's
replies come back in the order it asked. A client may have at most ``max_queued_per_client`` requests
waiting; more are refused (``overloaded``) rather than queued without bound.
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
        self, served: ServedPolicy, max_batch: int = 8, max_wait_s: float = 0.005, max_queued_per_client: int = 64
    ) -> None:
        self.served = served
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
        return await self._submit("infer", session, session, observation)

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
            if first.kind != "infer":
                await self._run_single(loop, first)
                continue
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
            results = await loop.run_in_executor(self.executor, self.served.run_batch, sessions, observations)
        except Exception as error:  # run_batch catches policy errors; this is the last guard
            results = [error] * len(batch)
        finished = time.perf_counter()
        self.batches += 1
        self.requests += len(batch)
        for request, actions in zip(batch, results, strict=True):
            timing = {
                "queue_ms": (started - request.enqueued) * 1e3,
                "infer_ms": (finished - started) * 1e3,
                "batch_size": len(batch),
            }
            if request.future.done():
                continue
            if isinstance(actions, Exception):
                request.future.set_exception(actions)
            else:
                request.future.set_result((actions, timing))
