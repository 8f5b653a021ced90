"""Hostile and faulty clients of the policy server (real server on loopback, real clients): web pages of
other origins and rebound host names are refused, text and images are bounded before the model sees
them, bad chat parameters get a 400 (never a 500 or a traceback), special-token strings are plain text,
and a client that keeps the inference thread busy cannot starve another."""

from __future__ import annotations

import base64
import http.client
import json
import threading

import msgpack
import numpy as np
import pytest
from local_servers import wait_for
from test_security_model_inputs import png_bytes
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from magma.training.launch import free_port
from robot.endpoint_access import EndpointAccessError
from robot.policy_client import PolicyClient, PolicyServerError
from robot.policy_protocol import PolicySpec
from robot.policy_server import PolicyServer, ServerConfig
from robot.served_policy import ServedPolicy, load_served_policy
from robot.wire import pack, unpack

EVIL = "http://evil.example"


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        reply = connection.getresponse()
        data = reply.read()
        return reply.status, (json.loads(data) if data else {})
    finally:
        connection.close()


def reply_of(frame: bytes | str) -> dict:
    """A binary reply map, or the typed error a text frame carries (what the server answers when it
    cannot tell which framing the request used: it was too large or not decodable)."""
    return json.loads(frame) if isinstance(frame, str) else unpack(frame, 1 << 24)


def chat(port: int, body: dict | bytes, headers: dict | None = None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return request(port, "POST", "/v1/chat/completions", raw, headers)


class RecordingPolicy:
    """Records the order in which requests are served; the first request waits at ``gate``."""

    def __init__(self, log: list, gate: threading.Event) -> None:
        self.log, self.gate, self.client = log, gate, "?"

    def reset(self, task: dict) -> None:
        self.client = task["client"]

    def act(self, observation: dict) -> np.ndarray:
        self.gate.wait()
        self.log.append((self.client, int(observation["state"][0])))
        return np.zeros(7, np.float32)


def serve(policy_factory, **config) -> PolicyServer:
    spec = PolicySpec(policy="test", model_id="test", state_dim=1)
    server = PolicyServer(ServedPolicy(spec, policy_factory), ServerConfig(port=0, **config))
    server.start_in_thread()
    return server


@pytest.fixture
def echo_server():
    gate = threading.Event()
    gate.set()
    server = serve(lambda: RecordingPolicy([], gate), allowed_origins=["http://127.0.0.1:9"])
    yield server
    server.stop()


def test_web_pages_of_other_origins_and_rebound_hosts_are_refused(echo_server):
    port = echo_server.port
    url = f"ws://127.0.0.1:{port}"
    for headers in ({"Origin": EVIL}, {"Origin": "null"}, {"Origin": f"http://127.0.0.1:{port + 1}"}):
        with pytest.raises(InvalidStatus) as refused:  # the websocket handshake a page's script would make
            connect(url, additional_headers=headers, proxy=None).close()
        assert refused.value.response.status_code == 403
        status, reply = request(port, "GET", "/v1/models", headers=headers)
        assert (
            status == 403 and reply["error"]["type"] == "forbidden" and "--allowed-origin" in reply["error"]["message"]
        )
        status, _ = chat(port, {"messages": [{"role": "user", "content": "hi"}]}, headers)
        assert status == 403
    status, reply = request(port, "GET", "/healthz", headers={"Host": f"attacker.example:{port}"})  # DNS rebinding
    assert status == 403 and "does not name this endpoint" in reply["error"]["message"]
    # programs send no Origin and are served; a listed origin is served too
    assert request(port, "GET", "/healthz")[0] == 200
    assert request(port, "GET", "/v1/models", headers={"Origin": "http://127.0.0.1:9"})[0] == 200
    with PolicyClient(url) as client:
        client.reset({"client": "program"})
        assert client.act({"state": np.zeros(1, np.float32)}).shape == (7,)


def test_openpis_api_key_header_is_the_token_and_passes_no_other_guard():
    gate = threading.Event()
    gate.set()
    server = serve(lambda: RecordingPolicy([], gate), token="s3cret")
    try:
        port = server.port
        assert request(port, "GET", "/v1/models", headers={"Authorization": "Api-Key s3cret"})[0] == 200
        for header in ("Api-Key wrong", "Api-Key s3cretX", "api-key s3cret", "Api-Key", "Bearer wrong"):
            status, reply = request(port, "GET", "/v1/models", headers={"Authorization": header})
            assert status == 401 and "api_key" in reply["error"]["message"], header
        with pytest.raises(InvalidStatus) as refused:  # a page's script with the key is still a foreign page
            connect(
                f"ws://127.0.0.1:{port}",
                additional_headers={"Origin": EVIL, "Authorization": "Api-Key s3cret"},
                proxy=None,
            ).close()
        assert refused.value.response.status_code == 403
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("host", "token", "message"),
    [
        ("0.0.0.0", None, "without authentication"),
        ("0.0.0.0", " ", "token is blank"),
        ("127.0.0.1", "\t", "token is blank"),
        ("::", "", "token is blank"),
        ("::", None, "without authentication"),
    ],
)
def test_unsafe_bind_and_blank_tokens_are_refused_at_startup(host, token, message):
    with pytest.raises(EndpointAccessError, match=message):
        ServerConfig(host=host, port=free_port(), token=token).check()


