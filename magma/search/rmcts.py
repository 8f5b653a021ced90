"""Reflective MCTS (ExACT, Yu et al.): test-time tree search for a UI agent over a live environment.

At each executed step the search runs ``budget.simulations`` simulations from the current state. One
simulation walks down the tree by PUCT (``magma.search.tree``) to a node not yet expanded, asks the policy for
``budget.branching`` candidate replies there (their shares are the priors), steps the environment into the
child PUCT picks, scores the new state with the value function and backs the value up. The executed action
is then the root's child of highest mean value. Going back to another node resets the environment (bundled
sites reset, the MiniWoB++ seed, the Android task's setup) and replays the replies that lead there, checking
that the replayed state's URL and listing are the node's (a mismatch is counted and kept in the tree).

A value function that fails (``ValueUnavailableError``) is counted, and the state takes the policy's prior as its
value: the search falls back to the policy's own choice and says so in the node's note. A restart that fails
mid-search ends the search; the path executed so far is the result.

The environment is driven through a ``SearchEnvironment`` (``magma.search.environments``), so the same search
runs on the web sites, MiniWoB++ and Android.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from data_tools.errors import UserFacingError
from magma.evaluation.task_failures import EpisodePhaseError
from magma.search.candidates import CandidatePolicy, canonical_action, group_candidates
from magma.search.tree import (
    SAVED_LISTING_CHARS,
    Backtrack,
    Decision,
    SearchNode,
    SearchTree,
    backpropagate,
    best_child,
    listing_digest,
    select_child,
)
from magma.search.values import ValueContext, ValueFunction, ValueUnavailableError

_log = logging.getLogger(__name__)
NODE_IMAGE_WIDTH = 640


class SearchBudgetError(UserFacingError, ValueError):
    """A search budget that cannot run (no simulations, no depth, no candidates)."""


@dataclass(frozen=True)
class SearchBudget:
    """How much the search may do: ``simulations`` per executed step (``total`` caps them over the task),
    ``depth`` actions below the current state, ``branching`` candidates drawn per expansion (the distinct
    actions among them become the children), ``exploration`` PUCT's constant."""

    simulations: int = 10
    depth: int = 4
    branching: int = 5
    total: int | None = None
    exploration: float = 1.0

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be at least 1, got {value}"
            for name, value in (("simulations", self.simulations), ("depth", self.depth), ("branching", self.branching))
            if value < 1
        ]
        if self.total is not None and self.total < 1:
            problems.append(f"total must be at least 1 (or not given), got {self.total}")
        if not self.exploration >= 0:
            problems.append(f"exploration must be >= 0, got {self.exploration}")
        if problems:
            raise SearchBudgetError(
                "search budget: " + "; ".join(problems) + " (--search-simulations, --search-depth, --search-branching, "
                "--search-total); use --search none to run the policy without search"
            )


class SearchEnvironment(Protocol):
    """The environment as the search drives it: ``restart`` gives the task's start state again (raises when it
    cannot), ``step`` is the env's step, ``grade`` the task's grader as if the agent stopped now with
    ``answer`` (None when the grader cannot tell before the end)."""

    max_steps: int

    def restart(self) -> dict[str, Any]: ...

    def step(self, reply: str) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]: ...

    def grade(self, answer: str) -> float | None: ...


class SearchRestartError(RuntimeError):
    """The environment could not be brought back to the task's start; the search ends there."""


@dataclass
class SearchOutcome:
    tree: SearchTree
    replies: list[str]  # the executed path's replies, in order
    ended_early: str | None = None  # why the search stopped before the path ended (a failed restart)


def terminal_reward(reward: float, info: dict[str, Any]) -> float:
    """A terminal state's grade in [0, 1]: the env's success when it says, else its reward."""
    success = info.get("success")
    if success is not None:
        return 1.0 if success else 0.0
    return min(max(float(reward), 0.0), 1.0)


