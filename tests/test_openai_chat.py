"""The OpenAI chat endpoint of ``agent serve`` through the ``openai`` package itself: a UI-only tiny Magma
checkpoint (no robot action statistics) served by a real ``agent serve`` process on loopback, asked
whole and streamed, with ``n``, ``stop`` and an image; bad requests refused with OpenAI's error shape;
robot clients refused with the reason. The token-to-text step (UTF-8 and stop-string hold-back) is
checked on the real tokenizer."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import openai
import pytest
import torch
from local_servers import LOADED_MACHINE_BOUND_S, wait_for
from PIL import Image

from magma.config import load_config
from magma.model import MagmaForCausalLM
from magma.processor import MagmaProcessor
from magma.training.launch import free_port, stop_process
from robot.openai_chat import ChoiceText
from robot.policy_client import PolicyClient, PolicyServerError
from robot.policy_protocol import PolicySpec
from robot.policy_server import PolicyServer, ServerConfig
from robot.served_policy import PolicyLoadError, load_served_policy

REPO = Path(__file__).resolve().parent.parent
MODEL_ID = "ui-ckpt"
PROMPT = [{"role": "user", "content": "Describe the page."}]


def png_data_url(width: int = 60, height: int = 40) -> str:
    pixels = np.random.default_rng(1).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def healthz(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
            return json.loads(reply.read())
    except OSError:
        return None


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny Magma checkpoint saved without dataset_statistics.json, as a UI/web fine-tune is."""
    config = load_config("magma-tiny")
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("chat") / MODEL_ID
    MagmaForCausalLM(config).eval().save_pretrained(directory, tokenizer=MagmaProcessor.from_config(config).tokenizer)
    assert not (directory / "dataset_statistics.json").exists()
    return directory


@pytest.fixture(scope="module")
def ui_server(checkpoint):
    """``agent serve --policy magma`` on the chat-only checkpoint."""
    port = free_port()
    serve = ["serve", "--policy", "magma", "--model", str(checkpoint), "--port", str(port), "--max-choices", "4"]
    process = subprocess.Popen(
        [sys.executable, "-m", "magma.cli.app", *serve],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    try:
        health = wait_for(lambda: process.poll() is not None or healthz(port), "agent serve to start", 600)
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        assert health == {"status": "ok", "policy": "magma", "model_id": MODEL_ID, "actions": False}
        yield port
    finally:
        stop_process(process)
    assert "Traceback" not in (process.stderr.read() if process.stderr else "")


@pytest.fixture(scope="module")
def client(ui_server) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{ui_server}/v1", api_key="unused", max_retries=0, timeout=LOADED_MACHINE_BOUND_S
    )


@pytest.fixture(scope="module")
def greedy_text(client) -> str:
    """The tiny model's greedy answer to PROMPT: the reference the other answers are compared with."""
    reply = client.chat.completions.create(model=MODEL_ID, messages=PROMPT, max_tokens=24, temperature=0)
    assert reply.choices[0].message.content
    return reply.choices[0].message.content


def stream_choices(stream) -> tuple[dict[int, list], dict[int, str | None], list]:
    """Each choice's deltas and finish reason, and every chunk, from a streamed completion."""
    deltas: dict[int, list] = {}
    finish: dict[int, str | None] = {}
    chunks = list(stream)
    for chunk in chunks:
        assert chunk.object == "chat.completion.chunk" and chunk.model == MODEL_ID
        for choice in chunk.choices:
            deltas.setdefault(choice.index, []).append(choice.delta)
            if choice.finish_reason is not None:
                finish[choice.index] = choice.finish_reason
    return deltas, finish, chunks


def test_models_lists_the_served_checkpoint(client):
    assert [model.id for model in client.models.list()] == [MODEL_ID]


