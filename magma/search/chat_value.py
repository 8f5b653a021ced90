"""A vision-language model behind an OpenAI-compatible endpoint as the search's value (ExACT): it reads the
screenshot, the Set-of-Mark listing, the URL, the instruction and the path's actions (at a terminal state, the
answer) and scores the agent's progress in [0, 1]. As a single judge (one call) or through ExACT's debate: one
call argues the agent is on track, one that it is not, and a judge weighs both (three calls).

It never reads the privileged fields of a ``ValueContext`` (the environment's reward, the environment itself).
Anything that leaves it without a score (an unreachable or timed-out endpoint, an HTTP error, a reply without a
``SCORE: x`` line, a score outside [0, 1]) raises ``ValueUnavailableError``; the search then uses the policy's
prior. After ``skip_after_failures`` endpoint failures in a row the model is not asked for ``skip_seconds``, so a
dead endpoint costs the run seconds, not minutes.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time

import numpy as np

from magma.policies.openai_chat import ChatClient, ChatEndpointError, chat_messages
from magma.policies.web import MAX_LISTING_CHARS
from magma.search.values import ValueContext, ValueEstimate, ValueUnavailableError

_log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0  # per request; the client's own (120 s) is long for one state of a search
DEFAULT_RETRIES = 0  # a failed state falls back to the prior; retrying it (the client's 4) holds the search
MAX_SKIP_DOUBLINGS = 4  # a model that keeps failing is skipped for 1, 2, 4, 8, then 16 times skip_seconds
NOTE_CHARS = 300  # the rationale kept in the tree
ARGUMENT_CHARS = 2000  # a debater's argument as the judge reads it
ERROR_CHARS = 300

_SCORE = re.compile(r"\bscore\b[\s*_]*[:=][\s*_]*([^\s*_]+)", re.IGNORECASE)

_SCALE = """Scale: 0 = no progress or off track (a wrong page, a wrong answer, a dead end); 0.5 = about halfway, \
the right page or the right element found; 1 = the task is done (at a stop: the answer is correct and complete)."""

JUDGE_SYSTEM_PROMPT = f"""You evaluate an agent that operates a user interface (a web browser, a phone or a \
small web form) to complete a task. You see the current screenshot, in which the interactive elements carry \
numbered marks, the same elements as a listing, the URL, the task and the agent's actions so far. Judge how far \
the agent has got towards completing the task from this state. {_SCALE}
Reason in at most four sentences, then end with one line of the form: SCORE: <a number between 0 and 1>"""

ADVOCATE_SYSTEM_PROMPT = """You take part in a debate about an agent that operates a user interface to complete \
a task. You see the current screenshot (interactive elements carry numbered marks), the element listing, the URL, \
the task and the agent's actions so far. Argue, in at most five sentences and from concrete evidence in the \
screenshot and listing, that the agent is ON TRACK: that this state brings it closer to completing the task. \
Do not give a score."""

CRITIC_SYSTEM_PROMPT = """You take part in a debate about an agent that operates a user interface to complete \
a task. You see the current screenshot (interactive elements carry numbered marks), the element listing, the URL, \
the task and the agent's actions so far. Argue, in at most five sentences and from concrete evidence in the \
screenshot and listing, that the agent is NOT on track: what is wrong, missing or misleading in this state. \
Do not give a score."""

DEBATE_JUDGE_SYSTEM_PROMPT = f"""You judge a debate about an agent that operates a user interface to complete a \
task. You see the current screenshot (interactive elements carry numbered marks), the element listing, the URL, \
the task, the agent's actions so far, one argument that the agent is on track and one that it is not. Check both \
arguments against what you see yourself and decide how far the agent has got towards completing the task. {_SCALE}
Reason in at most four sentences, then end with one line of the form: SCORE: <a number between 0 and 1>"""


def state_description(context: ValueContext, listing_chars: int = MAX_LISTING_CHARS) -> str:
    """The state as the value model reads it: task, URL, listing (cut), the path's actions and, at a terminal
    state, the answer. Only the unprivileged fields of ``context`` are read."""
    observation = context.observation
    listing = str(observation.get("som") or observation.get("text") or "")
    if len(listing) > listing_chars:
        listing = listing[:listing_chars] + "\n... (listing cut)"
    actions = "\n".join(f"{index + 1}. {action}" for index, action in enumerate(context.actions)) or "None yet"
    if context.terminal:
        answer = f'its final answer: "{context.answer}"' if context.answer else "with no answer"
        ending = f"The agent has STOPPED here, {answer}."
    else:
        ending = "The agent has not stopped yet."
    return (
        f"TASK: {context.instruction}\nURL: {observation.get('url', '')}\nELEMENTS:\n{listing or '(none)'}\n"
        f"ACTIONS SO FAR:\n{actions}\n{ending}"
    )


