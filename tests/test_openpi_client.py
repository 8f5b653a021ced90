"""Our ``PolicyClient`` against a server of openpi's protocol (a websockets server in the test, written from
openpi's documented server behaviour: metadata first, the bare observation map in, ``actions`` and
``server_timing`` out, a failure sent as a traceback in a text frame and then a close with 1011), and
against ours: the spec comes from whatever metadata the server sends, the task's instruction travels as
openpi's ``prompt``, an error after which openpi closes is raised and the next call reconnects, and our
own typed errors leave the connection open."""

from __future__ import annotations

import logging
import threading
import time
import traceback

import numpy as np
import pytest
from test_openpi_wire import openpi_pack, openpi_unpack
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.sync.server import ServerConnection, serve

from robot.policy_client import PolicyClient, PolicyServerError
from robot.policy_protocol import PolicySpec
from robot.policy_server import PolicyServer, ServerConfig
from robot.served_policy import ServedPolicy


class OpenpiStyleServer:
    """openpi's websocket policy server, as documented: one connection at a time is all it needs here."""

    def __init__(self, metadata: dict, actions: np.ndarray) -> None:
        self.metadata, self.actions = metadata, actions
        self.received: list[dict] = []
        self.connections = 0
        self.server = serve(self.handle, "127.0.0.1", 0, compression=None, max_size=None)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def infer(self, observation: dict) -> dict:
        self.received.append(observation)
        if "fail" in observation:
            raise ValueError("the policy was asked to fail")
        if "garbage" in observation:
            return {"not_actions": 1}
        return {"actions": self.actions}

    def handle(self, websocket: ServerConnection) -> None:
        self.connections += 1
        websocket.send(openpi_pack(self.metadata))
        previous_total_s = None
        while True:
            try:
                began = time.monotonic()
                observation = openpi_unpack(websocket.recv())
                infer_began = time.monotonic()
                reply = self.infer(observation)
                reply["server_timing"] = {"infer_ms": (time.monotonic() - infer_began) * 1e3}
                if previous_total_s is not None:
                    reply["server_timing"]["prev_total_ms"] = previous_total_s * 1e3
                websocket.send(openpi_pack(reply))
                previous_total_s = time.monotonic() - began
            except ConnectionClosed:
                return
            except Exception:
                websocket.send(traceback.format_exc())
                websocket.close(
                    CloseCode.INTERNAL_ERROR, "Internal server error. Traceback included in previous frame."
                )
                return

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=30)


@pytest.fixture
def openpi_server():
    logging.getLogger("websockets").setLevel(logging.CRITICAL)
    servers: list[OpenpiStyleServer] = []

    def start(metadata: dict, actions: np.ndarray) -> OpenpiStyleServer:
        servers.append(OpenpiStyleServer(metadata, actions))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def test_policy_client_drives_an_openpi_server(openpi_server):
    server = openpi_server({}, np.arange(60, dtype=np.float64).reshape(10, 6))  # LIBERO-like: no metadata at all
    with PolicyClient(f"ws://127.0.0.1:{server.port}", retry_for_s=5) as client:
        spec = client.connect()
        assert (spec.server_kind, spec.policy, spec.state_dim, spec.cameras) == ("openpi", "openpi", 0, {})
        client.reset({"instruction": "put the bowl on the plate", "env": object()})  # no reset message exists
        image = np.zeros((224, 224, 3), np.uint8)
        chunk = client.act_chunk({"observation/image": image, "observation/state": np.zeros(8, np.float32)})
        assert chunk.actions.shape == (10, 6) and chunk.actions.dtype == np.float32
        assert chunk.actions[1, 0] == 6.0
        assert client.spec.action_dim == 6 and client.spec.chunk_length == 10  # read off the first reply
        assert chunk.timing["infer_ms"] >= 0 and chunk.timing["round_trip_ms"] >= chunk.timing["infer_ms"]
        assert client.act({"instruction": "open the drawer"}).shape == (10, 6)
    first, second = server.received  # only observations reached it: the reset stayed local
    assert sorted(first) == ["observation/image", "observation/state", "prompt"]
    assert first["prompt"] == "put the bowl on the plate" and second == {"prompt": "open the drawer"}


def test_single_actions_and_metadata_fields_of_an_openpi_server(openpi_server):
    metadata = {"action_dim": 7, "chunk_length": 1, "policy": "pi0", "state_dim": "8", "control_hz": 15}
    server = openpi_server(metadata, np.ones(7, np.float32))  # a (dim,) reply
    with PolicyClient(f"ws://127.0.0.1:{server.port}") as client:
        spec = client.connect()
        assert (spec.policy, spec.action_dim, spec.control_hz, spec.state_dim) == ("pi0", 7, 15.0, 0)  # "8": ignored
        action = client.act({"state": np.zeros(8, np.float32)})
        assert action.shape == (7,) and client.act_chunk({}).actions.shape == (1, 7)


def test_an_openpi_error_then_close_raises_and_the_next_call_reconnects(openpi_server):
    server = openpi_server({}, np.zeros((4, 7), np.float32))
    with PolicyClient(f"ws://127.0.0.1:{server.port}", retry_for_s=0) as client:
        client.reset({"instruction": "stack the blocks"})
        assert client.act({"state": np.zeros(3)}).shape == (4, 7)
        with pytest.raises(PolicyServerError, match="asked to fail") as failed:
            client.act({"fail": True})
        assert failed.value.code == "policy_error" and not client.connected
        assert client.act({"state": np.zeros(3)}).shape == (4, 7)  # at once: no back-off after an error
        assert client.reconnects == 1 and server.connections == 2
        with pytest.raises(PolicyServerError, match="'actions' is missing") as malformed:
            client.act({"garbage": True})
        assert malformed.value.code == "malformed_reply"
    assert server.received[-2]["prompt"] == "stack the blocks"  # the new connection still carries the task


class CountingPolicy:
    def __init__(self) -> None:
        self.task: dict = {}

    def reset(self, task: dict) -> None:
        self.task = task

    def act(self, observation: dict) -> np.ndarray:
        return np.full(7, float(len(self.task.get("instruction", ""))), np.float32)


def test_against_our_server_the_task_is_sent_and_typed_errors_keep_the_connection():
    spec = PolicySpec(policy="counting", model_id="c", state_dim=2)
    server = PolicyServer(ServedPolicy(spec, CountingPolicy), ServerConfig(port=0))
    server.start_in_thread()
    try:
        with PolicyClient(f"ws://127.0.0.1:{server.port}", retry_for_s=0) as client:
            assert client.connect().server_kind == "agent"
            client.reset({"instruction": "abcd"})
            assert client.act({"state": np.zeros(2, np.float32)}).tolist() == [4.0] * 7  # the server has the task
            with pytest.raises(PolicyServerError, match="takes float") as refused:
                client.act({"state": np.zeros(3, np.float32)})
            assert refused.value.code == "bad_shape" and client.connected
            assert client.act({"state": np.zeros(2, np.float32)})[0] == 4.0
            assert client.reconnects == 0
    finally:
        server.stop()
