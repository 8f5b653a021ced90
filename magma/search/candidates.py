"""Policies that propose several candidate actions for a state, the input of test-time search.

A ``CandidatePolicy`` is stateless about the episode: ``start(task)`` gives the state at the task's start and
``propose(state, observation, n)`` draws ``n`` replies, each with the policy state that choosing it leads to
(the history of a chat or Magma policy; the oracle's place in its recorded steps). So the search can branch
from any node without replaying the policy. ``SampledPolicy`` turns one into an ordinary ``Policy`` that acts
on one draw per step: the same policy without search, for the comparison.

Kinds: ``ChatCandidates`` (an OpenAI-compatible endpoint, ``n`` choices at a temperature), ``MagmaCandidates``
(the Magma model, ``n`` sampled completions), ``NoisyOracle`` (a bundled task's oracle, or an Android task's
scripted demo, that takes a random action with a given probability: a weak stochastic policy whose good action
is known) and ``RandomUIPolicy`` (a uniformly random action on the listed elements).
"""

from __future__ import annotations

import json
import random
import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from magma.actions import ActionParseError, extract_vwa_action, format_vwa_action, parse_vwa_action

_LISTED_ID = re.compile(r"^\[(\d+)\]", re.MULTILINE)


@dataclass(frozen=True)
class Candidate:
    """One proposed reply and the policy state after choosing it."""

    reply: str
    next_state: Any


class CandidatePolicy(Protocol):
    def start(self, task: dict[str, Any]) -> Any: ...

    def propose(self, state: Any, observation: dict[str, Any], n: int) -> list[Candidate]: ...


def canonical_action(reply: str) -> str | None:
    """The reply's action in canonical VWA text, or None when none parses (the search's grouping key)."""
    try:
        return format_vwa_action(parse_vwa_action(extract_vwa_action(reply)))
    except ActionParseError:
        return None


@dataclass(frozen=True)
class GroupedCandidate:
    """Candidates that name the same action, merged: the first reply, its state, and the share of draws."""

    action: str | None
    reply: str
    next_state: Any
    prior: float


def group_candidates(
    candidates: list[Candidate], keep: int, parse_action: Callable[[str], str | None] = canonical_action
) -> list[GroupedCandidate]:
    """The distinct actions among ``candidates``, most proposed first (ties: first proposed), at most ``keep``.
    The prior is the share of the draws. Replies without a parsable action are kept only when nothing parses
    (the environment then counts a failed step, as it would without search). ``parse_action`` is the env's
    grammar (VWA by default)."""
    if not candidates:
        return []
    keys = [parse_action(candidate.reply) for candidate in candidates]
    counts = Counter(key for key in keys if key is not None)
    if not counts:
        first = candidates[0]
        return [GroupedCandidate(None, first.reply, first.next_state, 1.0)]
    first_of: dict[str, int] = {}
    for index, key in enumerate(keys):
        if key is not None:
            first_of.setdefault(key, index)
    ordered = sorted(counts, key=lambda key: (-counts[key], first_of[key]))[:keep]
    total = len(candidates)
    chosen = [(key, candidates[first_of[key]]) for key in ordered]
    return [GroupedCandidate(key, first.reply, first.next_state, counts[key] / total) for key, first in chosen]


class SampledPolicy:
    """A candidate policy as an ordinary ``Policy``: one draw per step (the same policy, without search)."""

    def __init__(self, policy: CandidatePolicy) -> None:
        self.policy = policy
        self.state: Any = None

    def reset(self, task: dict[str, Any]) -> None:
        self.state = self.policy.start(task)

    def act(self, observation: dict[str, Any]) -> str:
        candidate = self.policy.propose(self.state, observation, 1)[0]
        self.state = candidate.next_state
        return candidate.reply


@dataclass(frozen=True)
class HistoryState:
    """A prompt-driven policy's state: the task (with any retrieved reflections) and the actions so far."""

    task: dict[str, Any]
    actions: tuple[str, ...] = ()

    def after(self, reply: str) -> HistoryState:
        return HistoryState(self.task, (*self.actions, extract_vwa_action(reply) or "(no action)"))


class ChatCandidates:
    """An OpenAI-compatible chat endpoint proposing ``n`` replies to the web prompt (or another env's prompt)
    in one request (``n`` choices; endpoints that return fewer are asked again)."""

    def __init__(self, client: Any, prompt: Any = None, system: str | None = None, max_image_side: int = 1280) -> None:
        from magma.policies.web import WEB_SYSTEM_PROMPT, web_prompt

        self.client = client
        self.prompt = prompt or web_prompt
        self.system = system or WEB_SYSTEM_PROMPT
        self.max_image_side = max_image_side

    def start(self, task: dict[str, Any]) -> HistoryState:
        return HistoryState(dict(task))

    def propose(self, state: HistoryState, observation: dict[str, Any], n: int) -> list[Candidate]:
        from magma.policies.openai_chat import chat_messages

        turn = self.prompt(observation, state.task, list(state.actions), self.system)
        messages = chat_messages(turn.system, turn.user, turn.images, self.max_image_side)
        replies = self.client.complete_many(messages, n)
        return [Candidate(reply, state.after(reply)) for reply in replies]


