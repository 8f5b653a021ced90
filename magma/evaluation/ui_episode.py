"""One UI episode (web, MiniWoB++, Android): the policy's replies through the env until it ends, ``max_steps``
or an early stop, with each step's Set-of-Mark screenshot, model text, parsed action and timings kept for
the report.

Early stops are VisualWebArena's: ``parse_failures`` replies in a row without a parsable action, or the
same action ``repeated_actions`` times in a row (a ``type`` action: that many times in the episode). The
episode then ends with ``stop []`` and is graded like any other, as VWA does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from magma.actions import ActionParseError, extract_vwa_action, format_vwa_action, parse_vwa_action
from magma.evaluation.results import EpisodeResult
from magma.evaluation.task_failures import EpisodePhaseError
from magma.policies import Policy

TRAJECTORY_IMAGE_WIDTH = 960


@dataclass(frozen=True)
class EarlyStopRules:
    """VWA's thresholds (``parsing_failure_th`` 3, ``repeating_action_failure_th`` 5)."""

    parse_failures: int = 3
    repeated_actions: int = 5

    def reason(self, actions: list[str | None]) -> str | None:
        """Why the episode should end now, given the parsed actions so far (None: a reply that did not parse)."""
        recent = actions[-self.parse_failures :]
        if len(recent) >= self.parse_failures and all(action is None for action in recent):
            return f"no parsable action in {self.parse_failures} replies in a row"
        if not actions or actions[-1] is None:
            return None
        last = actions[-1]
        if last.startswith("type "):
            if sum(action == last for action in actions) >= self.repeated_actions:
                return f"the same type action {self.repeated_actions} times"
            return None
        recent = actions[-self.repeated_actions :]
        if len(recent) >= self.repeated_actions and all(action == last for action in recent):
            return f"the same action {self.repeated_actions} times in a row"
        return None


@dataclass
class StepRecord:
    """One step as the report shows it."""

    step: int
    url: str
    reply: str
    action: str | None
    action_error: str | None
    image: str | None
    timings: dict[str, float] = field(default_factory=dict)


def parsed_action(reply: str) -> str | None:
    """The reply's action in canonical VWA text, or None when it has none that parses."""
    try:
        return format_vwa_action(parse_vwa_action(extract_vwa_action(reply)))
    except ActionParseError:
        return None


def save_step_image(image: np.ndarray, path: Path, width: int = TRAJECTORY_IMAGE_WIDTH) -> None:
    picture = Image.fromarray(np.asarray(image, dtype=np.uint8))
    if picture.width > width:
        picture = picture.resize((width, round(picture.height * width / picture.width)), Image.BILINEAR)
    picture.save(path, quality=80)


def _step(env: Any, action: str) -> tuple[Any, float, bool, bool, dict[str, Any]]:
    try:
        return env.step(action)
    except Exception as error:  # the action, the observation or the grading failed: this task's error
        raise EpisodePhaseError("environment", error) from error


def run_ui_episode(
    env: Any,
    policy: Policy,
    task_info: dict[str, Any],
    result: EpisodeResult,
    rules: EarlyStopRules,
    trajectory_dir: Path | None = None,
    parse_action: Callable[[str], str | None] = parsed_action,
    stop_action: str = "stop []",
) -> tuple[EpisodeResult, list[StepRecord]]:
    """Run the episode already reset in ``env`` (``task_info`` is what the policy's ``reset`` gets and
    ``observation`` its first observation) and fill ``result``; returns it with the step records.
    ``parse_action`` (reply -> canonical action text or None) and ``stop_action`` (sent at an early stop) are
    the env's grammar: VWA by default, another UI env's (Android) otherwise. An error of the policy or of the
    env is raised as ``EpisodePhaseError`` naming which of the two failed."""
    observation = task_info.pop("observation")
    try:
        policy.reset(task_info)
    except Exception as error:
        raise EpisodePhaseError("policy", error) from error
    started = time.perf_counter()
    actions: list[str | None] = []
    records: list[StepRecord] = []
    info: dict[str, Any] = {}
    reward = 0.0
    for step in range(env.max_steps + 1):
        image_name = None
        if trajectory_dir is not None:
            image_name = f"step-{step:03d}.jpg"
            save_step_image(observation["image"], trajectory_dir / image_name)
        policy_started = time.perf_counter()
        try:
            reply = str(policy.act(observation))
        except Exception as error:
            raise EpisodePhaseError("policy", error) from error
        policy_seconds = time.perf_counter() - policy_started
        result.policy_seconds += policy_seconds
        action = parse_action(reply)
        actions.append(action)
        url = str(observation.get("url", ""))
        observation, reward, terminated, truncated, info = _step(env, reply)
        records.append(
            StepRecord(step, url, reply, action, info.get("action_error"), image_name, {"policy": policy_seconds})
        )
        records[-1].timings.update(info.get("timings", {}))
        if terminated or truncated:
            break
        reason = rules.reason(actions)
        if reason:
            result.early_stop = reason
            observation, reward, _, _, info = _step(env, stop_action)
            records.append(StepRecord(step + 1, str(observation.get("url", "")), "", stop_action, None, None))
            break
    result.seconds = time.perf_counter() - started
    result.status = "done"
    result.success = info.get("success")
    result.reward = float(reward)
    result.eval_status = str(info.get("eval_status", ""))
    result.eval_notes = list(info.get("eval_notes") or [])
    result.answer = str(info.get("answer", ""))
    result.steps = int(info.get("steps", len(records)))
    result.failed_steps = int(info.get("failed_steps", 0))
    return result, records


def write_steps(records: list[StepRecord], trajectory_dir: Path) -> None:
    """The episode's steps as ``steps.jsonl`` in its trajectory folder (what the report's task page shows)."""
    with (trajectory_dir / "steps.jsonl").open("w", encoding="utf-8") as file:
        for record in records:
            file.write(json.dumps(asdict(record)) + "\n")
