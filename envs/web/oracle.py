"""The oracle of a bundled task: its recorded trajectory (CSS selectors, not ids) replayed through
the environment's own action grammar. Selectors become Set-of-Mark ids at run time, read from the
ids the environment injected (``data-som-id``); an element not yet marked (off screen) is scrolled to."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from envs.web.tasks import SITE_PLACEHOLDERS

SOM_ATTRIBUTE = "data-som-id"
MAX_SCROLLS_PER_STEP = 6


def oracle_steps(task_file: str | Path) -> dict[str, list[dict[str, Any]]]:
    """``{"<file stem>:<task_id>": steps}`` for every task of a bundled task file that has an oracle."""
    path = Path(task_file)
    configs = json.loads(path.read_text(encoding="utf-8"))
    return {f"{path.stem}:{config['task_id']}": config["oracle"] for config in configs if config.get("oracle")}


class WebOracle:
    """Replays one task's oracle steps (privileged: reads the page to map selectors to ids)."""

    def __init__(self, env: Any, steps: list[dict[str, Any]], site_urls: dict[str, str]) -> None:
        self.env = env
        self.steps = steps
        self.site_urls = site_urls
        self.position = 0
        self.scrolls = 0
        self.pending: list[str] = []

    def reset(self, task: dict[str, Any]) -> None:
        self.position, self.scrolls, self.pending = 0, 0, []

    def _url(self, url: str) -> str:
        for placeholder in SITE_PLACEHOLDERS:
            if placeholder in url and placeholder in self.site_urls:
                url = url.replace(placeholder, self.site_urls[placeholder])
        return url

    def _element_id(self, selector: str) -> str | None:
        locator = self.env.unwrapped.session.active.locator(selector).first
        return locator.get_attribute(SOM_ATTRIBUTE, timeout=2000) if locator.count() else None

    def act(self, observation: dict[str, Any]) -> str:
        if self.pending:
            return self.pending.pop(0)
        if self.position >= len(self.steps):
            return "stop []"
        step = self.steps[self.position]
        kind = step["action"]
        if kind in ("click", "hover", "type", "press"):
            element = self._element_id(step["selector"])
            if element is None and self.scrolls < MAX_SCROLLS_PER_STEP:
                self.scrolls += 1
                return "scroll [down]"
            self.position, self.scrolls = self.position + 1, 0
            if kind == "type":
                return f"type [{element}] [{step.get('text', '')}] [{1 if step.get('press_enter') else 0}]"
            if kind == "press":  # VWA's press has no element: focus it with a click first
                self.pending.append(f"press [{step.get('text', 'Enter')}]")
                return f"click [{element}]"
            return f"{kind} [{element}]"
        self.position += 1
        if kind == "goto":
            return f"goto [{self._url(step['url'])}]"
        if kind == "scroll":
            return f"scroll [{step.get('text', 'down')}]"
        if kind == "go_back":
            return "go_back"
        return f"stop [{step.get('answer', '')}]"
