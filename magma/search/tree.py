"""The search tree of one UI task (Reflective MCTS, ``magma.search.rmcts``): nodes with the action that led
to them, the policy's prior, visits and values; the executed path; the backtracks (reset and replay) with
whether the replayed state matched. Saved as ``search_tree.json`` in the task's trajectory folder: the report
draws it and ``agent data search-traces`` turns it into training samples.

The selection rule is PUCT (AlphaZero's, as ExACT uses): ``Q + c * P * sqrt(N_parent) / (1 + N_child)``
with ``Q`` the mean backed-up value (0 for an unvisited child) and ``P`` the share of the policy's sampled
candidates that proposed the child's action.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from data_tools.atomic_files import write_json_atomically
from data_tools.errors import UserFacingError

TREE_FILE = "search_tree.json"
TREE_FORMAT = "magma-search-tree/1"
SAVED_LISTING_CHARS = 4000  # a node keeps the start of its Set-of-Mark listing (the traces' text observation)


class SearchTreeError(UserFacingError, ValueError):
    """A ``search_tree.json`` that is not a search tree of this format."""


def listing_digest(listing: str) -> str:
    """A short fingerprint of a Set-of-Mark listing (the replay check compares it with the node's)."""
    return hashlib.sha1(listing.encode("utf-8", "replace")).hexdigest()[:16]


@dataclass
class SearchNode:
    """One state of the task, reached by ``reply`` (the policy's whole text; ``action`` its parsed VWA action,
    None when it did not parse) from ``parent``. ``value`` is this state's own evaluation; ``visits`` and
    ``value_sum`` the backed-up statistics."""

    id: int
    parent: int | None
    reply: str = ""
    action: str | None = None
    prior: float = 1.0
    depth: int = 0  # actions from the task's start
    made_at_step: int = 0  # the executed step during whose search the node was made
    entered: int | None = None  # when the search first reached the state: 0 the start, then 1, 2, ...
    entered_at_step: int | None = None  # the executed step during whose search that was
    url: str = ""
    listing: str = ""  # the start of the Set-of-Mark listing (SAVED_LISTING_CHARS)
    digest: str = ""  # listing_digest of the whole listing
    image: str | None = None  # the Set-of-Mark screenshot's file in the trajectory folder
    value: float | None = None  # None: not reached yet
    value_source: str = ""  # grader, model, or policy-prior (the value model failed: the policy's own choice)
    value_note: str = ""  # the value model's rationale, or why it fell back
    visits: int = 0
    value_sum: float = 0.0
    terminal: bool = False
    reward: float | None = None  # the environment's reward at a terminal node
    expanded: bool = False
    children: list[int] = field(default_factory=list)
    policy_state: Any = field(default=None, repr=False, compare=False)  # the candidate policy's; not saved

    @property
    def q(self) -> float:
        """The mean backed-up value (0 before any visit)."""
        return self.value_sum / self.visits if self.visits else 0.0

    @property
    def reached(self) -> bool:
        return self.value is not None

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record.pop("policy_state")
        record["q"] = round(self.q, 6)
        return record


@dataclass
class Backtrack:
    """One reset-and-replay: from the node the environment was at to ``to`` (replaying ``replayed`` actions);
    ``matched`` is False when the replayed state's URL or listing differed from the node's."""

    made_at_step: int
    origin: int | None
    to: int
    replayed: int
    matched: bool
    note: str = ""


@dataclass
class Decision:
    """An executed step's choice: the child executed, with its mean value and visits at that moment."""

    step: int
    node: int
    q: float
    visits: int


@dataclass
class SearchStats:
    """What one task's search cost and how it went."""

    simulations: int = 0
    environment_steps: int = 0  # every step: the search's, its replays' and the executed path's record
    replays: int = 0
    replay_mismatches: int = 0
    value_calls: int = 0
    value_failures: int = 0  # the value model unreachable, timed out or unparsable: the policy's prior used
    restart_failures: int = 0
    proposals: int = 0  # candidate batches asked of the policy
    seconds: float = 0.0  # the whole search
    policy_seconds: float = 0.0  # proposing candidates
    value_seconds: float = 0.0  # scoring states

    @property
    def replay_match_share(self) -> float | None:
        return None if not self.replays else 1.0 - self.replay_mismatches / self.replays


@dataclass
class SearchTree:
    """The nodes (``nodes[i].id == i``; node 0 is the task's start), the executed path, the backtracks."""

    task: str = ""
    instruction: str = ""
    value_kind: str = ""  # grader (privileged), model, or the name of the value function
    privileged: bool = False  # the value reads the task's own grader: an oracle, for studying the search
    budget: dict[str, Any] = field(default_factory=dict)
    nodes: list[SearchNode] = field(default_factory=list)
    executed: list[int] = field(default_factory=list)
    backtracks: list[Backtrack] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    stats: SearchStats = field(default_factory=SearchStats)
    reflections_used: list[str] = field(default_factory=list)

    def add(self, parent: int | None, **values: Any) -> SearchNode:
        node = SearchNode(id=len(self.nodes), parent=parent, **values)
        self.nodes.append(node)
        if parent is not None:
            self.nodes[parent].children.append(node.id)
        return node

    def path(self, node_id: int) -> list[int]:
        """Node ids from the start to ``node_id``, both included."""
        ids = []
        current: int | None = node_id
        while current is not None:
            ids.append(current)
            current = self.nodes[current].parent
        return ids[::-1]

    def replies(self, node_id: int) -> list[str]:
        """The replies that lead from the start to ``node_id``."""
        return [self.nodes[index].reply for index in self.path(node_id)[1:]]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": TREE_FORMAT,
            "task": self.task,
            "instruction": self.instruction,
            "value_kind": self.value_kind,
            "privileged": self.privileged,
            "budget": self.budget,
            "executed": self.executed,
            "backtracks": [asdict(backtrack) for backtrack in self.backtracks],
            "decisions": [asdict(decision) for decision in self.decisions],
            "stats": {**asdict(self.stats), "replay_match_share": self.stats.replay_match_share},
            "reflections_used": self.reflections_used,
            "nodes": [node.to_json() for node in self.nodes],
        }

    def save(self, folder: Path) -> Path:
        path = Path(folder) / TREE_FILE
        write_json_atomically(path, self.to_json())
        return path

    @classmethod
    def from_json(cls, record: Any, where: str = "the tree") -> SearchTree:
        if not isinstance(record, dict) or record.get("format") != TREE_FORMAT:
            raise SearchTreeError(f"{where} is not a {TREE_FORMAT} search tree; it comes from `agent run --search`")
        try:
            nodes = [SearchNode(**_known_fields(SearchNode, item)) for item in record["nodes"]]
            tree = cls(
                task=str(record.get("task", "")),
                instruction=str(record.get("instruction", "")),
                value_kind=str(record.get("value_kind", "")),
                privileged=bool(record.get("privileged", False)),
                budget=dict(record.get("budget") or {}),
                nodes=nodes,
                executed=[int(index) for index in record.get("executed", [])],
                backtracks=[Backtrack(**item) for item in record.get("backtracks", [])],
                decisions=[Decision(**item) for item in record.get("decisions", [])],
                stats=SearchStats(**_known_fields(SearchStats, record.get("stats") or {})),
                reflections_used=[str(text) for text in record.get("reflections_used", [])],
            )
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise SearchTreeError(f"{where} is damaged ({error}); rerun the task with --search") from None
        count = len(tree.nodes)
        broken = [index for index, node in enumerate(tree.nodes) if not _node_fits(tree, node, index)]
        if not count or broken or any(not 0 <= index < count for index in tree.executed):
            raise SearchTreeError(f"{where} has nodes that do not form a tree (node {broken[:3] or 'list'})")
        return tree

    @classmethod
    def load(cls, folder: Path) -> SearchTree:
        path = Path(folder) / TREE_FILE
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise SearchTreeError(f"cannot read {path}: {error}") from None
        return cls.from_json(record, str(path))


