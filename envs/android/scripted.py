"""A scripted Android policy: replays a task's ``demo`` steps, turning node selectors into the mark numbers
of the current observation. Privileged like the web oracle: it reads the environment's bound marks."""

from __future__ import annotations

import json
from typing import Any

SELECTOR_KEYS = {"TEXT": "label", "RESOURCE_ID": "resource_id", "CONTENT_DESC": "content_desc"}


class ScriptedAndroidPolicy:
    """``act`` returns the next demo step as JSON text; ``SET_TASK_STATUS`` ends the episode."""

    def __init__(self, env: Any, demo: list[dict[str, Any]]) -> None:
        self.env = env
        self.demo = demo
        self.position = 0

    def reset(self, task: dict[str, Any]) -> None:
        self.position = 0

    def _mark(self, selector: Any) -> Any:
        """A mark number for a selector (``{"TEXT": "Save"}``); numbers pass through; None when not on screen."""
        if not isinstance(selector, dict):
            return selector
        ((key, value),) = selector.items()
        attribute = SELECTOR_KEYS[key.upper()]
        for bound in self.env.unwrapped.marks:
            if getattr(bound.node, attribute) == value:
                return bound.label
        return None

    def act(self, observation: dict[str, Any]) -> str:
        if self.position >= len(self.demo):
            return json.dumps({"SET_TASK_STATUS": "COMPLETE"})
        step = json.loads(json.dumps(self.demo[self.position]))  # a copy to fill in
        self.position += 1
        if "TAP" in step and isinstance(step["TAP"], dict) and "MARK" in step["TAP"]:
            step["TAP"]["MARK"] = self._mark(step["TAP"]["MARK"])
        if "index" in step:
            step["index"] = self._mark(step["index"])
        return json.dumps(step, ensure_ascii=False)
