"""The chat model as the search's value (``magma.search.chat_value``) against local OpenAI-compatible
endpoints: the single judge's score and what it is shown, the debate's three calls, and every way the model
can fail (unparsable, out of range, HTTP 500, a closed port, a timeout) as one ``ValueUnavailableError``.
The privileged fields of the context never reach the endpoint."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from local_servers import QuietHandler, send_body, serve_http, stop_http

from magma.policies.openai_chat import ChatClient
from magma.search.chat_value import (
    ADVOCATE_SYSTEM_PROMPT,
    CRITIC_SYSTEM_PROMPT,
    DEBATE_JUDGE_SYSTEM_PROMPT,
    JUDGE_SYSTEM_PROMPT,
    ChatValue,
    parse_score,
)
from magma.search.values import ValueContext, ValueUnavailableError
from magma.training.launch import free_port

FAILURE_BOUND_S = 30.0  # generous: a failing value model must not hold a state for long
SECRET_REWARD = 0.8765432


class PrivilegedEnvironment:
    """Stands for the SearchEnvironment: any use of it by the value fails the test."""

    def __getattr__(self, name: str):
        raise AssertionError(f"the value model read the privileged environment ({name})")

    def __repr__(self) -> str:
        raise AssertionError("the value model printed the privileged environment")


def make_context(listing: str = "[3] [INPUT] [Search mugs]\n[4] [A] [Red mug $4]", terminal: bool = False):
    image = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    return ValueContext(
        instruction="Find the cheapest red mug",
        observation={"image": image, "som": listing, "url": "http://127.0.0.1:9000/shop/mugs"},
        actions=["type [3] [red mug] [1]", "click [4]"],
        terminal=terminal,
        answer="$4" if terminal else "",
        reward=SECRET_REWARD,
        environment=PrivilegedEnvironment(),
    )


def user_parts(request: dict) -> tuple[str, list[str]]:
    """The user turn's text and its image URLs."""
    content = request["messages"][1]["content"]
    text = "".join(part["text"] for part in content if part["type"] == "text")
    return text, [part["image_url"]["url"] for part in content if part["type"] == "image_url"]


def assert_no_privileged(requests: list) -> None:
    for _, request in requests:
        assert str(SECRET_REWARD) not in json.dumps(request)


def test_single_judge_scores_from_image_and_listing(chat_endpoint):
    chat_endpoint.answer = lambda request: "The red mug is listed and the agent opened it.\nSCORE: 0.7"
    value = ChatValue(ChatClient("judge"))
    estimate = value.evaluate(make_context())
    assert (estimate.value, estimate.calls) == (0.7, 1)
    assert estimate.note == "The red mug is listed and the agent opened it."
    [(_, request)] = chat_endpoint.requests
    assert request["messages"][0]["content"] == JUDGE_SYSTEM_PROMPT
    text, images = user_parts(request)
    assert len(images) == 1 and images[0].startswith("data:image/jpeg;base64,")
    for shown in ("Find the cheapest red mug", "[4] [A] [Red mug $4]", "shop/mugs", "2. click [4]", "not stopped"):
        assert shown in text
    assert_no_privileged(chat_endpoint.requests)

    chat_endpoint.requests.clear()  # a terminal state shows the answer; a long listing is cut
    estimate = value.evaluate(make_context("[9] [DIV] [row]\n" * 2000, terminal=True))
    text, _ = user_parts(chat_endpoint.requests[0][1])
    assert 'STOPPED here, its final answer: "$4".' in text
    assert "(listing cut)" in text and len(text) < 8000
    assert_no_privileged(chat_endpoint.requests)


def test_debate_argues_both_sides_then_judges(chat_endpoint):
    arguments = {ADVOCATE_SYSTEM_PROMPT: "FOR: the mug page is open.", CRITIC_SYSTEM_PROMPT: "AGAINST: no price sort."}

    def answer(request: dict) -> str:
        system = request["messages"][0]["content"]
        return arguments.get(system, "Both have a point; the page is right but unsorted.\nSCORE: 0.4")

    chat_endpoint.answer = answer
    estimate = ChatValue(ChatClient("judge"), debate=True).evaluate(make_context())
    assert (estimate.value, estimate.calls) == (0.4, 3)
    assert estimate.note.startswith("debate judge: Both have a point")
    systems = [request["messages"][0]["content"] for _, request in chat_endpoint.requests]
    assert systems == [ADVOCATE_SYSTEM_PROMPT, CRITIC_SYSTEM_PROMPT, DEBATE_JUDGE_SYSTEM_PROMPT]
    judge_text, judge_images = user_parts(chat_endpoint.requests[2][1])
    assert "FOR: the mug page is open." in judge_text and "AGAINST: no price sort." in judge_text
    assert len(judge_images) == 1 and all(len(user_parts(request)[1]) == 1 for _, request in chat_endpoint.requests)
    assert_no_privileged(chat_endpoint.requests)


