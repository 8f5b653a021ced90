"""The openpi side of ``bench/robot.py`` and ``scripts/interop_openpi.py``, run with a venv that holds
``openpi-client`` from PyPI (never a toolkit dependency):

* ``server --port P --chunk N``: a policy server of openpi's protocol, written from its documented
  behaviour (openpi's ``websocket_policy_server``, docs/INTEROP section 1): ``GET /healthz`` answers
  ``OK``; on connect one binary frame of metadata; then one reply per observation, arrays through
  ``openpi_client.msgpack_numpy``, with ``server_timing`` (``prev_total_ms`` from the second reply on);
  any failure sends the traceback as a text frame and closes the connection with 1011. Its policy
  answers zeros of shape (N, 7), or (7,) for N = 1, at once, and fails on an observation holding
  ``"fail"``. ``--metadata JSON`` replaces the metadata; ``--log FILE`` appends each observation's
  keys as a JSON line (what our client sent).
* ``client --port P [--port Q ...] --requests R``: openpi's own ``WebsocketClientPolicy`` sending the
  benchmark observation (224 x 224 RGB + 8-D state) R times to each server, taking turns request by
  request (so a burst of load on the machine hits every server alike); prints the round-trip times
  (ms) as one JSON list per server.
* ``probe --port P --cases FILE [--api-key K]``: openpi's client against a server of ours, for
  ``scripts/interop_openpi.py``. FILE (packed by our ``robot.wire``, read here with openpi's
  ``msgpack_numpy``) holds ``{"good": observation, "bad": observation, "bad_code": str}``; prints one JSON
  map of check name -> [passed, detail]: metadata read, actions for the good observation, the bad one
  raised as an error naming ``bad_code``, the same client served again after it, and (with a key) a
  client without the key refused.
"""

from __future__ import annotations

import argparse
import asyncio
import http
import json
import time
import traceback

import numpy as np
from openpi_client import msgpack_numpy
from openpi_client.websocket_client_policy import WebsocketClientPolicy

CLOSE_REASON = "Internal server error. Traceback included in previous frame."


class ZeroPolicy:
    def __init__(self, chunk: int, log_path: str | None) -> None:
        self.actions = np.zeros((chunk, 7), np.float32) if chunk > 1 else np.zeros(7, np.float32)
        self.log_path = log_path

    def infer(self, observation: dict) -> dict:
        if self.log_path:
            with open(self.log_path, "a") as log:
                log.write(json.dumps(sorted(observation)) + "\n")
        if "fail" in observation:
            raise ValueError("the observation asked this policy to fail")
        return {"actions": self.actions}


def serve(port: int, chunk: int, metadata: dict, log_path: str | None) -> None:
    import websockets
    from websockets.asyncio.server import serve as websocket_serve
    from websockets.frames import CloseCode

    policy = ZeroPolicy(chunk, log_path)
    packer = msgpack_numpy.Packer()

    async def handler(websocket) -> None:
        await websocket.send(packer.pack(metadata))
        previous_total_s = None
        while True:
            try:
                began = time.monotonic()
                observation = msgpack_numpy.unpackb(await websocket.recv())
                infer_began = time.monotonic()
                reply = policy.infer(observation)
                reply["server_timing"] = {"infer_ms": (time.monotonic() - infer_began) * 1e3}
                if previous_total_s is not None:
                    reply["server_timing"]["prev_total_ms"] = previous_total_s * 1e3
                await websocket.send(packer.pack(reply))
                previous_total_s = time.monotonic() - began
            except websockets.ConnectionClosed:
                return
            except Exception:
                await websocket.send(traceback.format_exc())
                await websocket.close(code=CloseCode.INTERNAL_ERROR, reason=CLOSE_REASON)
                raise

    def healthz(connection, request):
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        return None

    async def main() -> None:
        async with websocket_serve(
            handler, "127.0.0.1", port, compression=None, max_size=None, process_request=healthz
        ) as server:
            await server.serve_forever()

    asyncio.run(main())


def client(ports: list[int], requests: int) -> None:
    policies = [WebsocketClientPolicy("127.0.0.1", port) for port in ports]
    rng = np.random.default_rng(0)
    observation = {"image": rng.integers(0, 255, (224, 224, 3), dtype=np.uint8), "state": np.zeros(8, np.float32)}
    times: list[list[float]] = [[] for _ in ports]
    for _ in range(requests):
        for policy, own_times in zip(policies, times, strict=True):
            started = time.perf_counter()
            policy.infer(observation)
            own_times.append((time.perf_counter() - started) * 1e3)
    print(json.dumps(times))


def probe(port: int, cases_path: str, api_key: str | None) -> None:
    with open(cases_path, "rb") as cases_file:
        cases = msgpack_numpy.unpackb(cases_file.read())
    results: dict[str, list] = {}

    def check(name: str, action) -> None:
        try:
            passed, detail = action()
        except Exception as error:  # a check that raised failed; the next checks still run
            passed, detail = False, f"{type(error).__name__}: {error}"[:500]
        results[name] = [bool(passed), str(detail)[:500]]

    policy = WebsocketClientPolicy("127.0.0.1", port, api_key=api_key)
    metadata = policy.get_server_metadata()
    check("metadata", lambda: ("action_dim" in metadata, {k: metadata.get(k) for k in ("policy", "action_dim")}))

    def good() -> tuple[bool, str]:
        actions = policy.infer(cases["good"])["actions"]
        return isinstance(actions, np.ndarray) and actions.ndim == 2 and bool(np.isfinite(actions).all()), (
            f"actions {getattr(actions, 'shape', actions)}"
        )

    check("infer", good)

    def bad() -> tuple[bool, str]:
        try:
            policy.infer(cases["bad"])
        except RuntimeError as error:
            return cases["bad_code"] in str(error), str(error).replace("\n", " ")
        return False, "no error raised"

    check("error reply raised by openpi's client", bad)
    check("same connection served after the error", good)
    if api_key:

        def refused() -> tuple[bool, str]:
            try:
                WebsocketClientPolicy("127.0.0.1", port)
            except Exception as error:
                return "401" in str(error), str(error)
            return False, "connected without the key"

        check("refused without the api_key", refused)
    print(json.dumps(results))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["server", "client", "probe"])
    parser.add_argument("--port", type=int, action="append", required=True, help="client: repeat to take turns")
    parser.add_argument("--chunk", type=int, default=1)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--metadata", default=None, help="the metadata map as JSON")
    parser.add_argument("--log", default=None, help="append each observation's keys to this file")
    parser.add_argument("--cases", default=None, help="probe: the observations to send (msgpack)")
    parser.add_argument("--api-key", default=None, help="probe: the server's token")
    args = parser.parse_args()
    if args.mode == "server":
        default = {"action_dim": 7, "chunk_length": args.chunk}
        serve(args.port[0], args.chunk, json.loads(args.metadata) if args.metadata else default, args.log)
    elif args.mode == "probe":
        probe(args.port[0], args.cases, args.api_key)
    else:
        client(args.port, args.requests)