_TEXT_FIELDS = ("reply", "url", "listing", "digest", "value_source", "value_note")
_NUMBER_FIELDS = ("prior", "value_sum")
_OPTIONAL_NUMBER_FIELDS = ("value", "reward")
_COUNT_FIELDS = ("depth", "made_at_step", "visits")
_OPTIONAL_COUNT_FIELDS = ("entered", "entered_at_step")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _node_fits(tree: SearchTree, node: SearchNode, index: int) -> bool:
    """Whether a loaded node has its fields' types and its place in the tree (a parent before it, children
    after it that name it as their parent)."""
    count = len(tree.nodes)
    if node.id != index or not isinstance(node.children, list) or not isinstance(node.terminal, bool):
        return False
    if not all(isinstance(getattr(node, name), str) for name in _TEXT_FIELDS):
        return False
    if not isinstance(node.action, str | None) or not isinstance(node.image, str | None):
        return False
    if not all(_is_number(getattr(node, name)) for name in _NUMBER_FIELDS):
        return False
    if not all(getattr(node, name) is None or _is_number(getattr(node, name)) for name in _OPTIONAL_NUMBER_FIELDS):
        return False
    counts = [getattr(node, name) for name in _COUNT_FIELDS]
    counts += [getattr(node, name) for name in _OPTIONAL_COUNT_FIELDS if getattr(node, name) is not None]
    if not all(isinstance(value, int) and not isinstance(value, bool) and value >= 0 for value in counts):
        return False
    if (index == 0) != (node.parent is None):
        return False
    if node.parent is not None and not (isinstance(node.parent, int) and 0 <= node.parent < index):
        return False
    return all(
        isinstance(child, int) and not isinstance(child, bool) and index < child < count
        and tree.nodes[child].parent == index
        for child in node.children
    )  # fmt: skip


