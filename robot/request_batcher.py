"""Batching of inference requests from several clients: the first waiting request opens a batch, which
closes when it is full or after a bounded wait, and runs on the one inference thread (so the GPU sees
one batch at a time). Requests run in arrival order and a reset is never reordered around a client's
inferences, so each client's replies come back in the order it asked."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

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
    ``await call(function, argument)`` runs any other model work (chat) on the inference thread."""

    def __init__(self, served: ServedPolicy, max_batch: int = 8, max_wait_s: float = 0.005) -> None:
        self.served = served
        self.max_batch = max(1, max_batch)
        self.max_wait_s = max_wait_s
        self.active_sessions = 0  # a batch waits for more only when other clients could add to it
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._queue: deque[_Request] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.batches = 0
        self.requests = 0

    def start(self) -> None:
        self._arrived = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def _submit(self, kind: str, session: Any, payload: Any) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(kind, session, payload, future))
        assert self._arrived is not None
        self._arrived.set()
        return future

    async def infer(self, session: Any, observation: dict[str, Any]) -> tuple[Any, dict[str, float]]:
        return await self._submit("infer", session, observation)

    async def reset(self, session: Any, task: dict[str, Any]) -> None:
        await self._submit("reset", session, task)

    async def call(self, function: Any, argument: Any) -> Any:
        return await self._submit("call", function, argument)

    async def _next(self, deadline: float) -> bool:
        """Wait until the queue has a request or ``deadline`` passes; whether one is there."""
        assert self._arrived is not None
        while not self._queue:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return False
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return bool(self._queue)
        return True

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._next(float("inf"))
            first = self._queue.popleft()
            if first.kind != "infer":
                await self._run_single(loop, first)
                continue
            batch = [first]
            deadline = time.perf_counter() + self.max_wait_s
            while len(batch) < self.max_batch:
                if not self._queue and self.active_sessions <= len(batch):
                    break  # nobody else could add to this batch
                if not await self._next(deadline) or self._queue[0].kind != "infer":
                    break
                batch.append(self._queue.popleft())
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
