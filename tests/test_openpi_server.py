"""An openpi-style client against our policy server (real server on loopback): a websockets client that
frames exactly as openpi-client 0.1.2's ``WebsocketClientPolicy`` (no compression, no size limit,
``Authorization: Api-Key``, the bare observation map, text frames are errors), with the codec of
``test_openpi_wire``. It reads our metadata, gets actions for LIBERO's keys, its api_key is our token,
the robot daemon's capture keys reach the policy unchanged, and every bad input gets one text-frame
error while the connection and the server go on serving."""

from __future__ import annotations

import json
import threading
import time

import msgpack
import numpy as np
import pytest
from test_openpi_wire import libero_observation, openpi_default, openpi_pack, openpi_unpack
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from robot.policy_protocol import PolicySpec
from robot.policy_server import PolicyServer, ServerConfig
from robot.served_policy import ServedPolicy


class RecordingPolicy:
    """Answers a 10 x 7 chunk; records what it saw and on which thread; fails when asked to."""

    def __init__(self, seen: list, delay_s: float = 0.0) -> None:
        self.seen, self.delay_s = seen, delay_s

    def reset(self, task: dict) -> None:
        self.seen.append(("reset", task))

    def act(self, observation: dict) -> np.ndarray:
        self.seen.append(("act", dict(observation), threading.current_thread().name))
        if "explode" in observation:
            raise RuntimeError("the policy exploded")
        time.sleep(self.delay_s)
        return np.full((10, 7), 0.5, np.float32)


def libero_spec() -> PolicySpec:
    cameras = {"image": [224, 224, 3], "wrist_image": [224, 224, 3]}
    return PolicySpec(policy="recording", model_id="rec", chunk_length=10, state_dim=8, cameras=cameras)


def serve(seen: list, delay_s: float = 0.0, **config) -> PolicyServer:
    served = ServedPolicy(libero_spec(), lambda: RecordingPolicy(seen, delay_s))
    server = PolicyServer(served, ServerConfig(port=0, **config))
    server.start_in_thread()
    return server


def openpi_connect(port: int, api_key: str | None = None) -> tuple[ClientConnection, dict]:
    """What ``WebsocketClientPolicy(host, port, api_key)`` does on construction."""
    headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
    ws = connect(
        f"ws://127.0.0.1:{port}", compression=None, max_size=None, additional_headers=headers, proxy=None, legacy=True
    )
    return ws, openpi_unpack(ws.recv(timeout=60))


def openpi_infer(ws: ClientConnection, payload: bytes | str) -> dict:
    """What ``WebsocketClientPolicy.infer`` does with an already packed observation."""
    ws.send(payload)
    response = ws.recv(timeout=60)
    if isinstance(response, str):
        raise RuntimeError(f"Error in inference server:\n{response}")
    return openpi_unpack(response)


@pytest.fixture
def recording_server():
    seen: list = []
    server = serve(seen)
    yield server, seen
    server.stop()


def test_an_openpi_client_reads_our_metadata_and_gets_actions_for_libero_keys(recording_server):
    server, seen = recording_server
    ws, metadata = openpi_connect(server.port)
    with ws:
        assert metadata["action_dim"] == 7 and metadata["chunk_length"] == 10 and metadata["protocol"] == 2
        assert metadata["cameras"] == {"image": [224, 224, 3], "wrist_image": [224, 224, 3]}
        observation = {**libero_observation(), "control_tick": 41, "capture_time_s": 1234.5625}
        first = openpi_infer(ws, openpi_pack(observation))
        second = openpi_infer(ws, openpi_pack(observation))
    assert first["actions"].shape == (10, 7) and first["actions"].dtype == np.float32
    assert np.all(first["actions"] == 0.5)
    assert first["server_timing"]["infer_ms"] >= 0 and "prev_total_ms" not in first["server_timing"]
    assert second["server_timing"]["prev_total_ms"] > 0  # as openpi's server: from the second reply on
    _, received, _ = seen[0]
    assert sorted(received) == ["capture_time_s", "control_tick", "image", "instruction", "state", "wrist_image"]
    assert received["instruction"] == "put the bowl on the plate"
    assert np.array_equal(received["state"], observation["observation/state"])
    assert received["control_tick"] == 41 and received["capture_time_s"] == 1234.5625  # handed on unchanged


