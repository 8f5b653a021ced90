"""The policy server as a real process on loopback: bad requests get typed error replies and leave it
serving, a token guards it, requests of several clients are batched with replies in order, and it
answers the OpenAI chat-completions API with a tiny Magma checkpoint."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import msgpack
import numpy as np
import pytest
from cli_in_process import agent_in_process
from local_servers import wait_for
from PIL import Image
from websockets.sync.client import connect

from magma.training.launch import free_port, stop_process
from robot.policy_client import PolicyClient, PolicyServerError
from robot.policy_protocol import PolicySpec
from robot.policy_server import PolicyServer, ServerConfig
from robot.served_policy import ServedPolicy
from robot.sim import SimRobot
from robot.wire import pack, unpack

REPO = Path(__file__).resolve().parent.parent
AGENT = [sys.executable, "-m", "magma.cli.app"]


def wait_healthy(port: int, process: subprocess.Popen, timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.stderr.read() if process.stderr else ''}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
                if json.loads(reply.read())["status"] == "ok":
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("the policy server did not become healthy")


def start_server(args: list[str], port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [*AGENT, "serve", "--port", str(port), *args],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MUJOCO_GL": "egl"},
    )
    wait_healthy(port, process)
    return process


def sim_observation() -> dict:
    with SimRobot(task="reach", image_size=32, cameras=("third_person",), state_index=0, privileged=True) as robot:
        observation = robot.get_observation()
    return {
        "state": observation["observation.state"],
        "instruction": observation["instruction"],
        "privileged": observation["privileged"],
    }


def test_bad_requests_get_typed_errors_and_the_server_goes_on_serving(monkeypatch):
    port = free_port()
    server = start_server(["--policy", "scripted", "--token", "s3cret", "--max-message-mb", "0.05"], port)
    try:
        with pytest.raises(PolicyServerError, match="unauthorized") as refused:
            PolicyClient(f"ws://127.0.0.1:{port}", token="", retry_for_s=0).connect()
        assert "Bearer" in str(refused.value)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models")
        with pytest.raises(urllib.error.HTTPError) as http_refused:
            urllib.request.urlopen(request, timeout=10)
        assert http_refused.value.code == 401

        observation = sim_observation()
        headers = {"Authorization": "Bearer s3cret"}
        with connect(f"ws://127.0.0.1:{port}", additional_headers=headers, proxy=None, max_size=None) as ws:
            metadata = unpack(ws.recv(timeout=10), 1 << 20)
            assert metadata["type"] == "metadata" and metadata["action_dim"] == 7 and metadata["policy"] == "scripted"

            def ask(raw: bytes | str) -> tuple[str, dict]:
                """("text", error) for openpi's text-frame errors, ("binary", reply) otherwise."""
                ws.send(raw)
                frame = ws.recv(timeout=30)
                return ("text", json.loads(frame)) if isinstance(frame, str) else ("binary", unpack(frame, 1 << 20))

            replies = {
                "not msgpack": ask(b"\xc1\xc1 not msgpack"),
                "text frame": ask("hello"),
                "unknown type": ask(pack({"type": "fly", "id": 1})),  # not a control message: an observation
                "oversized": ask(pack({"pad": np.zeros(80_000, np.uint8)})),
                "lying array": ask(
                    msgpack.packb(
                        {"state": {b"__ndarray__": True, b"data": b"\x00" * 10, b"dtype": "<f4", b"shape": [13]}}
                    )
                ),
                "wrong shape": ask(pack({**observation, "state": np.zeros(5, np.float32)})),
                "no privileged": ask(pack({"state": observation["state"]})),
                "envelope wrong shape": ask(
                    pack({"type": "infer", "id": 4, "observation": {**observation, "state": np.zeros(5, np.float32)}})
                ),
            }
            codes = {name: (framing, reply["type"], reply["code"]) for name, (framing, reply) in replies.items()}
            assert codes == {
                "not msgpack": ("text", "error", "malformed_request"),
                "text frame": ("text", "error", "malformed_request"),
                "unknown type": ("text", "error", "bad_shape"),
                "oversized": ("text", "error", "message_too_large"),
                "lying array": ("text", "error", "bad_array"),
                "wrong shape": ("text", "error", "bad_shape"),
                "no privileged": ("text", "error", "policy_error"),
                "envelope wrong shape": ("binary", "error", "bad_shape"),
            }
            assert "(13,)" in replies["wrong shape"][1]["message"]
            assert "privileged" in replies["no privileged"][1]["message"]
            assert replies["envelope wrong shape"][1]["id"] == 4

            reset = ask(pack({"type": "reset", "id": 6, "task": {"instruction": observation["instruction"]}}))
            assert reset == ("binary", {"type": "reset", "id": 6})
            framing, good = ask(pack(observation))  # openpi's framing: the observation map itself
            assert framing == "binary" and good["actions"].shape == (1, 7) and np.all(np.isfinite(good["actions"]))
            assert good["server_timing"]["server_ms"] >= good["server_timing"]["infer_ms"] >= 0
            framing, legacy = ask(pack({"type": "infer", "id": 7, "observation": observation}))  # the older envelope
            assert legacy["type"] == "actions" and legacy["id"] == 7 and legacy["actions"].shape == (1, 7)
        client = PolicyClient(f"ws://127.0.0.1:{port}", token="s3cret")
        client.reset({"instruction": observation["instruction"]})
        assert client.act(observation).shape == (7,)  # a fresh connection is served as before
        client.close()
    finally:
        stop_process(server)

    monkeypatch.setenv("AGENT_POLICY_TOKEN", "")  # the refusals need no process of their own
    public = agent_in_process("serve", "--host", "0.0.0.0", "--port", str(free_port()))
    assert public.returncode == 2 and "--token" in public.stderr and "Traceback" not in public.stderr
    unknown = agent_in_process("serve", "--policy", "telepathy", "--port", str(free_port()))
    assert unknown.returncode == 2 and "unknown policy 'telepathy'" in unknown.stderr