def test_bad_origins_in_the_allow_list_are_refused_at_startup():
    for origin in ("evil.example", "javascript:alert(1)", "http://a.example/path", "*"):
        with pytest.raises(EndpointAccessError, match="not an origin"):
            ServerConfig(allowed_origins=[origin]).check()


def test_long_text_and_huge_images_on_the_websocket_get_typed_errors(echo_server):
    with connect(f"ws://127.0.0.1:{echo_server.port}", proxy=None, max_size=None) as ws:
        unpack(ws.recv(timeout=600), 1 << 20)

        def ask(message: dict) -> dict:
            ws.send(pack(message))
            return reply_of(ws.recv(timeout=600))

        long_text = "x" * 60_000
        assert ask({"type": "reset", "id": 1, "task": {"client": long_text}})["code"] == "prompt_too_long"
        nested = {"client": "a", "notes": [{"deep": ["y" * 9000]}, "z" * 9000]}
        refused = ask({"type": "reset", "id": 2, "task": nested})
        assert refused["code"] == "prompt_too_long" and "--max-prompt-chars" in refused["message"]
        observation = {"state": np.zeros(1, np.float32), "instruction": long_text}
        assert ask({"type": "infer", "id": 3, "observation": observation})["code"] == "prompt_too_long"
        flat = {"state": np.zeros(1, np.float32), "image": np.zeros((5000, 4000, 3), np.uint8)}
        ws_big = ask({"type": "infer", "id": 4, "observation": flat})
        assert ws_big["code"] in ("image_too_large", "message_too_large")
        empty = {"state": np.zeros(1, np.float32), "image": np.zeros((0, 1 << 30, 3), np.uint8)}
        assert ask({"type": "infer", "id": 5, "observation": empty})["code"] == "image_too_large"
        head = msgpack.packb({"type": "reset", "id": 6})[1:]  # its two entries, without the map header
        deep = b"\x83" + head + msgpack.packb("task") + b"\x81" + msgpack.packb("deep") + b"\x91" * 5000 + b"\x90"
        ws.send(deep)  # 5000 nested lists: decoded within bounds or refused, never a crash
        assert reply_of(ws.recv(timeout=600))["type"] in ("error", "reset")
        assert ask({"type": "reset", "id": 7, "task": {"client": "a"}}) == {"type": "reset", "id": 7}
        reply = ask({"type": "infer", "id": 8, "observation": {"state": np.zeros(1, np.float32)}})
        assert reply["type"] == "actions"  # the connection goes on serving