@pytest.mark.parametrize(
    ("reply", "value"),
    [("ok\nSCORE: 0.25", 0.25), ("**Score:** 7/10.", 0.7), ("score = 80%", 0.8), ("SCORE: 1", 1.0), ("SCORE: 0", 0.0)],
)
def test_score_line_formats(reply, value):
    assert parse_score(reply)[0] == pytest.approx(value)


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        ("The agent is doing fine.", "no 'SCORE"),
        ("SCORE: 1.7", "outside"),
        ("SCORE: -0.2", "outside"),
        ("SCORE: nan", "not a number"),
        ("SCORE: high", "not a number"),
    ],
)
def test_unusable_reply_is_one_clear_error(chat_endpoint, reply, problem):
    chat_endpoint.answer = lambda request: reply
    with pytest.raises(ValueUnavailableError, match=problem) as caught:
        ChatValue(ChatClient("judge")).evaluate(make_context())
    assert "\n" not in str(caught.value)


class ServerError(QuietHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.posts += 1
        send_body(self, '{"error": {"message": "model crashed"}}', "application/json", status=500)


class Stalled(QuietHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.release.wait(FAILURE_BOUND_S)  # then closes without a reply: the client gave up long ago


@pytest.fixture
def failing_server():
    server = serve_http(ServerError)
    server.posts = 0
    yield server
    stop_http(server)


def test_http_500_then_skipped_after_failures_in_row(failing_server):
    client = ChatClient("judge", base_url=f"http://127.0.0.1:{failing_server.server_address[1]}/v1", api_key="")
    value = ChatValue(client)  # the value's default: no retry (the state falls back to the prior)
    started = time.monotonic()
    with pytest.raises(ValueUnavailableError, match="HTTP 500") as caught:
        value.evaluate(make_context())
    assert time.monotonic() - started < FAILURE_BOUND_S
    assert failing_server.posts == 1 and "\n" not in str(caught.value)
    assert client.retries == 4  # the caller's client is not changed

    quick = ChatValue(client, debate=True, retries=0, skip_after_failures=2, skip_seconds=600)
    failing_server.posts = 0
    for _ in range(2):
        with pytest.raises(ValueUnavailableError, match=r"on the argument that the agent is on track: .*HTTP 500"):
            quick.evaluate(make_context())
    with pytest.raises(ValueUnavailableError, match=r"skipped for .* after failures in a row"):
        quick.evaluate(make_context())
    assert failing_server.posts == 2  # the skipped state did not ask the endpoint
    quick._skip_until = 0.0  # the skip is over: one more failure skips it again, twice as long
    with pytest.raises(ValueUnavailableError, match="HTTP 500"):
        quick.evaluate(make_context())
    assert failing_server.posts == 3 and quick._skip_until - time.monotonic() > 1000


def test_unreachable_endpoint_fails_quickly():
    client = ChatClient("judge", base_url=f"http://127.0.0.1:{free_port()}/v1", api_key="")
    started = time.monotonic()
    with pytest.raises(ValueUnavailableError, match="cannot reach"):
        ChatValue(client).evaluate(make_context())
    assert time.monotonic() - started < FAILURE_BOUND_S


def test_timed_out_endpoint_fails_quickly():
    server = serve_http(Stalled)
    server.release = threading.Event()
    try:
        client = ChatClient("judge", base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key="")
        started = time.monotonic()
        with pytest.raises(ValueUnavailableError, match=r"timed out|cannot reach"):
            ChatValue(client, timeout_s=0.5, retries=0).evaluate(make_context())
        assert time.monotonic() - started < FAILURE_BOUND_S
    finally:
        server.release.set()
        stop_http(server)
