"""Android actions: Magma's AITW JSON and AndroidWorld's JSON actions, read into one ``DeviceAction``.

AITW (``magma.actions.ui``): ``{"TAP": {"MARK": 3}}``, ``{"SWIPE": "UP"}``, ``{"TYPE": "..."}``,
``{"NAVIGATE": "BACK"|"HOME"}``, ``{"SET_TASK_STATUS": "COMPLETE"|"IMPOSSIBLE"}``.
AndroidWorld (its ``json_action`` fields): ``{"action_type": "click"|"long_press", "index": 3}`` or with
``"x"``, ``"y"`` pixels; ``input_text`` (``text``, optional ``index``), ``keyboard_enter``, ``navigate_home``,
``navigate_back``, ``scroll`` (``direction`` up/down/left/right, optional ``index``), ``swipe`` (``direction``),
``open_app`` (``app_name``), ``wait``, ``status`` (``goal_status`` complete/infeasible), ``answer`` (``text``).
``index`` is the Set-of-Mark number of the current observation.

Directions: a swipe's direction is the finger's (AITW ``SWIPE UP`` moves the finger up, so the content
scrolls down); AndroidWorld's ``scroll`` names where the view moves, so ``scroll down`` is a swipe up.
"""

from __future__ import annotations

import ast
import json
import math
from dataclasses import dataclass
from typing import Any

from envs.android.text_input import MAX_TYPED_TEXT_CHARS
from magma.actions import ActionParseError, UIAction, extract_vwa_action, parse_aitw_action

DEVICE_ACTION_KINDS = (
    "tap",
    "long_press",
    "swipe",
    "type",
    "key",
    "open_app",
    "wait",
    "status",
    "answer",
)
KEYS = ("back", "home", "enter")
DIRECTIONS = ("up", "down", "left", "right")
_OPPOSITE = {"up": "down", "down": "up", "left": "right", "right": "left"}


@dataclass(frozen=True)
class DeviceAction:
    """One action on the device. ``mark`` (Set-of-Mark number) or ``point`` (pixels) says where."""

    kind: str
    mark: int | None = None
    point: tuple[int, int] | None = None
    direction: str | None = None
    text: str | None = None
    key: str | None = None
    app: str | None = None
    status: str | None = None

    @property
    def terminal(self) -> bool:
        return self.kind in ("status", "answer")

    def describe(self) -> str:
        """A short canonical text (``tap [3]``, ``type [hello]``, ``swipe [up]``) for histories and reports."""
        where = (
            f" [{self.mark}]"
            if self.mark is not None
            else (f" ({self.point[0]}, {self.point[1]})" if self.point else "")
        )
        if self.kind in ("tap", "long_press"):
            return f"{self.kind}{where}"
        if self.kind == "swipe":
            return f"swipe [{self.direction}]{where}"
        if self.kind == "type":
            return f"type [{self.text}]{where}"
        if self.kind == "key":
            return {"back": "navigate_back", "home": "navigate_home", "enter": "keyboard_enter"}[self.key or ""]
        if self.kind == "open_app":
            return f"open_app [{self.app}]"
        if self.kind == "status":
            return f"status [{self.status}]"
        if self.kind == "answer":
            return f"answer [{self.text}]"
        return self.kind


def _json_object(text: str) -> Any:
    start, end = text.find("{"), text.rfind("}")
    candidate = text[start : end + 1] if 0 <= start < end else text.strip()
    try:
        return json.loads(candidate)
    except RecursionError:
        raise ActionParseError(text, "the JSON is nested too deeply") from None
    except ValueError:  # not JSON, or an integer too long to read
        try:
            return ast.literal_eval(candidate)  # single-quoted dicts; literal_eval never runs code
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise ActionParseError(text, "not a JSON object") from None