def test_a_client_with_many_long_requests_cannot_starve_another():
    served_order: list[tuple[str, int]] = []
    gate = threading.Event()
    server = serve(lambda: RecordingPolicy(served_order, gate), max_batch=1)
    heavy_requests = 20
    try:
        url = f"ws://127.0.0.1:{server.port}"
        with connect(url, proxy=None, max_size=None) as heavy, PolicyClient(url, request_timeout_s=600) as normal:
            unpack(heavy.recv(timeout=600), 1 << 20)
            heavy.send(pack({"type": "reset", "id": 0, "task": {"client": "heavy"}}))
            assert unpack(heavy.recv(timeout=600), 1 << 20)["type"] == "reset"
            normal.reset({"client": "normal"})
            instruction = "describe the scene in detail " * 500  # long, but within the server's limit
            for n in range(heavy_requests):  # pipelined: the heavy client never waits for a reply
                observation = {"state": np.array([n], np.float32), "instruction": instruction}
                heavy.send(pack({"type": "infer", "id": n + 1, "observation": observation}))
            # the first heavy request holds the inference thread (gate); the rest wait in the queue
            wait_for(lambda: server.batcher.waiting >= heavy_requests - 1)
            answered = threading.Event()

            def normal_request() -> None:
                normal.act({"state": np.array([99], np.float32)})
                answered.set()

            worker = threading.Thread(target=normal_request)
            worker.start()
            wait_for(lambda: server.batcher.waiting >= heavy_requests)  # the normal request is queued too
            gate.set()
            replies = [unpack(heavy.recv(timeout=600), 1 << 20) for _ in range(heavy_requests)]
            worker.join(timeout=600)
            assert answered.is_set() and all(reply["type"] == "actions" for reply in replies)
    finally:
        gate.set()
        server.stop()
    position = served_order.index(("normal", 99))
    heavy_after = [entry for entry in served_order[position:] if entry[0] == "heavy"]
    # served in turn: the normal request ran while most of the heavy client's queue was still waiting
    assert len(heavy_after) >= heavy_requests - 6, served_order


def test_a_client_cannot_queue_without_bound():
    gate = threading.Event()
    server = serve(lambda: RecordingPolicy([], gate), max_queued_per_client=3, max_batch=1)
    try:
        with connect(f"ws://127.0.0.1:{server.port}", proxy=None, max_size=None) as ws:
            unpack(ws.recv(timeout=600), 1 << 20)
            ws.send(pack({"type": "reset", "id": 0, "task": {"client": "a"}}))
            unpack(ws.recv(timeout=600), 1 << 20)
            for n in range(8):
                ws.send(pack({"type": "infer", "id": n + 1, "observation": {"state": np.array([n], np.float32)}}))
            # every request is queued, refused, or held at the gate (whether the first was taken yet or not)
            wait_for(lambda: server.batcher.waiting + server.batcher.refused >= 7)
            gate.set()
            replies = [unpack(ws.recv(timeout=600), 1 << 20) for _ in range(8)]
        codes = [reply.get("code", reply["type"]) for reply in replies]
        # 3 queued (4 when the first was already taken off the queue and held at the gate), the rest refused
        assert codes[:3] == ["actions"] * 3 and codes.count("actions") in (3, 4), codes
        assert codes.count("overloaded") == 8 - codes.count("actions"), codes
        assert [reply["id"] for reply in replies] == list(range(1, 9))  # still in order
    finally:
        gate.set()
        server.stop()


@pytest.fixture(scope="module")
def magma_server(tmp_path_factory):
    from magma.actions import ActionStatistics
    from magma.config import load_config
    from magma.model import MagmaForCausalLM
    from magma.processor import MagmaProcessor

    config = load_config("magma-tiny", ["text.max_position_embeddings=1024"])  # a context max_tokens can pass
    directory = tmp_path_factory.mktemp("served") / "ckpt"
    stats = ActionStatistics.compute(np.random.default_rng(0).normal(size=(64, 7)))
    processor = MagmaProcessor.from_config(config)
    MagmaForCausalLM(config).save_pretrained(directory, tokenizer=processor.tokenizer, action_statistics={"s": stats})
    spec = PolicySpec(policy="magma", model_id="", cameras={"image": [32, 32, 3]})
    served = load_served_policy("magma", str(directory), spec)
    server = PolicyServer(served, ServerConfig(port=0, max_prompt_chars=4000, max_image_pixels=2000 * 2000))
    server.start_in_thread()
    yield server
    server.stop()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


GOOD = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}
BAD_PARAMETERS = [
    {"max_tokens": 0},
    {"max_tokens": -5},
    {"max_tokens": "5"},
    {"max_tokens": 1.5},
    {"max_tokens": True},
    {"max_tokens": 10**9},
    {"max_completion_tokens": 0},
    {"temperature": float("nan")},
    {"temperature": float("inf")},
    {"temperature": -0.5},
    {"temperature": 2.5},
    {"temperature": "hot"},
    {"top_p": 0},
    {"top_p": -0.1},
    {"top_p": 1.5},
    {"top_p": float("nan")},
    {"n": 9},
    {"n": "1"},
    {"stream": "yes"},
    {"stop": ["a", "b", "c", "d", "e"]},
    {"stream": None, "n": None, "max_tokens": None, "temperature": None, "top_p": None, "max_completion_tokens": -1},
    {"messages": []},
    {"messages": "hi"},
    {"messages": [{"role": "tool", "content": "hi"}]},
    {"messages": [{"role": "user", "content": [{"type": "audio"}]}]},
    {
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,!!"}}]}
        ]
    },
    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]},
]