def _known_fields(kind: type, record: dict[str, Any]) -> dict[str, Any]:
    names = {item.name for item in fields(kind)} - {"policy_state"}
    return {key: value for key, value in record.items() if key in names}


def puct_score(parent: SearchNode, child: SearchNode, exploration: float) -> float:
    """PUCT: the child's mean value plus the exploration bonus its prior and visit count give it."""
    return child.q + exploration * child.prior * math.sqrt(max(parent.visits, 1)) / (1 + child.visits)


def select_child(tree: SearchTree, node: SearchNode, exploration: float) -> SearchNode:
    """The child PUCT picks (ties: the earlier child, which the policy proposed more often)."""
    return max((tree.nodes[index] for index in node.children), key=lambda child: puct_score(node, child, exploration))


def backpropagate(tree: SearchTree, node_id: int, value: float, stop_at: int | None = None) -> None:
    """Add one visit with ``value`` to ``node_id`` and each ancestor up to ``stop_at`` (the search's root)."""
    for index in reversed(tree.path(node_id)):
        node = tree.nodes[index]
        node.visits += 1
        node.value_sum += value
        if index == stop_at:
            break


def best_child(tree: SearchTree, node: SearchNode) -> SearchNode | None:
    """The action to execute: the reached child of highest mean value; on a tie, one that ends the task when the
    value is positive (the same value sooner) and one that does not when it is 0 (a failed end is final), then
    more visits, then higher prior. With no reached child, the policy's most probable candidate."""
    children = [tree.nodes[index] for index in node.children]
    if not children:
        return None
    reached = [child for child in children if child.visits]
    if reached:
        return max(
            reached, key=lambda child: (round(child.q, 9), child.terminal == (child.q > 0), child.visits, child.prior)
        )
    return max(children, key=lambda child: child.prior)