def test_whole_answers_with_n_and_an_image(client, greedy_text):
    reply = client.chat.completions.create(model=MODEL_ID, messages=PROMPT, max_tokens=24, temperature=0, n=3)
    assert [choice.index for choice in reply.choices] == [0, 1, 2]
    assert {choice.message.content for choice in reply.choices} == {greedy_text}  # greedy: the same n times
    assert 3 <= reply.usage.completion_tokens <= 3 * 24  # summed over the choices, as OpenAI counts
    sampled = client.chat.completions.create(model=MODEL_ID, messages=PROMPT, max_tokens=12, temperature=1.0, n=4)
    assert len(sampled.choices) == 4 and len({choice.message.content for choice in sampled.choices}) > 1

    image = [{"type": "text", "text": "What is on it?"}, {"type": "image_url", "image_url": {"url": png_data_url()}}]
    pictured = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": image}], max_completion_tokens=4, temperature=0
    )
    assert pictured.usage.prompt_tokens > 30 and 1 <= pictured.usage.completion_tokens <= 4  # the image's tokens


def test_a_stop_string_ends_the_answer_and_is_left_out(client, greedy_text):
    stop = greedy_text[len(greedy_text) // 2 : len(greedy_text) // 2 + 2]
    expected = greedy_text[: greedy_text.index(stop)]
    reply = client.chat.completions.create(
        model=MODEL_ID, messages=PROMPT, max_tokens=24, temperature=0, stop=[stop, "never said"]
    )
    assert reply.choices[0].message.content == expected and reply.choices[0].finish_reason == "stop"

    stream = client.chat.completions.create(
        model=MODEL_ID, messages=PROMPT, max_tokens=24, temperature=0, stop=stop, stream=True
    )
    deltas, finish, _ = stream_choices(stream)
    assert "".join(delta.content or "" for delta in deltas[0]) == expected and finish == {0: "stop"}


def test_streamed_answers_match_whole_ones_with_n_and_usage(client, greedy_text):
    stream = client.chat.completions.create(
        model=MODEL_ID,
        messages=PROMPT,
        max_tokens=24,
        temperature=0,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    deltas, finish, chunks = stream_choices(stream)
    assert sorted(deltas) == [0, 1] and set(finish) == {0, 1}
    for index in (0, 1):
        assert deltas[index][0].role == "assistant"
        assert "".join(delta.content or "" for delta in deltas[index]) == greedy_text
        assert all("\ufffd" not in (delta.content or "") for delta in deltas[index][:-1])
    assert sum(1 for delta in deltas[0] if delta.content) > 1  # text comes in pieces, not as one block
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 2
    assert all(chunk.usage is None for chunk in chunks[:-1])


BAD_REQUESTS = [
    ({"n": 5}, "n", "from 1 to 4"),
    ({"n": 0}, "n", "from 1 to 4"),
    ({"stop": 5}, "stop", "a string or a list of strings"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({"stop": [""]}, "stop", "1 to 256 characters"),
    ({"stream": "yes"}, "stream", "true or false"),
    ({"stream_options": {"include_usage": True}}, "stream_options", '"stream": true'),
    ({"max_tokens": 0}, "max_tokens", "in 1..4096"),
    ({"max_completion_tokens": 10**6}, "max_completion_tokens", "in 1..4096"),
    ({"max_tokens": 2000, "messages": [{"role": "user", "content": "x " * 3500}]}, "max_tokens", "ask for at most"),
]
BAD_IMAGES = [
    ("http://example.com/cat.png", "must be a base64 data URL"),
    ("data:image/png;base64,!!not base64!!", "not valid base64"),
    ("data:image/png;base64," + base64.b64encode(b"plain text, not a picture").decode(), "PNG, JPEG or WebP"),
]


@pytest.mark.parametrize(
    "change, param, words", BAD_REQUESTS, ids=[case[1] + str(i) for i, case in enumerate(BAD_REQUESTS)]
)
def test_bad_parameters_are_one_clear_400_naming_the_field(client, change, param, words):
    with pytest.raises(openai.BadRequestError) as refused:  # extra_body: sent as it is, past the client's types
        client.chat.completions.create(model=MODEL_ID, messages=PROMPT, extra_body={"max_tokens": 4, **change})
    error = refused.value.body
    assert refused.value.status_code == 400 and error["param"] == param and words in error["message"], error
    if param == "n":  # a streamed request is checked whole before its stream begins
        with pytest.raises(openai.BadRequestError, match="from 1 to 4"):
            client.chat.completions.create(model=MODEL_ID, messages=PROMPT, stream=True, **change)


@pytest.mark.parametrize("url, words", BAD_IMAGES, ids=["remote", "base64", "not-an-image"])
def test_bad_image_urls_are_one_clear_400(client, url, words):
    content = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": url}}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": content}], max_tokens=2)
    error = refused.value.body
    assert error["param"] == "messages[0].content[1].image_url.url" and words in error["message"], error
    assert client.chat.completions.create(model=MODEL_ID, messages=PROMPT, max_tokens=2).choices  # still serving