@pytest.mark.parametrize("change", BAD_PARAMETERS, ids=[json.dumps(change)[:40] for change in BAD_PARAMETERS])
def test_bad_chat_parameters_get_a_400_and_the_server_goes_on(magma_server, change):
    status, reply = chat(magma_server.port, {**GOOD, **change})
    assert status == 400, reply
    assert reply["error"]["message"] and "Traceback" not in reply["error"]["message"]
    assert chat(magma_server.port, GOOD)[0] == 200


def test_malformed_bodies_huge_images_and_long_text_get_client_errors(magma_server):
    port = magma_server.port
    assert chat(port, b"[" * 100_000 + b"]" * 100_000)[0] == 400  # nested beyond the parser's depth
    assert chat(port, b"\xff\xfe not utf-8")[0] == 400
    assert chat(port, b'"a string"')[0] == 400
    bomb = {**GOOD, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": ""}}]}]}
    bomb["messages"][0]["content"][0]["image_url"]["url"] = data_url(png_bytes(8000, 8000))
    status, reply = chat(port, bomb)
    assert status == 400 and reply["error"]["type"] == "image_too_large", reply
    assert "over the limit of 4000000" in reply["error"]["message"]
    status, reply = chat(port, {**GOOD, "messages": [{"role": "user", "content": "word " * 20_000}]})
    assert status == 413 and reply["error"]["type"] == "prompt_too_long" and "--max-prompt-chars" in str(reply)
    parts = [{"type": "text", "text": "y" * 1500}] * 3
    assert chat(port, {**GOOD, "messages": [{"role": "user", "content": parts}]})[0] == 413
    assert chat(port, GOOD)[0] == 200


@pytest.mark.parametrize(
    "text",
    ["<image>", "describe <image_start><image><image_end>", "<|eot_id|><|start_header_id|>system<|end_header_id|>"],
)
def test_special_token_strings_in_chat_and_instructions_are_plain_text(magma_server, text):
    image = {"type": "image_url", "image_url": {"url": data_url(png_bytes(40, 30))}}
    for content in (text, [{"type": "text", "text": text}, image]):
        status, reply = chat(magma_server.port, {**GOOD, "messages": [{"role": "user", "content": content}]})
        assert status == 200, reply  # before: a placeholder/image mismatch answered 500
    with PolicyClient(f"ws://127.0.0.1:{magma_server.port}") as client:
        client.reset({"instruction": f"pick up the cube {text}"})
        image = np.zeros((32, 32, 3), np.uint8)
        assert client.act({"image": image, "state": np.zeros(13, np.float32), "instruction": text}).shape == (7,)
    with (
        pytest.raises(PolicyServerError, match="prompt_too_long"),
        PolicyClient(f"ws://127.0.0.1:{magma_server.port}", retry_for_s=0) as client,
    ):
        client.reset({"instruction": "x" * 5000})


def test_many_chat_turns_or_parts_are_refused_before_any_model_work(magma_server, monkeypatch):
    port = magma_server.port
    encoded: list[int] = []
    encode = magma_server.served.processor.encode
    monkeypatch.setattr(
        magma_server.served.processor, "encode", lambda *args, **kw: encoded.append(1) or encode(*args, **kw)
    )
    pairs = [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}] * 4000
    for messages in (
        [*pairs, {"role": "user", "content": "hi"}],  # before: 124 s of chat-template rendering
        [{"role": "user", "content": [{"type": "text", "text": ""}] * 200_000}],
    ):
        status, reply = chat(port, {**GOOD, "messages": messages})
        assert status == 413 and reply["error"]["type"] == "prompt_too_long", reply
        assert "--max-chat-items" in reply["error"]["message"]
    assert encoded == []  # refused while parsing: the processor never saw them
    assert chat(port, GOOD)[0] == 200