class EchoPolicy:
    """Answers [client, request number, ...] so that the order of replies can be checked."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate

    def reset(self, task: dict) -> None:
        self.client = task["client"]

    def act(self, observation: dict) -> np.ndarray:
        if self.gate is not None:
            self.gate.wait()
        return np.array([self.client, float(observation["state"][0])] + [0.0] * 5)


def serve_echo(
    batching: bool, with_batch_api: bool, gate: threading.Event | None = None
) -> tuple[PolicyServer, list[int]]:
    batch_sizes: list[int] = []

    def act_batch(sessions: list, observations: list) -> list[np.ndarray]:
        batch_sizes.append(len(sessions))
        time.sleep(0.01)  # like a GPU forward pass: one call for the whole batch
        return [session.act(observation) for session, observation in zip(sessions, observations, strict=True)]

    spec = PolicySpec(policy="echo", model_id="echo", state_dim=1)
    served = ServedPolicy(spec, lambda: EchoPolicy(gate), act_batch=act_batch if with_batch_api else None)
    server = PolicyServer(served, ServerConfig(port=0, batching=batching, max_batch=8, max_wait_ms=20))
    server.start_in_thread()
    return server, batch_sizes


@pytest.mark.parametrize("batching", [True, False])
def test_requests_of_several_clients_are_batched_and_answered_in_order(batching):
    gate = threading.Event()  # inference waits until every client has a request queued: batches need no timing
    server, batch_sizes = serve_echo(batching, with_batch_api=True, gate=gate)
    answers: dict[int, list[tuple[float, float]]] = {}
    clients = [PolicyClient(f"ws://127.0.0.1:{server.port}", request_timeout_s=600) for _ in range(4)]
    for index, client in enumerate(clients):
        client.reset({"client": index})  # resets run before the gate matters

    def client_run(index: int) -> None:
        client = clients[index]
        answers[index] = [tuple(client.act({"state": np.array([n], np.float32)})[:2]) for n in range(12)]

    threads = [threading.Thread(target=client_run, args=(index,)) for index in range(4)]
    try:
        for thread in threads:
            thread.start()
        # the first batch is held by the gate; every client's first request is in it or queued behind it
        wait_for(lambda: server.batcher.waiting + (batch_sizes[0] if batch_sizes else 1) >= 4)
        gate.set()
        for thread in threads:
            thread.join(timeout=600)
    finally:
        gate.set()
        for client in clients:
            client.close()
        server.stop()
    assert answers == {index: [(index, n) for n in range(12)] for index in range(4)}  # every reply in order
    if batching:
        assert max(batch_sizes) > 1 and server.batcher.requests == 48
    else:
        assert batch_sizes == []  # one request at a time: the batch API is never called


def test_the_per_item_fallback_serves_a_policy_without_a_batch_api():
    server, _ = serve_echo(batching=True, with_batch_api=False)
    try:
        with (
            PolicyClient(f"ws://127.0.0.1:{server.port}") as first,
            PolicyClient(f"ws://127.0.0.1:{server.port}") as second,
        ):
            first.reset({"client": 1})
            second.reset({"client": 2})
            assert first.act({"state": np.array([5.0], np.float32)})[:2].tolist() == [1.0, 5.0]
            assert second.act({"state": np.array([6.0], np.float32)})[:2].tolist() == [2.0, 6.0]
    finally:
        server.stop()


def png_data_url(seed: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def post(port: int, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_openai_chat_completions_and_robot_actions_from_one_magma_checkpoint(
    tmp_path, tiny_model, tiny_processor, monkeypatch
):
    from magma.actions import ActionStatistics

    stats = ActionStatistics.compute(np.random.default_rng(0).normal(size=(64, 7)), mask=[True] * 6 + [False])
    tiny_model.save_pretrained(tmp_path / "ckpt", tokenizer=tiny_processor.tokenizer, action_statistics={"sim": stats})
    port = free_port()
    server = start_server(["--policy", "magma", "--model", str(tmp_path / "ckpt"), "--image-size", "32"], port)
    try:
        messages = [
            {"role": "system", "content": "You are a web agent."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is on the page?"},
                    {"type": "image_url", "image_url": {"url": png_data_url(1)}},
                ],
            },
        ]
        body = {"model": "ckpt", "messages": messages, "max_tokens": 6, "temperature": 0}
        status, reply = post(port, json.dumps(body).encode())
        assert status == 200, reply
        assert reply["object"] == "chat.completion" and reply["model"] == "ckpt"
        choice = reply["choices"][0]
        assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
        assert choice["finish_reason"] in ("stop", "length") and 1 <= reply["usage"]["completion_tokens"] <= 6
        assert reply["usage"]["prompt_tokens"] > 30  # the image's tokens are in the prompt
        again = post(port, json.dumps(body).encode())[1]
        assert again["choices"][0]["message"]["content"] == choice["message"]["content"]  # greedy is deterministic

        remote_url = {
            **body,
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}]}
            ],
        }
        for bad, code in ((b"{not json", "malformed_request"), (json.dumps(remote_url).encode(), "malformed_request")):
            status, error = post(port, bad)
            assert status == 400 and error["error"]["type"] == code and error["error"]["message"]

        with PolicyClient(f"ws://127.0.0.1:{port}") as client:
            assert client.connect().action_dim == 7 and client.spec.action_statistics["mask"][-1] is False
            client.reset({"instruction": "pick up the red cube"})
            image = np.random.default_rng(2).integers(0, 255, (32, 32, 3), dtype=np.uint8)
            action = client.act({"image": image, "state": np.zeros(13, np.float32)})
            assert action.shape == (7,) and np.all(np.isfinite(action))
            assert np.all(action[:6] >= stats.q01[:6] - 1e-6) and np.all(action[:6] <= stats.q99[:6] + 1e-6)

            from envs.mujoco.env import TabletopEnv
            from magma.evaluation.sim_suite import run_sim_episode

            env = TabletopEnv(task="reach", image_size=32, max_steps=4)
            try:  # the episode runner of `agent run` drives the remote policy like a local one
                result = run_sim_episode(env, client, "reach", 0)
            finally:
                env.close()
            assert result.steps == 4 and result.instruction
        remote_run = agent_in_process(
            "run", "mujoco", "--tasks", "reach", "--policy", "remote", "--server", f"ws://127.0.0.1:{port}",
            "--episodes", "1", "--image-size", "32", "--no-videos", "--out", str(tmp_path / "remote-run"),
        )  # fmt: skip
        assert remote_run.returncode == 0, remote_run.stderr[-2000:]
        assert "reach" in remote_run.stdout and (tmp_path / "remote-run" / "results.jsonl").exists()

        # `agent run --env visualwebarena --policy openai` against the model we serve: a real browser episode
        from magma.evaluation.web_suite import WebRunOptions, WebRunSettings, run_web_suite, web_policy_factory

        monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{port}/v1")
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        settings = WebRunSettings(tasks=["classifieds:0"], policy="openai", model="ckpt", max_steps=1)
        (record,) = run_web_suite(settings, WebRunOptions(), tmp_path / "web", web_policy_factory("openai", "ckpt"))
        assert record["status"] == "done" and record["steps"] >= 1 and record["success"] is False
        steps = (tmp_path / "web" / "trajectories" / "classifieds_0" / "steps.jsonl").read_text().splitlines()
        assert json.loads(steps[0])["reply"]  # the served model's text reached the web run
    finally:
        stop_process(server)