class ReflectiveMCTS:
    """One task's search. ``run`` returns the executed path and the tree; the caller records the path."""

    def __init__(
        self,
        env: SearchEnvironment,
        policy: CandidatePolicy,
        value: ValueFunction,
        budget: SearchBudget,
        trajectory_dir: Path | None = None,
        save_images: bool = True,
        parse_action: Callable[[str], str | None] = canonical_action,
    ) -> None:
        self.env, self.policy, self.value, self.budget = env, policy, value, budget
        self.parse_action = parse_action  # the env's grammar: which replies name the same action
        self.trajectory_dir = trajectory_dir
        self.save_images = save_images and trajectory_dir is not None
        self.tree = SearchTree(value_kind=value.name, privileged=value.privileged, budget=asdict(budget))
        self.at: int | None = None  # the node the environment is at (None: unknown, e.g. after a failed replay)
        self.observations: dict[int, dict[str, Any]] = {}  # the node the env is at: its observation
        self.step_index = 0
        self.instruction = ""
        self.failure_reasons: list[str] = []  # the value function's, in order
        self.exhausted: set[int] = set()  # nodes where a new draw brought no new action
        self.entries = 0  # states reached so far (SearchNode.entered)

    # -- the environment -------------------------------------------------------------------------------

    def _step(self, reply: str) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        self.tree.stats.environment_steps += 1
        try:
            return self.env.step(reply)
        except Exception as error:
            raise EpisodePhaseError("environment", error) from error

    def _restart(self) -> dict[str, Any]:
        try:
            return self.env.restart()
        except Exception as error:
            self.tree.stats.restart_failures += 1
            raise SearchRestartError(f"the task could not be reset for a backtrack: {error}") from error

    def _go_to(self, node_id: int) -> dict[str, Any]:
        """Bring the environment to ``node_id``'s state (a reached, non-terminal node); returns its observation."""
        if self.at == node_id:
            return self.observations[node_id]
        origin = self.at
        observation = self._restart()
        path = self.tree.path(node_id)
        matched, note = True, ""
        for index in path[1:]:
            observation, _, terminated, truncated, _ = self._step(self.tree.nodes[index].reply)
            node = self.tree.nodes[index]
            if terminated or truncated:
                matched, note = False, f"the replay ended the episode at node {index}"
                break
            if matched and (observation.get("url", "") != node.url or _digest(observation) != node.digest):
                matched = False
                note = f"node {index}: replayed URL {observation.get('url', '')} vs {node.url}" + (
                    "" if observation.get("url", "") != node.url else " (same URL, another listing)"
                )
        self.tree.stats.replays += 1
        if not matched:
            self.tree.stats.replay_mismatches += 1
            _log.info("search replay mismatch: %s", note)
        self.tree.backtracks.append(Backtrack(self.step_index, origin, node_id, len(path) - 1, matched, note))
        if note.startswith("the replay ended"):
            self.at = None
            raise SearchRestartError(f"replaying the path to node {node_id} ended the episode early")
        self.at = node_id
        self.observations = {node_id: observation}
        return observation

    # -- nodes -----------------------------------------------------------------------------------------

    def _record_state(self, node: SearchNode, observation: dict[str, Any]) -> None:
        node.entered, node.entered_at_step = self.entries, self.step_index
        self.entries += 1
        listing = str(observation.get("som") or observation.get("text") or "")
        node.url = str(observation.get("url", ""))
        node.listing = listing[:SAVED_LISTING_CHARS]
        node.digest = listing_digest(listing)
        if self.save_images and observation.get("image") is not None:
            from magma.evaluation.ui_episode import save_step_image

            node.image = f"node-{node.id:04d}.jpg"
            save_step_image(observation["image"], self.trajectory_dir / node.image, NODE_IMAGE_WIDTH)

    def _evaluate(self, node: SearchNode, observation: dict[str, Any], answer: str = "") -> float:
        path_actions = [self.tree.nodes[index].action or "(no action)" for index in self.tree.path(node.id)[1:]]
        context = ValueContext(
            self.instruction, observation, path_actions, node.terminal, answer, node.reward, self.env
        )
        started = time.perf_counter()
        try:
            estimate = self.value.evaluate(context)
            self.tree.stats.value_calls += estimate.calls
            node.value, node.value_source, node.value_note = estimate.value, self.value.name, estimate.note
        except ValueUnavailableError as error:
            self.tree.stats.value_failures += 1
            node.value, node.value_source = node.prior, "policy-prior"
            node.value_note = f"value unavailable ({error}); the policy's own preference (its prior) is used"
            self.failure_reasons.append(str(error))
        self.tree.stats.value_seconds += time.perf_counter() - started
        return float(node.value)

    def _expand(self, node: SearchNode, observation: dict[str, Any]) -> int:
        """Ask the policy for candidates at ``node`` (the env is there) and add the actions it does not have yet
        as children; returns how many were added."""
        self.tree.stats.proposals += 1
        started = time.perf_counter()
        try:
            candidates = self.policy.propose(node.policy_state, observation, self.budget.branching)
        except Exception as error:  # the policy's failure, not the environment's
            raise EpisodePhaseError("policy", error) from error
        self.tree.stats.policy_seconds += time.perf_counter() - started
        known = {self.tree.nodes[index].action or self.tree.nodes[index].reply for index in node.children}
        added = 0
        for grouped in group_candidates(candidates, self.budget.branching, self.parse_action):
            if (grouped.action or grouped.reply) in known:
                continue
            added += 1
            child = self.tree.add(
                node.id,
                reply=grouped.reply,
                action=grouped.action,
                prior=grouped.prior,
                depth=node.depth + 1,
                made_at_step=self.step_index,
            )
            child.policy_state = grouped.next_state
        node.expanded = True
        return added

    def _widen(self, node: SearchNode) -> None:
        """Every child of ``node`` is a finished episode (a stop, a wrong click that ended the task): draw more
        candidates there instead of revisiting ends, until a draw brings no new action."""
        if node.id in self.exhausted or not node.children:
            return
        if not all(self.tree.nodes[index].terminal for index in node.children):
            return
        if not self._expand(node, self._go_to(node.id)):
            self.exhausted.add(node.id)

    def _enter(self, child: SearchNode) -> float:
        """Step from the child's parent (where the env is) into ``child``; record and score its state."""
        observation, reward, terminated, truncated, info = self._step(child.reply)
        self._record_state(child, observation)
        answer = ""
        if terminated or truncated:
            child.terminal, child.reward = True, terminal_reward(reward, info)
            answer = str(info.get("answer", ""))
            self.at = None  # the episode is over: the next move restarts
        else:
            self.at = child.id
            self.observations = {child.id: observation}
        return self._evaluate(child, observation, answer)

    # -- the search ------------------------------------------------------------------------------------

    def _simulate(self, root: SearchNode) -> None:
        node, depth = root, 0
        while node.expanded and node.children and not node.terminal and depth < self.budget.depth:
            self._widen(node)
            child = select_child(self.tree, node, self.budget.exploration)
            depth += 1
            if not child.reached:
                self._go_to(node.id)
                backpropagate(self.tree, child.id, self._enter(child), stop_at=root.id)
                return
            node = child
        if node.terminal or depth >= self.budget.depth or node.depth >= self.env.max_steps:
            backpropagate(self.tree, node.id, float(node.value or 0.0), stop_at=root.id)
            return
        observation = self._go_to(node.id)
        self._expand(node, observation)
        if not node.children:  # the policy proposed nothing: the state's own value
            backpropagate(self.tree, node.id, float(node.value or 0.0), stop_at=root.id)
            return
        child = select_child(self.tree, node, self.budget.exploration)
        backpropagate(self.tree, child.id, self._enter(child), stop_at=root.id)

    def run(self, task: dict[str, Any], key: str = "") -> SearchOutcome:
        started = time.perf_counter()
        self.instruction = str(task.get("instruction", ""))
        self.tree.task, self.tree.instruction = key, self.instruction
        self.tree.reflections_used = [str(text) for text in task.get("reflections") or []]
        observation = self._restart()
        root = self.tree.add(None)
        root.policy_state = self.policy.start(task)
        self._record_state(root, observation)
        self.at, self.observations = root.id, {root.id: observation}
        self._evaluate(root, observation)
        self.tree.executed = [root.id]
        ended_early = None
        remaining = self.budget.total
        try:
            for step_index in range(self.env.max_steps):
                self.step_index = step_index
                current = self.tree.nodes[self.tree.executed[-1]]
                if current.terminal:
                    break
                simulations = self.budget.simulations if remaining is None else min(remaining, self.budget.simulations)
                for _ in range(simulations):
                    self._simulate(current)
                    self.tree.stats.simulations += 1
                if remaining is not None:
                    remaining -= simulations
                if not current.expanded:  # the total budget is spent: follow the policy
                    self._expand(current, self._go_to(current.id))
                chosen = best_child(self.tree, current)
                if chosen is None:
                    break
                self.tree.decisions.append(Decision(step_index, chosen.id, chosen.q, chosen.visits))
                if not chosen.reached:
                    self._go_to(current.id)
                    self._enter(chosen)
                self.tree.executed.append(chosen.id)
        except SearchRestartError as error:
            ended_early = str(error)
            _log.warning("search ended early: %s", error)
        self.tree.stats.seconds = time.perf_counter() - started
        replies = [self.tree.nodes[index].reply for index in self.tree.executed[1:]]
        return SearchOutcome(self.tree, replies, ended_early)


def _digest(observation: dict[str, Any]) -> str:
    return listing_digest(str(observation.get("som") or observation.get("text") or ""))