class MagmaCandidates:
    """The Magma model proposing ``n`` sampled replies (temperature ``temperature``) to the web prompt (or
    another env's ``prompt``, same signature as ``web_prompt``); one batched generation per proposal, seeded
    from ``seed`` so a run is repeatable."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        temperature: float = 1.0,
        max_new_tokens: int = 256,
        seed: int = 0,
        generation_lock: threading.Lock | None = None,
        prompt: Callable[..., Any] | None = None,
    ) -> None:
        import torch

        self.prompt = prompt
        self.model = model.eval()
        self.processor = processor
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.generator = torch.Generator().manual_seed(seed)
        self.lock = generation_lock or threading.Lock()

    def start(self, task: dict[str, Any]) -> HistoryState:
        return HistoryState(dict(task))

    def propose(self, state: HistoryState, observation: dict[str, Any], n: int) -> list[Candidate]:
        from magma.policies.web import build_web_prompt
        from magma.rl.generation import sample_completions

        if self.prompt is None:
            content, images = build_web_prompt(observation, state.task, list(state.actions))
        else:
            turn = self.prompt(observation, state.task, list(state.actions))
            content, images = turn.magma_content(), turn.images
        with self.lock:
            inputs = self.processor([content] * n, [images] * n) if n > 1 else self.processor(content, images)
            completions = sample_completions(
                self.model,
                inputs,
                self.max_new_tokens,
                temperature=self.temperature,
                generator=self.generator,
            )
        replies = [self.processor.decode(completion.token_ids) for completion in completions]
        return [Candidate(reply, state.after(reply)) for reply in replies]


def listed_ids(observation: dict[str, Any]) -> list[str]:
    """The Set-of-Mark ids of the observation's listing, in order."""
    return _LISTED_ID.findall(str(observation.get("som") or observation.get("text") or ""))


UI_GRAMMARS = ("vwa", "android")


def random_ui_reply(observation: dict[str, Any], rng: random.Random, grammar: str = "vwa") -> str:
    """A uniformly random action in the env's grammar (VWA text, or Android JSON): a click or tap on a listed
    element most of the time, else a scroll (a swipe) or, rarely, the end of the episode."""
    ids = listed_ids(observation)
    roll = rng.random()
    android = grammar == "android"
    if ids and roll < 0.8:
        element = rng.choice(ids)
        return json.dumps({"TAP": {"MARK": int(element)}}) if android else f"click [{element}]"
    if roll > 0.95:
        return json.dumps({"SET_TASK_STATUS": "COMPLETE"}) if android else "stop []"
    if android:
        return json.dumps({"SWIPE": rng.choice(("UP", "DOWN"))})
    return f"scroll [{rng.choice(('down', 'up'))}]"


class RandomUIPolicy:
    """Random clicks on listed elements, scrolls and stops: the weakest policy, for the search's figures."""

    def __init__(self, seed: int = 0, grammar: str = "vwa") -> None:
        self.rng = random.Random(seed)
        self.grammar = grammar

    def start(self, task: dict[str, Any]) -> None:
        return None

    def propose(self, state: None, observation: dict[str, Any], n: int) -> list[Candidate]:
        return [Candidate(random_ui_reply(observation, self.rng, self.grammar), None) for _ in range(n)]


@dataclass(frozen=True)
class OracleState:
    """Where a bundled task's oracle is in its recorded steps."""

    position: int = 0
    scrolls: int = 0
    pending: tuple[str, ...] = ()


class NoisyOracle:
    """A bundled task's oracle (``envs.web.oracle.WebOracle``, or an Android task's scripted demo) that, each
    draw, replaces its action by a random one with probability ``noise``. A random action leaves the oracle's
    place unchanged, so once the page has moved off its recorded path the oracle's next step may no longer fit:
    a weak policy whose good action is known. It reads the live page (selectors to ids), so ``propose`` must
    see the state's page. ``oracle`` is any object with ``position``, ``act(observation)`` and, for the web
    oracle, ``scrolls`` and ``pending``."""

    def __init__(self, oracle: Any, noise: float, seed: int = 0, grammar: str = "vwa") -> None:
        self.oracle = oracle
        self.noise = noise
        self.rng = random.Random(seed)
        self.grammar = grammar

    def start(self, task: dict[str, Any]) -> OracleState:
        return OracleState()

    def _oracle_step(self, state: OracleState, observation: dict[str, Any]) -> tuple[str, OracleState]:
        oracle = self.oracle
        oracle.position = state.position
        if hasattr(oracle, "pending"):
            oracle.scrolls, oracle.pending = state.scrolls, list(state.pending)
        reply = oracle.act(observation)
        return reply, OracleState(oracle.position, getattr(oracle, "scrolls", 0), tuple(getattr(oracle, "pending", ())))

    def propose(self, state: OracleState, observation: dict[str, Any], n: int) -> list[Candidate]:
        drawn = []
        oracle_reply: tuple[str, OracleState] | None = None
        for _ in range(n):
            if self.rng.random() < self.noise:
                drawn.append(Candidate(random_ui_reply(observation, self.rng, self.grammar), state))
                continue
            if oracle_reply is None:
                oracle_reply = self._oracle_step(state, observation)
            drawn.append(Candidate(*oracle_reply))
        return drawn