def from_ui_action(action: UIAction) -> DeviceAction:
    """An AITW ``UIAction`` (magma.actions) as a device action."""
    if action.kind == "tap":
        return DeviceAction("tap", mark=action.element_id)
    if action.kind == "swipe":
        return DeviceAction("swipe", direction=action.direction)
    if action.kind == "type":
        return DeviceAction("type", text=action.text or "")
    if action.kind in ("navigate_back", "navigate_home"):
        return DeviceAction("key", key=action.kind.removeprefix("navigate_"))
    if action.kind == "status":
        return DeviceAction("status", status="complete" if action.answer == "complete" else "infeasible")
    raise ActionParseError(str(action), f"{action.kind} is not an Android action")


def _is_pixel_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and abs(value) < 2**31 if isinstance(value, float) else abs(value) < 2**31


def _index_or_point(text: str, payload: dict[str, Any], required: bool) -> dict[str, Any]:
    index, x, y = payload.get("index"), payload.get("x"), payload.get("y")
    if index is not None:
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ActionParseError(text, f"index must be a mark number, got {index!r}")
        return {"mark": index}
    if x is not None and y is not None:
        if not all(_is_pixel_number(value) for value in (x, y)):
            raise ActionParseError(text, f"x and y must be finite pixel numbers, got {x!r}, {y!r}")
        return {"point": (round(x), round(y))}
    if required:
        raise ActionParseError(text, f"{payload.get('action_type')} needs an index (a mark) or x and y")
    return {}


def _androidworld(text: str, payload: dict[str, Any]) -> DeviceAction:
    kind = str(payload.get("action_type", "")).lower()
    if kind in ("click", "long_press", "double_tap"):
        return DeviceAction("long_press" if kind == "long_press" else "tap", **_index_or_point(text, payload, True))
    if kind == "input_text":
        value = payload.get("text")
        if not isinstance(value, str):
            raise ActionParseError(text, "input_text needs a text string")
        return DeviceAction("type", text=value, **_index_or_point(text, payload, False))
    if kind in ("scroll", "swipe"):
        direction = str(payload.get("direction", "")).lower()
        if direction not in DIRECTIONS:
            raise ActionParseError(text, f"{kind} direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
        finger = _OPPOSITE[direction] if kind == "scroll" else direction
        return DeviceAction("swipe", direction=finger, **_index_or_point(text, payload, False))
    if kind in ("navigate_home", "navigate_back", "keyboard_enter"):
        return DeviceAction("key", key={"navigate_home": "home", "navigate_back": "back"}.get(kind, "enter"))
    if kind == "open_app":
        app = payload.get("app_name")
        if not isinstance(app, str) or not app.strip():
            raise ActionParseError(text, "open_app needs an app_name")
        return DeviceAction("open_app", app=app.strip())
    if kind == "wait":
        return DeviceAction("wait")
    if kind == "status":
        status = str(payload.get("goal_status", "")).lower()
        if status not in ("complete", "infeasible"):
            raise ActionParseError(text, f"status needs goal_status complete or infeasible, got {status!r}")
        return DeviceAction("status", status=status)
    if kind == "answer":
        value = payload.get("text")
        if not isinstance(value, str):
            raise ActionParseError(text, "answer needs a text string")
        return DeviceAction("answer", text=value)
    raise ActionParseError(text, f"unknown AndroidWorld action_type {kind!r}")


def parse_android_action(reply: str) -> DeviceAction:
    """The action in a policy's reply (its last ``` block if it has one): AndroidWorld JSON when the object has
    ``action_type``, else Magma's AITW JSON. Raises ActionParseError on anything else."""
    text = extract_vwa_action(str(reply))
    payload = _json_object(text)
    if isinstance(payload, dict) and "action_type" in payload:
        action = _androidworld(text, payload)
    else:
        action = from_ui_action(parse_aitw_action(json.dumps(payload) if isinstance(payload, dict) else text))
    if action.kind == "type" and len(action.text or "") > MAX_TYPED_TEXT_CHARS:
        raise ActionParseError(
            text, f"the text to type has {len(action.text or '')} characters, more than {MAX_TYPED_TEXT_CHARS}"
        )
    return action


def described_action(reply: str) -> str | None:
    """The reply's action as ``DeviceAction.describe()`` text, or None when it does not parse."""
    try:
        return parse_android_action(reply).describe()
    except ActionParseError:
        return None
