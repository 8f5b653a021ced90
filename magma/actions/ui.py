"""UI actions <-> text, in the three grammars our UI agents speak.

- "vwa": VisualWebArena's id-based actions for web pages (`click [12]`, `type [12] [hi] [1]`, ...);
- "som": Magma's Set-of-Mark answers, pointing at a mark (`Coordinate: (0.17, 0.43). Mark: 3.`);
- "aitw": AITW-style JSON for Android (`{"TAP": {"MARK": 3}}`, `{"SWIPE": "UP"}`, ...).

Each grammar has `parse_*` (text -> UIAction, ActionParseError on malformed model output) and
`format_*` (UIAction -> canonical text); `format(parse(s)) == s` for canonical strings.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any

from magma.actions.errors import ActionParseError

# kind: (required fields, optional fields); every other field must stay None.
_KIND_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # web (VisualWebArena)
    "click": (("element_id",), ()),
    "type": (("text",), ("element_id", "press_enter")),
    "hover": (("element_id",), ()),
    "press": (("keys",), ()),
    "scroll": (("direction",), ()),
    "goto": (("url",), ()),
    "go_back": ((), ()),
    "go_forward": ((), ()),
    "new_tab": ((), ()),
    "tab_focus": (("tab_index",), ()),
    "close_tab": ((), ()),
    "stop": ((), ("answer",)),
    # Set-of-Mark answer: which mark (and/or where) to act on, without a verb
    "point": ((), ("element_id", "coordinate")),
    # mobile (AITW); "type" above is shared and then has no element_id
    "tap": (("element_id",), ()),
    "swipe": (("direction",), ()),
    "navigate_back": ((), ()),
    "navigate_home": ((), ()),
    "status": (("answer",), ()),
}
UI_ACTION_KINDS = frozenset(_KIND_FIELDS)
_DIRECTIONS = {"scroll": ("up", "down"), "swipe": ("up", "down", "left", "right")}
TASK_STATUSES = ("complete", "impossible")
_FIELD_TYPES = dict.fromkeys(("text", "keys", "direction", "url", "answer"), str)
_FIELD_TYPES |= {"element_id": int, "tab_index": int, "press_enter": bool}
GRAMMARS = ("vwa", "som", "aitw")
_VWA_NO_ARGUMENT = ("go_back", "go_forward", "new_tab", "close_tab")
_VWA_VERBS = ("click", "type", "hover", "press", "scroll", "goto", "tab_focus", "stop", *_VWA_NO_ARGUMENT)


@dataclass(frozen=True)
class UIAction:
    """One UI action; which fields a kind uses is fixed (see `_KIND_FIELDS`), the rest stay None.

    Web kinds (VisualWebArena): click/hover (element_id), type (text, element_id, press_enter),
    press (keys, e.g. "Control+v"), scroll (direction up/down), goto (url), go_back, go_forward,
    new_tab, tab_focus (tab_index), close_tab, stop (answer, may be empty).
    Set-of-Mark: point (element_id = the mark and/or coordinate = normalised (x, y) in [0, 1]).
    Mobile kinds (AITW): tap (element_id = the mark), swipe (direction up/down/left/right),
    type (text, no element_id), navigate_back, navigate_home, status (answer complete/impossible).
    """

    kind: str
    element_id: int | None = None
    text: str | None = None
    press_enter: bool | None = None
    keys: str | None = None
    direction: str | None = None
    url: str | None = None
    tab_index: int | None = None
    answer: str | None = None
    coordinate: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KIND_FIELDS:
            raise ValueError(f"unknown UI action kind {self.kind!r}; expected one of {sorted(UI_ACTION_KINDS)}")
        required, optional = _KIND_FIELDS[self.kind]
        for name in (*_FIELD_TYPES, "coordinate"):
            value = getattr(self, name)
            if name in required and value is None:
                raise ValueError(f"{self.kind} needs {name}")
            if value is not None and name not in required + optional:
                raise ValueError(f"{self.kind} does not take {name}")
        if self.kind == "point" and self.element_id is None and self.coordinate is None:
            raise ValueError("point needs a mark (element_id) or a coordinate")
        for name, expected in _FIELD_TYPES.items():
            value = getattr(self, name)
            if value is not None and (type(value) is not expected or (expected is int and value < 0)):
                raise ValueError(f"{name} must be a {'non-negative int' if expected is int else expected.__name__}")
        if self.kind in _DIRECTIONS and self.direction not in _DIRECTIONS[self.kind]:
            raise ValueError(f"{self.kind} direction must be one of {_DIRECTIONS[self.kind]}, got {self.direction!r}")
        if self.kind == "status" and self.answer not in TASK_STATUSES:
            raise ValueError(f"status must be one of {TASK_STATUSES}, got {self.answer!r}")
        if self.coordinate is not None:
            try:
                x, y = (float(value) for value in self.coordinate)
            except (TypeError, ValueError) as error:
                raise ValueError(f"coordinate must be two numbers (x, y), got {self.coordinate!r}") from error
            if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
                raise ValueError(f"coordinate must be normalised to [0, 1], got ({x}, {y})")
            object.__setattr__(self, "coordinate", (x, y))


def _build(source: str, kind: str, /, **fields: Any) -> UIAction:
    """A UIAction, with an invalid combination reported as an ActionParseError about `source`."""
    try:
        return UIAction(kind, **fields)
    except ValueError as error:
        raise ActionParseError(source, str(error)) from error


def _bracketed(text: str, verb: str, rest: str, what: str) -> str:
    """The content of `[...]` that must make up all of `rest`."""
    match = re.fullmatch(r"\[(.*)\]", rest, re.DOTALL)
    if match is None:
        raise ActionParseError(text, f"{verb} needs [{what}]")
    return match.group(1)


def _non_negative_int(text: str, verb: str, value: str, what: str) -> int:
    value = value.strip()
    if not value:
        raise ActionParseError(text, f"{verb} is missing its {what}")
    if not value.isascii() or not value.isdigit():
        raise ActionParseError(text, f"{verb} {what} must be a non-negative integer, got {value!r}")
    return int(value)


def parse_vwa_action(text: str) -> UIAction:
    """One VisualWebArena id-based action; a missing type flag means press Enter, as in VWA."""
    match = re.match(r"\s*([A-Za-z_]+)\s*(.*?)\s*$", text, re.DOTALL)
    if match is None:
        raise ActionParseError(text, "no action verb found" if text.strip() else "empty output")
    verb, rest = match.group(1).lower(), match.group(2)
    if verb not in _VWA_VERBS:
        raise ActionParseError(text, f"unknown verb {verb!r}; expected one of {', '.join(_VWA_VERBS)}")
    if verb in _VWA_NO_ARGUMENT:
        if rest:
            raise ActionParseError(text, f"{verb} takes no argument")
        return _build(text, verb)
    if verb in ("click", "hover"):
        return _build(text, verb, element_id=_non_negative_int(text, verb, _bracketed(text, verb, rest, "id"), "id"))
    if verb == "tab_focus":
        index = _non_negative_int(text, verb, _bracketed(text, verb, rest, "tab_index"), "tab index")
        return _build(text, verb, tab_index=index)
    if verb == "type":
        press_enter = True
        flag = re.search(r"\s*\[([01])\]$", rest)
        if flag is not None:
            press_enter, rest = flag.group(1) == "1", rest[: flag.start()]
        parts = re.fullmatch(r"\[([^\]]*)\]\s*\[(.*)\]", rest, re.DOTALL)
        if parts is None:
            raise ActionParseError(text, "type needs [id] [text] and an optional [0|1] press-enter flag")
        element_id = _non_negative_int(text, verb, parts.group(1), "id")
        return _build(text, verb, element_id=element_id, text=parts.group(2), press_enter=press_enter)
    if verb == "scroll":
        direction = re.fullmatch(r"\[?\s*([^\[\]]*?)\s*\]?", rest)
        value = direction.group(1).lower() if direction is not None else rest
        if value not in _DIRECTIONS["scroll"]:
            raise ActionParseError(text, f"scroll direction must be up or down, got {value!r}")
        return _build(text, verb, direction=value)
    if verb == "stop":
        return _build(text, verb, answer=_bracketed(text, verb, rest, "answer") if rest else "")
    argument = _bracketed(text, verb, rest, "url" if verb == "goto" else "key_comb").strip()
    if not argument:
        raise ActionParseError(text, f"{verb} has an empty argument")
    return _build(text, verb, **{"url" if verb == "goto" else "keys": argument})


def format_vwa_action(action: UIAction) -> str:
    """The canonical VisualWebArena text of a web action (type always carries its [0|1] flag)."""
    kind = action.kind
    if kind in ("click", "hover"):
        return f"{kind} [{action.element_id}]"
    if kind == "type" and action.element_id is not None:
        return f"type [{action.element_id}] [{action.text}] [{0 if action.press_enter is False else 1}]"
    if kind == "press":
        return f"press [{action.keys}]"
    if kind == "scroll":
        return f"scroll [{action.direction}]"
    if kind == "goto":
        return f"goto [{action.url}]"
    if kind == "tab_focus":
        return f"tab_focus [{action.tab_index}]"
    if kind == "stop":
        return f"stop [{action.answer or ''}]"
    if kind in _VWA_NO_ARGUMENT:
        return kind
    raise ValueError(f"{action} has no VisualWebArena form; convert it with som_to_vwa or aitw_to_vwa")


def extract_vwa_action(model_output: str) -> str:
    """The action inside the last ```...``` block of a model's reply, or the whole reply if it has none.

    VisualWebArena prompts end with "the next action I will perform is ```click [12]```".
    """
    blocks = re.findall(r"```(.*?)```", model_output, re.DOTALL)
    if not blocks:
        return model_output.strip()
    block = blocks[-1].strip()
    first_line, _, remainder = block.partition("\n")
    # Drop a language tag such as ```text\nclick [3]\n```.
    if remainder and re.fullmatch(r"[A-Za-z]+", first_line.strip()) and first_line.strip() not in _VWA_VERBS:
        block = remainder.strip()
    return block


_SOM_MARK = re.compile(r"\bmark\s*:\s*([^\s,;]*)", re.IGNORECASE)
_SOM_COORDINATE = re.compile(r"\bcoordinate\s*:\s*\(\s*([^,()]*?)\s*,\s*([^,()]*?)\s*\)", re.IGNORECASE)


def parse_som_answer(text: str) -> UIAction:
    """A Set-of-Mark answer `Coordinate: (x, y). Mark: m.`; either part may be alone."""
    mark_match, coordinate_match = _SOM_MARK.search(text), _SOM_COORDINATE.search(text)
    if coordinate_match is None and re.search(r"\bcoordinate\s*:", text, re.IGNORECASE):
        raise ActionParseError(text, "coordinate must be written as (x, y)")
    if mark_match is None and coordinate_match is None:
        raise ActionParseError(text, "no 'Mark:' or 'Coordinate:' found")
    mark = None
    if mark_match is not None:
        mark = _non_negative_int(text, "Mark", mark_match.group(1).rstrip("."), "number")
    coordinate = None
    if coordinate_match is not None:
        try:
            coordinate = (float(coordinate_match.group(1)), float(coordinate_match.group(2)))
        except ValueError as error:
            raise ActionParseError(text, "coordinate values must be numbers") from error
    return _build(text, "point", element_id=mark, coordinate=coordinate)


def format_som_answer(mark: int | None, coordinate: tuple[float, float] | None = None, decimals: int = 2) -> str:
    """Magma's SoM answer text; coordinates are written with `decimals` digits, as in Magma's data."""
    action = UIAction("point", element_id=mark, coordinate=coordinate)
    parts = []
    if action.coordinate is not None:
        x, y = action.coordinate
        parts.append(f"Coordinate: ({x:.{decimals}f}, {y:.{decimals}f}).")
    if action.element_id is not None:
        parts.append(f"Mark: {action.element_id}.")
    return " ".join(parts)


# AITW actions whose argument is one of a few words: {"SWIPE": "UP"} and the like.
_AITW_ENUM_ACTIONS = {
    "SWIPE": {direction.upper(): UIAction("swipe", direction=direction) for direction in _DIRECTIONS["swipe"]},
    "NAVIGATE": {"BACK": UIAction("navigate_back"), "HOME": UIAction("navigate_home")},
    "SET_TASK_STATUS": {status.upper(): UIAction("status", answer=status) for status in TASK_STATUSES},
}


def _load_json_object(text: str) -> Any:
    """The JSON value in `text`, tolerating prose around one {...} and Python-style single quotes."""
    start, end = text.find("{"), text.rfind("}")
    candidate = text[start : end + 1] if 0 <= start < end else text.strip()
    try:
        return json.loads(candidate)
    except json.JSONDecodeError:
        pass
    try:
        # literal_eval only builds literals (never runs code); it accepts {'TAP': {'MARK': 3}}.
        return ast.literal_eval(candidate)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as error:
        raise ActionParseError(text, "not a JSON object") from error


def parse_aitw_action(text: str) -> UIAction:
    """An AITW-style JSON action with exactly one key: TAP, SWIPE, NAVIGATE, TYPE or SET_TASK_STATUS."""
    payload = _load_json_object(text)
    if not isinstance(payload, dict) or len(payload) != 1:
        raise ActionParseError(text, "expected a JSON object with exactly one action key")
    ((key, value),) = payload.items()
    key = str(key).upper()
    if key == "TAP":
        mark = value.get("MARK") if isinstance(value, dict) else None
        if not isinstance(mark, int) or isinstance(mark, bool):
            raise ActionParseError(text, 'TAP needs {"MARK": <integer>}')
        return _build(text, "tap", element_id=mark)
    if key == "TYPE":
        if not isinstance(value, str):
            raise ActionParseError(text, "TYPE needs a string")
        return _build(text, "type", text=value)
    if key not in _AITW_ENUM_ACTIONS:
        raise ActionParseError(text, f"unknown action {key!r}; expected TAP, SWIPE, NAVIGATE, TYPE or SET_TASK_STATUS")
    action = _AITW_ENUM_ACTIONS[key].get(value.upper()) if isinstance(value, str) else None
    if action is None:
        raise ActionParseError(text, f"{key} must be one of {', '.join(_AITW_ENUM_ACTIONS[key])}, got {value!r}")
    return action


def format_aitw_action(action: UIAction) -> str:
    """The canonical AITW-style JSON of a mobile action."""
    if action.kind == "tap":
        return json.dumps({"TAP": {"MARK": action.element_id}})
    if action.kind == "type" and action.element_id is None:
        return json.dumps({"TYPE": action.text}, ensure_ascii=False)
    for key, values in _AITW_ENUM_ACTIONS.items():
        for value, enum_action in values.items():
            if enum_action == action:
                return json.dumps({key: value})
    raise ValueError(f"{action} has no AITW form")


def som_to_vwa(action: UIAction) -> UIAction:
    """A SoM answer as the VisualWebArena action it implies: `click [mark]`."""
    if action.kind != "point":
        raise ValueError(f"som_to_vwa takes a point (SoM answer), got {action.kind}")
    if action.element_id is None:
        raise ActionParseError(format_som_answer(None, action.coordinate), "SoM answer has no mark to click")
    return UIAction("click", element_id=action.element_id)


def aitw_to_vwa(action: UIAction) -> UIAction:
    """An AITW action as its VisualWebArena equivalent: tap -> click, navigate_back -> go_back,
    status -> stop (impossible answers "N/A", WebArena's convention for infeasible tasks)."""
    if action.kind == "tap":
        return UIAction("click", element_id=action.element_id)
    if action.kind == "navigate_back":
        return UIAction("go_back")
    if action.kind == "status":
        return UIAction("stop", answer="N/A" if action.answer == "impossible" else "")
    if action.kind in ("swipe", "navigate_home", "type"):
        raise ActionParseError(format_aitw_action(action), f"AITW {action.kind} has no VisualWebArena equivalent")
    raise ValueError(f"aitw_to_vwa takes an AITW action, got {action.kind}")


def parse_ui_action(text: str, grammar: str = "vwa") -> UIAction:
    """Model output -> UIAction in `grammar`; for "vwa" the action is first extracted from ``` fences."""
    if grammar == "vwa":
        try:
            return parse_vwa_action(extract_vwa_action(text))
        except ActionParseError as error:
            raise ActionParseError(text, error.reason) from error
    if grammar == "som":
        return parse_som_answer(text)
    if grammar == "aitw":
        return parse_aitw_action(text)
    raise ValueError(f"unknown UI action grammar {grammar!r}; expected one of {GRAMMARS}")


def format_ui_action(action: UIAction, grammar: str = "vwa") -> str:
    """UIAction -> canonical text in `grammar`."""
    if grammar == "vwa":
        return format_vwa_action(action)
    if grammar == "som":
        if action.kind != "point":
            raise ValueError(f"{action} has no SoM form; only point actions do")
        return format_som_answer(action.element_id, action.coordinate)
    if grammar == "aitw":
        return format_aitw_action(action)
    raise ValueError(f"unknown UI action grammar {grammar!r}; expected one of {GRAMMARS}")
