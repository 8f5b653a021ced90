"""One searched UI task inside ``agent run``: retrieve reflections for the task, run Reflective MCTS
(``magma.search.rmcts``), save the tree, then replay the executed path from the task's start through the
ordinary episode loop (``magma.evaluation.ui_episode``), so the task is graded by the environment and recorded
step by step exactly as an unsearched one; last, reflect on the tree for later tasks.

``SearchSettings`` is what decides a searched run's results (kept in ``run.json``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from data_tools.errors import UserFacingError
from magma.evaluation.results import EpisodeResult
from magma.evaluation.task_failures import EpisodePhaseError
from magma.evaluation.ui_episode import EarlyStopRules, StepRecord, parsed_action, run_ui_episode
from magma.search.candidates import CandidatePolicy
from magma.search.rmcts import ReflectiveMCTS, SearchBudget, SearchEnvironment
from magma.search.values import GraderValue, ValueFunction

_log = logging.getLogger(__name__)
SEARCH_METHODS = ("none", "rmcts")
VALUE_KINDS = ("grader", "model")
VALUE_OPTIONS = {  # the settings that mean nothing without a search, with their flags
    "value": "--value",
    "value_model": "--value-model",
    "value_base_url": "--value-base-url",
    "debate": "--debate",
    "value_timeout_s": "--value-timeout",
}


@dataclass
class SearchSettings:
    """A searched run's settings (``agent run ... --search rmcts``)."""

    method: str = "rmcts"
    simulations: int = 10  # per executed step
    depth: int = 4
    branching: int = 5
    total: int | None = None  # simulations over the whole task
    exploration: float = 1.0
    value: str = "grader"  # grader (the task's own, privileged) or model (--value-model)
    value_model: str | None = None  # the endpoint's model name
    value_base_url: str | None = None  # default: OPENAI_BASE_URL
    debate: bool = False  # ExACT's debate (for, against, judgement) instead of a single judge
    value_timeout_s: float = 30.0  # per value request; a state whose request fails takes the policy's prior
    reflections: bool = True
    temperature: float = 1.0  # the policy's sampling temperature for candidates
    seed: int = 0

    def budget(self) -> SearchBudget:
        return SearchBudget(self.simulations, self.depth, self.branching, self.total, self.exploration)

    def check(self) -> None:
        """Fail before any environment starts: an unknown method or value, a budget that cannot run."""
        if self.method not in SEARCH_METHODS[1:]:
            raise UserFacingError(f"--search {self.method!r} is not a search method; use one of {SEARCH_METHODS}")
        if self.value not in VALUE_KINDS:
            raise UserFacingError(f"--value {self.value!r} is not a value; use grader or model")
        if self.value == "model" and not self.value_model:
            raise UserFacingError("--value model needs --value-model NAME (a chat model at OPENAI_BASE_URL)")
        if not self.value_timeout_s > 0:
            raise UserFacingError(f"--value-timeout must be a positive number of seconds, got {self.value_timeout_s}")
        self.budget()


def search_settings(method: str, **values: Any) -> SearchSettings | None:
    """The settings for ``--search METHOD`` (None for ``none``), checked. Value options given without a search
    are refused rather than ignored."""
    if method == "none":
        defaults = asdict(SearchSettings())
        given = [name for name in VALUE_OPTIONS if name in values and values[name] != defaults[name]]
        if given:
            flags = ", ".join(VALUE_OPTIONS[name] for name in given)
            raise UserFacingError(f"{flags} go with --search rmcts (a value scores the search's states); add it")
        return None
    settings = SearchSettings(method=method, **values)
    settings.check()
    return settings


def make_value_function(settings: SearchSettings) -> ValueFunction:
    if settings.value == "grader":
        return GraderValue()
    from magma.policies.openai_chat import ChatClient
    from magma.search.chat_value import ChatValue

    client = ChatClient(settings.value_model or "", base_url=settings.value_base_url)
    return ChatValue(client, debate=settings.debate, timeout_s=settings.value_timeout_s)