def test_robot_clients_of_a_chat_only_checkpoint_are_refused_with_the_fix(ui_server):
    with (
        PolicyClient(f"ws://127.0.0.1:{ui_server}", retry_for_s=0) as robot,
        pytest.raises(PolicyServerError, match="unsupported") as refused,
    ):
        robot.reset({"instruction": "pick up the cube"})
    assert "dataset_statistics.json" in str(refused.value) and "chat only" in str(refused.value)


def test_a_statistics_key_for_a_checkpoint_without_statistics_is_a_startup_error(checkpoint):
    with pytest.raises(PolicyLoadError, match=r"has no dataset_statistics\.json; leave --statistics-key out"):
        load_served_policy("magma", str(checkpoint), PolicySpec(policy="magma", model_id=""), statistics_key="bridge")


def test_a_client_that_leaves_mid_stream_stops_its_generation(checkpoint):
    served = load_served_policy("magma", str(checkpoint), PolicySpec(policy="magma", model_id=""))
    generated: list[int] = []
    complete = served.chat.complete

    def recording_complete(*arguments, **options):  # the real ChatModel, its token count read on the way out
        reply = complete(*arguments, **options)
        generated.append(reply["usage"]["completion_tokens"])
        return reply

    served.chat.complete = recording_complete
    server = PolicyServer(served, ServerConfig(port=0))
    server.start_in_thread()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=LOADED_MACHINE_BOUND_S)
        body = {"messages": PROMPT, "max_tokens": 4096, "temperature": 1.0, "stream": True}
        connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        reply = connection.getresponse()
        assert reply.status == 200 and reply.getheader("Content-Type").startswith("text/event-stream")
        assert reply.fp.readline()  # the first chunk has come: generation has begun
        connection.sock.close()
        connection.close()
        assert wait_for(lambda: generated, "the generation to end")[0] < 4096  # stopped early, not run out
        again = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="unused", max_retries=0)
        assert again.chat.completions.create(model=MODEL_ID, messages=PROMPT, max_tokens=2).choices
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tokenizer():
    return MagmaProcessor.from_config(load_config("magma-tiny")).tokenizer


def feed(tokenizer, text: str, stop: list[str]) -> tuple[list[str], ChoiceText]:
    """The deltas ``ChoiceText`` lets out for ``text`` token by token, then at the end."""
    choice = ChoiceText(lambda ids: tokenizer.decode(ids, skip_special_tokens=True), stop, {1025})
    deltas = [choice.add(token) for token in tokenizer.encode(text, add_special_tokens=False)]
    return [*deltas, choice.finish("length")], choice


def test_choice_text_holds_back_incomplete_characters_and_stop_string_starts(tokenizer):
    text = "héllo wörld 你好 ✓ done"
    deltas, choice = feed(tokenizer, text, [])
    assert "".join(deltas) == text and not any("\ufffd" in delta for delta in deltas)
    assert sum(1 for delta in deltas if delta == "") > 3  # the bytes of é, ö, 你, 好, ✓ were held back

    deltas, choice = feed(tokenizer, text, ["你好 ✓", "wörlx"])
    assert "".join(deltas) == "héllo wörld " and choice.finish_reason == "stop"
    sent = ""
    for delta in deltas:  # never a character that could belong to a stop string, before it is decided
        sent += delta
        assert "你" not in sent and not sent.endswith("wörl")
    deltas, choice = feed(tokenizer, "a stop at the very end st", ["st!"])
    assert "".join(deltas) == "a stop at the very end st" and choice.finish_reason == "length"
