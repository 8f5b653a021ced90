"""Android tasks: a JSON list of goals with the app to start, an initial-state recipe and checks on the final
UI state, kept apart from the environment.

```json
[{"task_id": "dark_mode", "goal": "Turn on dark mode in Sim App.", "group": "settings",
  "app": "com.example.simapp", "app_name": "Sim App",
  "setup": {"force_stop": true, "clear_data": true, "activity": ".MainActivity"},
  "checks": [{"type": "node_attribute", "match": {"resource-id": "com.example.simapp:id/dark_mode_switch"},
              "attribute": "checked", "value": "true"},
             {"type": "activity", "activity": ".SettingsActivity"},
             {"type": "text_present", "text": "Dark mode"}, {"type": "text_absent", "text": "Item 3"},
             {"type": "answer", "value": "12"}],
  "max_steps": 10, "demo": [{"TAP": {"TEXT": "Settings"}}, {"TAP": {"TEXT": "Dark mode"}},
                            {"SET_TASK_STATUS": "COMPLETE"}]}]
```

``demo`` is an optional scripted solution for ``--policy scripted``: AITW or AndroidWorld actions whose
``MARK`` / ``index`` may be a node selector (``{"TEXT": ...}``, ``{"RESOURCE_ID": ...}``) instead of a number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_tools.errors import UserFacingError
from envs.android.hierarchy import ViewNode
from envs.android.shell_arguments import InvalidDeviceArgumentError, checked_component, checked_package

CHECK_TYPES = ("text_present", "text_absent", "activity", "node_attribute", "answer")
BUNDLED_TASKS = Path(__file__).parent / "tasks" / "sim_app.json"


class TaskFileError(UserFacingError, ValueError):
    """A task file that cannot be read or has a malformed task."""


@dataclass
class SetupRecipe:
    """How to bring the app to its initial state before the episode."""

    force_stop: bool = True
    clear_data: bool = False
    activity: str | None = None  # launched with `am start -n app/activity`; None: the launcher activity


@dataclass
class AndroidTask:
    task_id: str
    goal: str
    app: str
    app_name: str = ""  # the app's label, for open_app actions that name it
    setup: SetupRecipe = field(default_factory=SetupRecipe)
    checks: list[dict[str, Any]] = field(default_factory=list)
    group: str = ""
    max_steps: int | None = None
    demo: list[dict[str, Any]] = field(default_factory=list)

    @property
    def component(self) -> str | None:
        return f"{self.app}/{self.setup.activity}" if self.setup.activity else None


def _task(raw: Any, origin: str) -> AndroidTask:
    if not isinstance(raw, dict):
        raise TaskFileError(f"{origin} is not a JSON object; give one object per task")
    missing = [name for name in ("task_id", "goal", "app") if not raw.get(name)]
    if missing:
        raise TaskFileError(f"{origin} has no {', '.join(missing)}; every task needs task_id, goal and app")
    if not isinstance(raw.get("setup") or {}, dict):
        raise TaskFileError(f"{origin}: 'setup' must be an object with force_stop, clear_data, activity")
    max_steps = raw.get("max_steps")
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
        raise TaskFileError(f"{origin}: max_steps must be a whole number of steps, 1 or more, got {max_steps!r}")
    unknown_setup = set(raw.get("setup") or {}) - {"force_stop", "clear_data", "activity"}
    if unknown_setup:
        raise TaskFileError(
            f"{origin}: unknown setup keys {sorted(unknown_setup)}; use force_stop, clear_data, activity"
        )
    setup = raw.get("setup") or {}
    try:
        checked_package(str(raw["app"]))
        if setup.get("activity"):
            checked_component(f"{raw['app']}/{setup['activity']}")
    except InvalidDeviceArgumentError as error:
        raise TaskFileError(f"{origin}: {error}") from None
    for index, check in enumerate(raw.get("checks") or []):
        if not isinstance(check, dict) or check.get("type") not in CHECK_TYPES:
            raise TaskFileError(f"{origin}: check {index} needs a type among {', '.join(CHECK_TYPES)}, got {check!r}")
    return AndroidTask(
        task_id=str(raw["task_id"]),
        goal=str(raw["goal"]),
        app=str(raw["app"]),
        app_name=str(raw.get("app_name") or ""),
        setup=SetupRecipe(**(raw.get("setup") or {})),
        checks=list(raw.get("checks") or []),
        group=str(raw.get("group") or raw["app"]),
        max_steps=raw.get("max_steps"),
        demo=list(raw.get("demo") or []),
    )


def load_tasks(path: str | Path) -> list[AndroidTask]:
    """The tasks of a JSON file (a list of task objects, or one object)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TaskFileError(f"task file {path} does not exist; give a JSON file of Android tasks") from None
    except (ValueError, RecursionError) as error:  # JSONDecodeError, bad UTF-8, nesting too deep
        raise TaskFileError(f"task file {path} is not valid JSON ({type(error).__name__}: {error}); fix it") from None
    items = raw if isinstance(raw, list) else [raw]
    tasks = [_task(item, f"{path} task {index}") for index, item in enumerate(items)]
    duplicates = {task.task_id for task in tasks if sum(other.task_id == task.task_id for other in tasks) > 1}
    if duplicates:
        raise TaskFileError(f"{path}: task ids {sorted(duplicates)} appear more than once; make them unique")
    return tasks


def _node_matches(node: ViewNode, match: dict[str, Any]) -> bool:
    return all(node.attribute(name) == str(value) for name, value in match.items())


def evaluate_checks(
    task: AndroidTask, nodes: list[ViewNode] | None, foreground: tuple[str, str], answer: str
) -> tuple[bool, list[str]]:
    """Whether the final state passes every check of ``task``, with a note per failed check.
    ``nodes`` None means the final hierarchy could not be read: every UI check fails."""
    notes: list[str] = []
    texts = [text.casefold() for node in nodes or [] for text in (node.text, node.content_desc) if text]
    for check in task.checks:
        kind = check["type"]
        if kind in ("text_present", "text_absent", "node_attribute") and nodes is None:
            notes.append(f"{kind}: no view hierarchy at the end (secure screen?)")
            continue
        if kind in ("text_present", "text_absent"):
            wanted = str(check.get("text", "")).casefold()
            present = any(wanted in text for text in texts)
            if present != (kind == "text_present"):
                notes.append(f"{kind}: {check.get('text')!r} is {'absent' if kind == 'text_present' else 'present'}")
        elif kind == "activity":
            wanted = str(check.get("activity", ""))
            package, _, activity = wanted.rpartition("/")
            package = package or task.app
            activity = package + activity if activity.startswith(".") else activity
            if foreground != (package, activity):
                notes.append(f"activity: {foreground[0]}/{foreground[1]} is in front, not {package}/{activity}")
        elif kind == "node_attribute":
            matches = [node for node in nodes or [] if _node_matches(node, check.get("match") or {})]
            attribute, value = str(check.get("attribute")), str(check.get("value"))
            if not matches:
                notes.append(f"node_attribute: no node matches {check.get('match')}")
            elif not any(node.attribute(attribute) == value for node in matches):
                found = matches[0].attribute(attribute)
                notes.append(f"node_attribute: {attribute} is {found!r}, not {value!r}")
        elif kind == "answer" and (not answer or str(check.get("value", "")).casefold() not in answer.casefold()):
            notes.append(f"answer: {answer!r} does not contain {check.get('value')!r}")
    return not notes, notes