def parse_score(reply: str) -> tuple[float, str]:
    """The last ``SCORE: x`` of a reply (x a number, ``a/b`` or a percentage) and the rest of the reply as the
    rationale; ``ValueUnavailableError`` when there is none or it is not a number in [0, 1]."""
    matches = list(_SCORE.finditer(reply))
    if not matches:
        raise ValueUnavailableError(f"the value model's reply has no 'SCORE: <0..1>' line: {_snippet(reply)!r}")
    match = matches[-1]
    token = match.group(1).strip("'\"()[]{}").rstrip(".,;:")
    value = _number(token)
    if value is None or not math.isfinite(value):
        raise ValueUnavailableError(f"the value model's score {token!r} is not a number (reply: {_snippet(reply)!r})")
    if not 0.0 <= value <= 1.0:
        raise ValueUnavailableError(f"the value model's score {token} is outside [0, 1] (reply: {_snippet(reply)!r})")
    line_start = reply.rfind("\n", 0, match.start()) + 1
    line_end = reply.find("\n", match.end())
    rationale = reply[:line_start] + ("" if line_end < 0 else reply[line_end:])
    return value, one_line(rationale, NOTE_CHARS)


def _number(token: str) -> float | None:
    try:
        if token.endswith("%"):
            return float(token[:-1]) / 100.0
        if "/" in token:
            numerator, denominator = token.split("/", 1)
            return float(numerator) / float(denominator)
        return float(token)
    except (ValueError, ZeroDivisionError):
        return None


def one_line(text: str, most: int) -> str:
    """``text`` on one line (runs of whitespace as one space), cut to ``most`` characters with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= most else text[: most - 3] + "..."


def _snippet(reply: str) -> str:
    return one_line(reply, 120)


class ChatValue:
    """The value from a chat model (``client``): a single judge, or ExACT's debate with ``debate=True``.

    ``timeout_s`` and ``retries`` replace the client's own for the value's requests (None keeps the client's);
    ``skip_after_failures`` endpoint failures in a row make the value skip the model for ``skip_seconds``; after
    a skip one failed request skips it again, for twice as long each time (up to 16x), until a request works."""

    name = "model"
    privileged = False

    def __init__(
        self,
        client: ChatClient,
        debate: bool = False,
        *,
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
        retries: int | None = DEFAULT_RETRIES,
        max_image_side: int = 1024,
        listing_chars: int = MAX_LISTING_CHARS,
        skip_after_failures: int = 3,
        skip_seconds: float = 60.0,
    ) -> None:
        self.client = client.with_limits(timeout_s, retries)  # the caller's client keeps its own
        self.debate = debate
        self.max_image_side = max_image_side
        self.listing_chars = listing_chars
        self.skip_after_failures = skip_after_failures
        self.skip_seconds = skip_seconds
        self._lock = threading.Lock()  # worker threads of one run share the value
        self._failures_in_row = 0
        self._skips = 0  # skips since the last request that worked
        self._skip_until = 0.0
        self._last_failure = ""

    def evaluate(self, context: ValueContext) -> ValueEstimate:
        self._check_not_skipped()
        state = state_description(context, self.listing_chars)
        image = context.observation.get("image")
        images = [np.asarray(image)] if image is not None else []
        if not self.debate:
            reply = self._ask("the judgement", JUDGE_SYSTEM_PROMPT, state, images)
            value, rationale = parse_score(reply)
            return ValueEstimate(value, rationale, calls=1)
        on_track = self._ask("the argument that the agent is on track", ADVOCATE_SYSTEM_PROMPT, state, images)
        off_track = self._ask("the argument that the agent is not on track", CRITIC_SYSTEM_PROMPT, state, images)
        debate = (
            f"{state}\n\nARGUMENT THAT THE AGENT IS ON TRACK:\n{on_track.strip()[:ARGUMENT_CHARS]}\n\n"
            f"ARGUMENT THAT THE AGENT IS NOT ON TRACK:\n{off_track.strip()[:ARGUMENT_CHARS]}"
        )
        reply = self._ask("the debate's judgement", DEBATE_JUDGE_SYSTEM_PROMPT, debate, images)
        value, rationale = parse_score(reply)
        return ValueEstimate(value, one_line(f"debate judge: {rationale}", NOTE_CHARS), calls=3)

    def _ask(self, what: str, system: str, user: str, images: list[np.ndarray]) -> str:
        messages = chat_messages(system, user, images, self.max_image_side)
        try:
            reply = self.client.complete(messages)
        except ChatEndpointError as error:
            reason = one_line(str(error), ERROR_CHARS)
            self._count_failure(reason)
            raise ValueUnavailableError(f"the value model failed on {what}: {reason}") from error
        with self._lock:
            self._failures_in_row = self._skips = 0
        return reply

    def _check_not_skipped(self) -> None:
        with self._lock:
            remaining = self._skip_until - time.monotonic()
            last = self._last_failure
        if remaining > 0:
            raise ValueUnavailableError(
                f"the value model is skipped for {remaining:.0f} s more after failures in a row (last: {last})"
            )

    def _count_failure(self, reason: str) -> None:
        with self._lock:
            self._failures_in_row += 1
            self._last_failure = reason
            needed = 1 if self._skips else self.skip_after_failures  # after a skip, one more failure skips again
            if self.skip_after_failures > 0 and self._failures_in_row >= needed:
                seconds = self.skip_seconds * 2 ** min(self._skips, MAX_SKIP_DOUBLINGS)
                self._skip_until = time.monotonic() + seconds
                self._failures_in_row = 0
                self._skips += 1
                _log.warning(
                    "value model %s failed %d time(s) in a row (last: %s); not asked for %.0f s",
                    self.client.url, needed, reason, seconds,
                )  # fmt: skip