def test_openpis_api_key_is_our_token():
    seen: list = []
    server = serve(seen, token="s3cret")
    try:
        ws, metadata = openpi_connect(server.port, api_key="s3cret")
        ws.close()
        assert metadata["policy"] == "recording"
        with pytest.raises(InvalidStatus) as refused:
            openpi_connect(server.port, api_key="wrong")
        assert refused.value.response.status_code == 401
        with pytest.raises(InvalidStatus):
            openpi_connect(server.port)
    finally:
        server.stop()


def good() -> bytes:
    return openpi_pack(libero_observation())


def bad_inputs() -> dict[str, tuple[bytes | str, str, str]]:
    observation = libero_observation()
    state = observation.pop("observation/state")
    lying = {b"__ndarray__": True, b"data": b"\x00" * 31, b"dtype": "<f4", b"shape": [8]}
    return {
        "misspelled key": (
            openpi_pack({**observation, "observation/states": state}),
            "bad_shape",
            "'state' (or 'observation/state') is missing",
        ),
        "the same entry twice": (
            openpi_pack({**observation, "observation/state": state, "state": state}),
            "malformed_request",
            "has 'state' twice",
        ),
        "bytes map keys": (
            msgpack.packb({b"observation/state": state}, default=openpi_default),
            "malformed_request",
            "send map keys as strings",
        ),
        "text frame": ("hello", "malformed_request", "binary frames"),
        "too large": (openpi_pack({"pad": np.zeros(600_000, np.uint8)}), "message_too_large", "--max-message-mb"),
        "lying array": (
            msgpack.packb({**observation, "observation/state": lying}, default=openpi_default),
            "bad_array",
            "needs 32 bytes",
        ),
        "wrong state size": (
            openpi_pack({**observation, "observation/state": np.zeros(5, np.float32)}),
            "bad_shape",
            "takes float (8,)",
        ),
        "prompt not text": (
            openpi_pack({**observation, "observation/state": state, "prompt": [1, 2]}),
            "malformed_request",
            "'instruction' is a list",
        ),
        "control tick not a number": (
            openpi_pack({**observation, "observation/state": state, "control_tick": "41"}),
            "malformed_request",
            "'control_tick' is a str",
        ),
        "not a map": (openpi_pack([1, 2, 3]), "malformed_request", "must be a msgpack map"),
        "the policy fails": (
            openpi_pack({**observation, "observation/state": state, "explode": True}),
            "policy_error",
            "the policy exploded",
        ),
    }


def test_bad_input_gets_one_text_error_and_the_connection_goes_on_serving():
    seen: list = []
    server = serve(seen, max_message_mb=0.5)
    try:
        ws, _ = openpi_connect(server.port)
        with ws:
            for name, (payload, code, words) in bad_inputs().items():
                with pytest.raises(RuntimeError, match="Error in inference server") as raised:
                    openpi_infer(ws, payload)
                error = json.loads(str(raised.value).split("\n", 1)[1])
                assert (error["type"], error["code"]) == ("error", code), name
                assert words in error["message"], (name, error["message"])
                assert openpi_infer(ws, good())["actions"].shape == (10, 7), name  # the same connection goes on
            unused = openpi_pack({**libero_observation(), "observation/joint_position": np.zeros(7)})
            assert openpi_infer(ws, unused)["actions"].shape == (10, 7)  # keys no input names reach the policy
        assert "joint_position" in seen[-1][1]
    finally:
        server.stop()


def test_a_fast_policy_answers_on_the_event_loop_and_a_slow_one_on_the_inference_thread():
    # (policy delay, --inline-max-ms): the fast case has a wide margin, so a loaded machine cannot flip it
    for delay_s, inline_max_ms in ((0.0, 20.0), (0.005, 1.0), (0.0, 0.0)):
        seen: list = []
        server = serve(seen, delay_s=delay_s, inline_max_ms=inline_max_ms)
        try:
            ws, _ = openpi_connect(server.port)
            with ws:
                for _ in range(10):
                    assert openpi_infer(ws, good())["actions"].shape == (10, 7)
        finally:
            server.stop()
        threads = [thread for _, _, thread in seen]
        assert threads[0].startswith("inference")  # the first request is measured on the thread
        on_loop = sum(thread == "policy-server" for thread in threads[1:])
        if delay_s == 0.0 and inline_max_ms > 0:
            assert on_loop >= 5, threads  # a slow moment sends a request or two back to the thread, no more
        else:
            assert on_loop == 0, (delay_s, inline_max_ms, threads)  # slow, or inline answers turned off