class ReplayPolicy:
    """The executed path's replies in order (then the env's stop): how a searched task is recorded."""

    def __init__(self, replies: list[str], stop_action: str) -> None:
        self.replies, self.stop_action, self.position = list(replies), stop_action, 0

    def reset(self, task: dict[str, Any]) -> None:
        self.position = 0

    def act(self, observation: dict[str, Any]) -> str:
        if self.position >= len(self.replies):
            return self.stop_action
        self.position += 1
        return self.replies[self.position - 1]


REFLECTIONS_FILE = "reflections.jsonl"


class SearchRun:
    """What the tasks of one searched run share: its settings, the value function and the reflection store
    (``RUN_DIR/reflections.jsonl``, so a resumed run keeps what earlier tasks learned)."""

    def __init__(self, settings: SearchSettings, out_dir: str | Path) -> None:
        settings.check()
        self.settings = settings
        self.value = make_value_function(settings)
        self.reflections = None
        if settings.reflections:
            from magma.search.reflections import ReflectionStore

            self.reflections = ReflectionStore(
                Path(out_dir) / REFLECTIONS_FILE, client=getattr(self.value, "client", None)
            )

    def episode(
        self,
        environment: SearchEnvironment,
        record_env: Any,
        policy: CandidatePolicy,
        task_info: dict[str, Any],
        result: EpisodeResult,
        rules: EarlyStopRules,
        trajectory_dir: Path,
        save_images: bool = True,
        parse_action: Callable[[str], str | None] = parsed_action,
        stop_action: str = "stop []",
        restart_record: Callable[[], dict[str, Any]] | None = None,
    ) -> tuple[EpisodeResult, list[StepRecord]]:
        """Search ``task_info``'s task (``task_info`` as ``run_ui_episode`` takes it), record the executed path
        in ``record_env`` (the env ``environment`` drives, or a recorder around it: ``restart_record`` then
        starts its episode) and fill ``result``."""
        task = dict(task_info)
        start_url = str((task.pop("observation", None) or {}).get("url", ""))
        if self.reflections is not None:
            task["reflections"] = self.reflections.retrieve(str(task.get("instruction", "")), start_url)
        search = ReflectiveMCTS(
            environment, policy, self.value, self.settings.budget(), trajectory_dir, save_images, parse_action
        )
        try:
            outcome = search.run(task, key=result.key)
        except BaseException:
            search.tree.save(trajectory_dir)  # what was searched before the failure, for the report
            raise
        tree = outcome.tree
        try:
            observation = (restart_record or environment.restart)()
        except Exception as error:
            tree.save(trajectory_dir)
            raise EpisodePhaseError("environment", error) from error
        record_info = {**task, "observation": observation}
        record_dir = trajectory_dir if save_images else None
        result, records = run_ui_episode(
            record_env, ReplayPolicy(outcome.replies, stop_action), record_info, result, rules, record_dir,
            parse_action, stop_action,
        )  # fmt: skip
        tree.stats.environment_steps += len(records)
        result.policy_seconds = tree.stats.policy_seconds
        result.seconds += tree.stats.seconds
        failures = tree.stats.value_failures
        if failures:
            note = (
                f"the value failed {failures} time(s) (last: {search.failure_reasons[-1]}); "
                "the policy's own choice stood in"
            )
            result.eval_notes = [*result.eval_notes, note]
            _log.warning("%s: %s", result.key, note)
        if outcome.ended_early:
            result.eval_notes = [*result.eval_notes, f"search ended early: {outcome.ended_early}"]
        result.search = {
            **asdict(tree.stats),
            "replay_match_share": tree.stats.replay_match_share,
            "nodes": len(tree.nodes),
            "privileged_value": self.value.privileged,
        }
        tree.save(trajectory_dir)
        if self.reflections is not None:
            self.reflections.reflect(tree, result.success)
        return result, records
