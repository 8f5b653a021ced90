"""The prompt every Android policy sees (the Magma model, a chat endpoint, and the recorded training samples):
the goal, the app in front, the mark listing and the previous actions, with the Set-of-Mark screenshot."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from magma.policies.web import MAX_LISTING_CHARS, WebPrompt, lessons_text

ANDROID_SYSTEM_PROMPT = """You operate an Android phone to complete a task. Each turn you see a screenshot in \
which the interactive elements carry numbered marks, the same elements listed as [id] [class] [text] [state], \
the app in front and the actions you took so far. Answer with exactly one action as JSON:
{"TAP": {"MARK": id}} | {"SWIPE": "UP"|"DOWN"|"LEFT"|"RIGHT"} (the finger's direction; UP scrolls down) | \
{"TYPE": "text"} (into the focused field) | {"NAVIGATE": "BACK"|"HOME"} | \
{"action_type": "open_app", "app_name": "name"} | {"action_type": "long_press", "index": id} | \
{"action_type": "answer", "text": "answer"} | {"SET_TASK_STATUS": "COMPLETE"|"IMPOSSIBLE"}
Reason briefly, then end with the action in a block: ```{"TAP": {"MARK": 3}}```"""


def android_turn_text(observation: dict[str, Any], task: dict[str, Any], history: Sequence[str]) -> str:
    """The user text of one step (no image placeholders)."""
    listing = str(observation.get("som") or observation.get("text") or "")
    if len(listing) > MAX_LISTING_CHARS:
        listing = listing[:MAX_LISTING_CHARS] + "\n... (listing cut)"
    goal = str(task.get("instruction") or observation.get("instruction") or "")
    previous = "\n".join(f"{index + 1}. {action}" for index, action in enumerate(history)) or "None"
    app = f"{observation.get('package', '')}/{observation.get('activity', '')}"
    return f"GOAL: {goal}\nAPP: {app}\nELEMENTS:\n{listing}\n{lessons_text(task)}PREVIOUS ACTIONS:\n{previous}"


def android_prompt(
    observation: dict[str, Any], task: dict[str, Any], history: Sequence[str], system: str = ANDROID_SYSTEM_PROMPT
) -> WebPrompt:
    """One step's prompt, in the shape the web policies take (``OpenAIChatPolicy(prompt=android_prompt)``)."""
    images = [np.asarray(observation["image"])] if observation.get("image") is not None else []
    return WebPrompt(system, android_turn_text(observation, task, history), images)
