"""The training-sample contract shared by every producer and consumer of shards.

One JSON record per sample inside WebDataset tar shards, images as ``KEY.NNN.jpg|png`` members of
the same key, in order::

    {"id": str, "source": str,
     "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}],
     "actions": optional list (floats for robot actions, ints for latent codes; robot actions as one
                row, or as rows of the future actions from this frame on, for action chunks),
     "action_mask": optional list of booleans, one per row of "actions" (False: padding past the
                    episode's end, repeating its last action),
     "state": optional list of floats (the robot's proprioceptive state at this frame),
     "meta": optional dict}

One ``<image>`` placeholder per image, in order. A sample with ``actions`` puts one ``<action>``
placeholder in a ``gpt`` turn: the trainer writes the action tokens (robot bins or latent codes)
there. Loss falls on the ``gpt`` turns only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from data_tools.errors import UserFacingError

IMAGE_PLACEHOLDER = "<image>"
ACTION_PLACEHOLDER = "<action>"
SPEAKERS = ("human", "gpt", "system")


class SampleFormatError(UserFacingError, ValueError):
    """A sample that does not follow the training-sample contract."""


def _is_finite_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _actions_are_numbers(actions: Any) -> bool:
    """A non-empty list of finite numbers, or of non-empty lists of them (NaN and infinity are refused)."""
    if not isinstance(actions, list) or not actions:
        return False
    rows = actions if isinstance(actions[0], list) else [actions]
    return all(isinstance(row, list) and row and all(_is_finite_number(value) for value in row) for row in rows)


def validate_sample(record: Mapping[str, Any], num_images: int) -> None:
    """Raise SampleFormatError naming the first problem of ``record`` (with ``num_images`` image members)."""
    if not isinstance(record, Mapping):
        raise SampleFormatError(f"a sample is a JSON object, not {type(record).__name__}")
    for key in ("id", "conversations"):
        if key not in record:
            raise SampleFormatError(f"the sample has no '{key}' field")
    conversations = record["conversations"]
    if not isinstance(conversations, list) or not conversations:
        raise SampleFormatError("'conversations' must be a non-empty list of {'from', 'value'} turns")
    placeholders = actions_slots = 0
    has_answer = False
    for index, turn in enumerate(conversations):
        if not isinstance(turn, Mapping) or turn.get("from") not in SPEAKERS or not isinstance(turn.get("value"), str):
            raise SampleFormatError(
                f"turn {index} must be {{'from': 'human'|'gpt'|'system', 'value': str}}, not {turn!r}"
            )
        placeholders += turn["value"].count(IMAGE_PLACEHOLDER)
        if turn["from"] == "gpt":
            has_answer = True
            actions_slots += turn["value"].count(ACTION_PLACEHOLDER)
    if not has_answer:
        raise SampleFormatError("the sample has no 'gpt' turn, so there is nothing to learn from it")
    if placeholders != num_images:
        raise SampleFormatError(
            f"the text has {placeholders} {IMAGE_PLACEHOLDER} placeholders but the sample has {num_images} images"
        )
    actions = record.get("actions")
    if actions is not None and not _actions_are_numbers(actions):
        raise SampleFormatError(
            "'actions' must be a non-empty list of finite numbers (or of lists of them), without NaN or infinity"
        )
    if (actions is None) != (actions_slots == 0) or actions_slots > 1:
        raise SampleFormatError(
            f"a sample with 'actions' needs exactly one {ACTION_PLACEHOLDER} in a gpt turn (and one without none); "
            f"found {actions_slots} with actions {'present' if actions is not None else 'absent'}"
        )
    mask = record.get("action_mask")
    if mask is not None:
        rows = len(actions) if actions and isinstance(actions[0], list) else 1
        if not isinstance(mask, list) or len(mask) != rows or not all(isinstance(value, bool) for value in mask):
            raise SampleFormatError(f"'action_mask' must be a list of {rows} booleans, one per row of 'actions'")
    state = record.get("state")
    if state is not None and (not isinstance(state, list) or not state or not all(map(_is_finite_number, state))):
        raise SampleFormatError("'state' must be a non-empty list of finite numbers (the proprioceptive state)")
    if "meta" in record and not isinstance(record["meta"], Mapping):
        raise SampleFormatError("'meta' must be a JSON object")
