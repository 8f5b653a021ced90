"""Contrastive reflections across tasks (ExACT's reflective part): after a searched task, the steps where the
value fell (a child valued well below its parent, or a terminal child valued 0) become lessons of the form "at
this place, for tasks like this one, this action led to that; prefer the sibling that scored higher". A chat model
writes the lesson from those facts when one is given; otherwise (or when it fails) a template does.

The lessons live in a JSON-lines file in the run directory (``reflections.jsonl``), so a resumed run keeps them;
a damaged line is skipped. ``retrieve`` gives the lessons whose task and URL are most like a new task's (token
cosine, deterministic, no model), which the policy's prompt shows.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from magma.policies.openai_chat import ChatClient, chat_messages
from magma.search.chat_value import one_line
from magma.search.tree import SearchNode, SearchTree

_log = logging.getLogger(__name__)

REFLECTIONS_FILE = "reflections.jsonl"
UNPARSABLE = "an unparsable reply"  # a child whose reply named no action
PRIOR_SOURCE = "policy-prior"  # a node whose value model failed: its value is the policy's prior, not a judgement
REASONING_CHARS = 300
LESSON_CHARS = 400
MODEL_TIMEOUT_S = 60.0
MODEL_RETRIES = 1

LESSON_SYSTEM_PROMPT = """You help an agent that operates user interfaces learn from its mistakes. From the \
facts of one step where its progress fell, write a lesson in one or two sentences that a future agent can use on \
a similar task: where it applies, which action to avoid there and what to do instead. Answer with the lesson only."""

_ACTION_LEAD_IN = re.compile(r"\s*in summary,? the next action i will perform is\s*$", re.IGNORECASE)
_STOP_TOKENS = frozenset(
    {"a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "in", "is", "it", "of", "on", "or", "the", "to"}
    | {"with", "http", "https", "www", "com", "org", "net", "html", "htm", "php", "index", "localhost"}
)


@dataclass
class Reflection:
    """One lesson: at ``url`` (the parent state's), for the task ``instruction``, ``action`` took the value from
    ``value_before`` to ``value_after``; ``expected`` and ``happened`` are the contrast the lesson is made from."""

    task: str  # the task's key in the run
    instruction: str
    url: str
    action: str
    expected: str
    happened: str
    lesson: str
    value_before: float
    value_after: float
    made_by: str  # "model" (the chat model wrote the lesson) or "template"
    value_kind: str = ""  # the tree's value function (grader: the privileged oracle)
    task_success: bool | None = None  # the task's outcome, as the run graded it
    node: int = -1  # the child node in the task's search_tree.json


class ReflectionStore:
    """The run's reflections: ``reflect`` adds a finished task's, ``retrieve`` finds the ``k`` nearest to a new
    task. Several worker threads may share one store."""

    def __init__(
        self,
        path: Path,
        client: ChatClient | None = None,
        k: int = 3,
        *,
        margin: float = 0.2,
        per_task: int = 3,
    ) -> None:
        self.path = Path(path)
        self.client = (
            None
            if client is None
            else client.with_limits(  # a lesson is not worth minutes of waiting
                min(client.timeout_s, MODEL_TIMEOUT_S), min(client.retries, MODEL_RETRIES)
            )
        )
        self.k = k
        self.margin = margin
        self.per_task = per_task
        self.skipped_lines = 0
        self._lock = threading.Lock()
        self._reflections: list[Reflection] = self._load()

    # -- the file --------------------------------------------------------------------------------------

    def _load(self) -> list[Reflection]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as error:
            _log.warning("cannot read the reflections in %s (%s); starting without them", self.path, error)
            return []
        reflections = []
        for line in data.splitlines():
            if not line.strip():
                continue
            reflection = _parse_line(line)
            if reflection is None:
                self.skipped_lines += 1
            else:
                reflections.append(reflection)
        if self.skipped_lines:
            _log.warning("%s: skipped %d damaged reflection line(s)", self.path, self.skipped_lines)
        return reflections

    def _append(self, reflections: list[Reflection]) -> None:
        """Append to the file (caller holds the lock); a write that fails keeps them in memory and warns."""
        text = "".join(json.dumps(asdict(reflection), ensure_ascii=False) + "\n" for reflection in reflections)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a+b") as file:
                if file.tell() > 0:  # a line cut by a crash must not swallow the next one
                    file.seek(-1, 2)
                    if file.read(1) != b"\n":
                        text = "\n" + text
                file.write(text.encode("utf-8"))
                file.flush()
        except OSError as error:
            _log.warning("cannot write reflections to %s (%s); they are kept for this run only", self.path, error)

    # -- reflecting ------------------------------------------------------------------------------------

    def reflect(self, tree: SearchTree, success: bool | None) -> list[Reflection]:
        """Reflections on the steps of ``tree`` where the value fell (at most ``per_task``), stored and
        returned; none when the value never fell. A lesson the model cannot write comes from the template."""
        with self._lock:
            seen = {(item.task, item.url, item.action) for item in self._reflections}
        steps = []
        for parent, child in fallen_steps(tree, self.margin):
            key = (tree.task, parent.url, child.action or UNPARSABLE)
            if key not in seen:  # a task run again (a resumed run) or the same move twice: one lesson
                seen.add(key)
                steps.append((parent, child))
        client = self.client
        made = []
        for parent, child in steps[: self.per_task]:
            facts = _facts(tree, parent, child)
            lesson, made_by = facts["template"], "template"
            if client is not None:
                written = self._model_lesson(client, facts)
                if written:
                    lesson, made_by = written, "model"
                else:
                    client = None  # the model failed once: the template for the rest of this task
            made.append(
                Reflection(
                    task=tree.task,
                    instruction=tree.instruction,
                    url=parent.url,
                    action=facts["action"],
                    expected=facts["expected"],
                    happened=facts["happened"],
                    lesson=lesson,
                    value_before=float(parent.value or 0.0),
                    value_after=float(child.value or 0.0),
                    made_by=made_by,
                    value_kind=tree.value_kind,
                    task_success=success,
                    node=child.id,
                )
            )
        with self._lock:
            known = {(item.task, item.url, item.action) for item in self._reflections}
            new = [item for item in made if (item.task, item.url, item.action) not in known]
            if new:
                self._reflections.extend(new)
                self._append(new)
        return new

    def _model_lesson(self, client: ChatClient, facts: dict[str, str]) -> str:
        user = (
            f"TASK: {facts['instruction']}\nPLACE: {facts['place']}\nACTION TAKEN: {facts['action']}\n"
            f"EXPECTED: {facts['expected']}\nWHAT HAPPENED: {facts['happened']}\n"
            f"BEST ALTERNATIVE TRIED: {facts['alternative']}"
        )
        try:
            reply = client.complete(chat_messages(LESSON_SYSTEM_PROMPT, user, []))
        except Exception as error:  # a lesson is never worth failing the task for
            _log.warning("the reflection model failed (%s); the template lesson is used", error)
            return ""
        return one_line(reply.strip().strip('"'), LESSON_CHARS)

    # -- retrieving ------------------------------------------------------------------------------------

    def retrieve(self, instruction: str, url: str = "") -> list[str]:
        """The lessons of the ``k`` stored reflections most like ``instruction`` and ``url`` (token cosine over
        both; ties: the newer first; a lesson stored twice counts once)."""
        query = _tokens(f"{instruction} {url}")
        with self._lock:
            stored = list(self._reflections)
        ranked = sorted(
            range(len(stored)),
            key=lambda index: (-_cosine(query, _tokens(f"{stored[index].instruction} {stored[index].url}")), -index),
        )
        lessons: list[str] = []
        for index in ranked:
            if stored[index].lesson not in lessons:
                lessons.append(stored[index].lesson)
            if len(lessons) >= self.k:
                break
        return lessons

    @property
    def reflections(self) -> list[Reflection]:
        with self._lock:
            return list(self._reflections)

    def __len__(self) -> int:
        with self._lock:
            return len(self._reflections)


def fallen_steps(tree: SearchTree, margin: float = 0.2) -> list[tuple[SearchNode, SearchNode]]:
    """(parent, child) pairs where the child's value is below the parent's by ``margin`` or more, or the child is
    terminal with value 0: the executed path's first (in order), then the explored ones by the size of the fall.
    Values that stand in for a failed value model (the policy's prior) are not judgements and are left out."""

    def judged(node: SearchNode) -> bool:
        return node.value is not None and node.value_source != PRIOR_SOURCE

    def fell(parent: SearchNode, child: SearchNode) -> bool:
        if not (judged(parent) and judged(child)):
            return False
        return parent.value - child.value >= margin - 1e-9 or (child.terminal and child.value == 0)

    on_path = list(zip(tree.executed, tree.executed[1:], strict=False))
    executed = [(tree.nodes[a], tree.nodes[b]) for a, b in on_path if fell(tree.nodes[a], tree.nodes[b])]
    path_edges = set(on_path)
    explored = [
        (tree.nodes[node.parent], node)
        for node in tree.nodes
        if node.parent is not None and (node.parent, node.id) not in path_edges and fell(tree.nodes[node.parent], node)
    ]
    explored.sort(key=lambda pair: (-(float(pair[0].value) - float(pair[1].value)), pair[1].id))
    return executed + explored


def _facts(tree: SearchTree, parent: SearchNode, child: SearchNode) -> dict[str, str]:
    """The contrast of one fallen step, as text: expected, happened, the best sibling, and the template lesson."""
    action = child.action or UNPARSABLE
    place = _place(parent.url)
    reasoning = _reasoning(child.reply)
    expected = f"the state was valued {parent.value:.2f}" + (f"; the agent reasoned: {reasoning}" if reasoning else "")
    happened = f"{_change(parent, child)}; the new state was valued {child.value:.2f}"
    siblings = [
        tree.nodes[index]
        for index in tree.nodes[parent.id].children
        if index != child.id and tree.nodes[index].value is not None and tree.nodes[index].value_source != PRIOR_SOURCE
    ]
    best = max(siblings, key=lambda node: (node.value, -node.id), default=None)
    better = best is not None and best.value > child.value
    alternative = f"`{best.action or UNPARSABLE}`, valued {best.value:.2f}" if better else "none scored higher"
    template = (
        f'At {place}, for tasks like "{one_line(tree.instruction, 120)}", `{action}` led to {_outcome(parent, child)} '
        f"(value {parent.value:.2f} -> {child.value:.2f}); "
        + (f"prefer `{best.action or 'another action'}`, which scored {best.value:.2f}." if better else (
            "no other action tried there scored higher; try a different approach."
        ))
    )  # fmt: skip
    return {
        "instruction": tree.instruction,
        "place": place,
        "action": action,
        "expected": expected,
        "happened": happened,
        "alternative": alternative,
        "template": template,
    }


def _reasoning(reply: str) -> str:
    """The reply's own reasoning: its text before the last ``` block (empty when the reply is only an action)."""
    start = reply.rfind("```", 0, reply.rfind("```")) if reply.count("```") >= 2 else -1
    if start <= 0:
        return ""
    return one_line(_ACTION_LEAD_IN.sub("", reply[:start]), REASONING_CHARS)


def _change(parent: SearchNode, child: SearchNode) -> str:
    if child.terminal:
        return "the episode ended there"
    if child.url == parent.url and child.digest == parent.digest:
        return f"nothing visible changed (still {_place(child.url)})"
    if child.url != parent.url:
        moved = f"the page went from {_place(parent.url)} to {_place(child.url)}"
    else:
        moved = f"the page stayed at {_place(child.url)}"
    before = set(parent.listing.splitlines())
    after = child.listing.splitlines()
    appeared = [line.strip() for line in after if line not in before and line.strip()]
    gone = len(before - set(after))
    examples = ", ".join(repr(one_line(line, 60)) for line in appeared[:2])
    shown = f" (e.g. {examples})" if examples else ""
    return f"{moved}; {len(appeared)} listed element(s) appeared{shown}, {gone} disappeared"


def _outcome(parent: SearchNode, child: SearchNode) -> str:
    if child.terminal:
        return "ending the task in a state judged failed" if child.value == 0 else "ending the task too early"
    if child.url == parent.url and child.digest == parent.digest:
        return "no visible change"
    if child.url != parent.url:
        return f"a page judged further from the goal ({_place(child.url)})"
    return "a change judged a step away from the goal"


def _place(url: str) -> str:
    """A URL as a short place name: host and path, no query."""
    if not url:
        return "the start page"
    parsed = urlparse(url)
    return one_line((parsed.netloc + parsed.path) or url, 80)


def _tokens(text: str) -> Counter[str]:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return Counter(word for word in words if len(word) > 1 and not word.isdigit() and word not in _STOP_TOKENS)


def _cosine(first: Counter[str], second: Counter[str]) -> float:
    if not first or not second:
        return 0.0
    dot = sum(count * second[word] for word, count in first.items())
    return dot / math.sqrt(sum(c * c for c in first.values()) * sum(c * c for c in second.values()))


def _parse_line(line: bytes) -> Reflection | None:
    """One reflections.jsonl line, or None when it is not a reflection (cut, edited, another format)."""
    try:
        record: Any = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    known = {item.name: item for item in fields(Reflection)}
    values = {key: value for key, value in record.items() if key in known}
    texts = ("task", "instruction", "url", "action", "expected", "happened", "lesson", "made_by")
    if not all(isinstance(values.get(name), str) for name in texts) or not values["lesson"].strip():
        return None
    for name in ("value_before", "value_after"):
        value = values.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return None
        values[name] = float(value)
    try:
        return Reflection(**values)
    except TypeError:
        return None
