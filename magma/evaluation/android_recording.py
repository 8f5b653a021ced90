"""Android episodes -> training shards: each step becomes a UI-action sample of the sample contract, the
Set-of-Mark screenshot with the Android prompt (the one acting uses) and the AITW-JSON answer.

A step is recorded only when its action parsed and ran without error. The AITW answer form is used when the
action has one (tap by mark, swipe, type, back/home, status); AndroidWorld-only actions (open_app, long
press, answer, wait) keep their AndroidWorld JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_tools.shards import ShardWriter
from envs.android.actions import DeviceAction
from magma.actions import UIAction, format_aitw_action
from magma.evaluation.android_prompt import ANDROID_SYSTEM_PROMPT, android_turn_text


@dataclass
class RecordedAndroidStep:
    image: np.ndarray  # the Set-of-Mark screenshot the policy saw
    observation: dict[str, Any]  # som, package, activity, instruction
    history: list[str]
    action: DeviceAction
    marks: list[dict[str, Any]] = field(default_factory=list)


def action_answer(action: DeviceAction) -> str:
    """The answer text a model should produce for ``action``."""
    direct = {
        "tap": lambda: UIAction("tap", element_id=action.mark) if action.mark is not None else None,
        "swipe": lambda: UIAction("swipe", direction=action.direction) if action.mark is None else None,
        "type": lambda: UIAction("type", text=action.text) if action.mark is None else None,
        "key": lambda: UIAction(f"navigate_{action.key}") if action.key in ("back", "home") else None,
        "status": lambda: UIAction("status", answer="complete" if action.status == "complete" else "impossible"),
    }
    ui_action = direct.get(action.kind, lambda: None)()
    if ui_action is not None:
        return format_aitw_action(ui_action)
    payload: dict[str, Any] = {
        "long_press": {"action_type": "long_press", "index": action.mark},
        "open_app": {"action_type": "open_app", "app_name": action.app},
        "answer": {"action_type": "answer", "text": action.text},
        "wait": {"action_type": "wait"},
        "key": {"action_type": "keyboard_enter"},
        "type": {"action_type": "input_text", "text": action.text, "index": action.mark},
        "swipe": {"action_type": "swipe", "direction": action.direction, "index": action.mark},
        "tap": {"action_type": "click", "x": (action.point or (0, 0))[0], "y": (action.point or (0, 0))[1]},
    }[action.kind]
    return json.dumps(payload, ensure_ascii=False)


def step_sample(step: RecordedAndroidStep, sample_id: str, source: str = "android") -> dict[str, Any]:
    """One UI-action training sample (the record; its one image is ``step.image``)."""
    question = android_turn_text(step.observation, {"instruction": step.observation.get("instruction")}, step.history)
    return {
        "id": sample_id,
        "source": source,
        "conversations": [
            {"from": "system", "value": ANDROID_SYSTEM_PROMPT},
            {"from": "human", "value": f"<image>\n{question}"},
            {"from": "gpt", "value": f"```{action_answer(step.action)}```"},
        ],
        "meta": {
            "task": "ui_action",
            "grammar": "aitw",
            "action": step.action.describe(),
            "package": step.observation.get("package", ""),
            "activity": step.observation.get("activity", ""),
            "image_size": [int(step.image.shape[1]), int(step.image.shape[0])],
            "marks": step.marks,
        },
    }


def write_android_shards(
    episodes: dict[str, list[RecordedAndroidStep]], out_dir: str | Path, max_samples_per_shard: int = 1000
) -> int:
    """Write every step of ``episodes`` (task id -> steps) into ``out_dir/android-NNNNNN.tar``; returns the count."""
    count = 0
    with ShardWriter(Path(out_dir), prefix="android", max_samples_per_shard=max_samples_per_shard) as writer:
        for task_id, steps in episodes.items():
            for index, step in enumerate(steps):
                writer.write(step_sample(step, f"{task_id}-step{index:03d}"), [step.image])
                count += 1
    return count


def marks_metadata(env: Any) -> list[dict[str, Any]]:
    """The bound marks of ``env``'s current observation as plain data (label, box, class, text, resource id)."""
    return [
        {
            "mark": bound.label,
            "box": list(bound.node.bounds),
            "class": bound.node.short_class,
            "text": bound.node.label,
            "resource_id": bound.node.resource_id,
        }
        for bound in env.unwrapped.marks
    ]


class AndroidRecorder:
    """Wraps an ``AndroidEnv`` and keeps every step that parsed and ran (the observation the policy saw, the
    marks, the action) under its task id in ``episodes``; ``write_android_shards(recorder.episodes, DIR)``."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.episodes: dict[str, list[RecordedAndroidStep]] = {}
        self._observation: dict[str, Any] | None = None
        self._steps: list[RecordedAndroidStep] = []
        self._history: list[str] = []

    @property
    def max_steps(self) -> int:
        return self.env.max_steps

    @property
    def unwrapped(self) -> Any:
        return self.env.unwrapped

    def reset(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        observation, info = self.env.reset(**kwargs)
        self._observation, self._history = observation, []
        self._steps = self.episodes.setdefault(info["task_id"], [])
        self._steps.clear()
        return observation, info

    def step(self, action: str) -> tuple[dict, float, bool, bool, dict]:
        from envs.android.actions import parse_android_action
        from magma.actions import ActionParseError

        before, marks = self._observation, marks_metadata(self.env)
        result = self.env.step(action)
        info = result[4]
        try:
            parsed = parse_android_action(action)
        except ActionParseError:
            parsed = None
        if parsed is not None and not info.get("action_error") and before is not None:
            observation = {key: before.get(key) for key in ("som", "package", "activity", "instruction")}
            self._steps.append(RecordedAndroidStep(before["image"], observation, list(self._history), parsed, marks))
            self._history.append(parsed.describe())
        self._observation = result[0]
        return result
