"""The openpi side of ``bench/robot.py``, run with the bench's own venv that holds ``openpi-client``
from PyPI (never a toolkit dependency):

* ``server --port P --chunk N``: a websocket + msgpack policy server of openpi's shape (metadata
  first, then one reply per observation, arrays through ``openpi_client.msgpack_numpy``), answering
  zeros of shape (N, 7), or (7,) for N = 1, at once;
* ``client --port P --requests R``: openpi's own ``WebsocketClientPolicy`` sending the benchmark
  observation (224 x 224 RGB + 8-D state) R times; prints the round-trip times (ms) as one JSON list.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import numpy as np
from openpi_client import msgpack_numpy
from openpi_client.websocket_client_policy import WebsocketClientPolicy


def serve(port: int, chunk: int) -> None:
    from websockets.asyncio.server import serve as websocket_serve

    actions = np.zeros((chunk, 7), np.float32) if chunk > 1 else np.zeros(7, np.float32)
    packer = msgpack_numpy.Packer()

    async def handler(websocket) -> None:
        await websocket.send(packer.pack({"action_dim": 7, "chunk_length": chunk}))
        async for message in websocket:
            started = time.perf_counter()
            msgpack_numpy.unpackb(message)
            reply = {"actions": actions, "server_timing": {"infer_ms": (time.perf_counter() - started) * 1e3}}
            await websocket.send(packer.pack(reply))

    async def main() -> None:
        async with websocket_serve(handler, "127.0.0.1", port, compression=None, max_size=None) as server:
            await server.serve_forever()

    asyncio.run(main())


def client(port: int, requests: int) -> None:
    policy = WebsocketClientPolicy("127.0.0.1", port)
    rng = np.random.default_rng(0)
    observation = {"image": rng.integers(0, 255, (224, 224, 3), dtype=np.uint8), "state": np.zeros(8, np.float32)}
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        policy.infer(observation)
        times.append((time.perf_counter() - started) * 1e3)
    print(json.dumps(times))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["server", "client"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunk", type=int, default=1)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    serve(args.port, args.chunk) if args.mode == "server" else client(args.port, args.requests)