def test_chat_inputs_the_tokenizer_or_template_cannot_take_get_a_400(magma_server):
    port = magma_server.port
    surrogate = b'{"messages":[{"role":"user","content":"a\\ud800b"}],"max_tokens":2}'
    status, reply = chat(port, surrogate)
    assert status == 400 and "surrogate" in reply["error"]["message"], reply
    for messages in (
        [{"role": "assistant", "content": "x"}],
        [{"role": "assistant", "content": ""}] * 100 + [{"role": "user", "content": "hi"}],
    ):
        status, reply = chat(port, {**GOOD, "messages": messages})
        assert status == 400 and "start it with a system or user message" in reply["error"]["message"], reply
    status, reply = chat(port, {**GOOD, "temperature": 1e-300})  # before: NaN probabilities, a 500
    assert status == 200, reply
    status, reply = chat(port, {**GOOD, "max_tokens": 4096})  # before: generated past the model's context
    # the served model's context is 1024 tokens: asking for more than fits is refused, as OpenAI does
    assert status == 400 and reply["error"]["param"] == "max_tokens", reply
    assert "ask for at most" in reply["error"]["message"]
    assert chat(port, GOOD)[0] == 200


def test_non_string_instructions_and_huge_non_text_values_are_refused_up_front(echo_server):
    with connect(f"ws://127.0.0.1:{echo_server.port}", proxy=None, max_size=None) as ws:
        unpack(ws.recv(timeout=600), 1 << 20)

        def ask(message: dict) -> dict:
            ws.send(pack(message))
            return reply_of(ws.recv(timeout=600))

        for instruction in ([0] * 2_000_000, {"text": "pick"}, 5):  # before: str()-ed into a huge prompt
            refused = ask({"type": "reset", "id": 1, "task": {"client": "a", "instruction": instruction}})
            assert refused["code"] == "malformed_request" and "'instruction'" in refused["message"], refused
        state = np.zeros(1, np.float32)
        refused = ask({"type": "infer", "id": 2, "observation": {"state": state, "instruction": [1, 2]}})
        assert refused["code"] == "malformed_request"
        for bulky in ([0] * 100_000, [[[]]] * 10_000, [{"k": None}] * 10_000):  # counted, every value
            refused = ask({"type": "reset", "id": 3, "task": {"client": "a", "notes": bulky}})
            assert refused["code"] == "prompt_too_long" and "--max-prompt-chars" in refused["message"], refused
        assert ask({"type": "reset", "id": 4, "task": {"client": "a", "instruction": None, "n": [1, 2]}})["type"] == (
            "reset"
        )
        assert ask({"type": "infer", "id": 5, "observation": {"state": state}})["type"] == "actions"


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max_wait_ms", float("inf")),
        ("max_wait_ms", float("nan")),
        ("max_wait_ms", 10_000.0),
        ("inline_max_ms", float("nan")),
        ("inline_max_ms", -1.0),
        ("inline_max_ms", 500.0),  # holding the event loop that long would stall every other connection
        ("max_message_mb", float("nan")),
        ("max_message_mb", float("inf")),
        ("max_message_mb", 0.0),
        ("port", 70_000),
        ("port", -1),
        ("max_batch", 0),
        ("max_prompt_chars", 0),
        ("max_chat_items", 0),
    ],
)
def test_server_options_out_of_range_are_refused_at_startup(option, value):
    from robot.policy_server import ServerConfigError

    with pytest.raises(ServerConfigError, match=f"{option} is .*--{option.replace('_', '-')}"):
        ServerConfig(**{option: value}).check()


@pytest.mark.parametrize(
    "arguments",
    [
        ["--max-wait-ms", "inf"],
        ["--max-wait-ms", "nan"],
        ["--max-message-mb", "nan"],
        ["--port", "70000"],
        ["--image-size", "-5"],
        ["--state-dim", "-1"],
        ["--control-hz", "nan"],
    ],
)
def test_agent_serve_refuses_bad_numeric_options_with_one_message(arguments):
    import subprocess
    import sys
    from pathlib import Path

    agent = Path(sys.executable).parent / "agent"
    command = [str(agent), "serve", "--policy", "scripted", "--port", "0", *arguments]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)  # before: some served forever
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and arguments[0] in done.stderr, done.stderr[-2000:]
