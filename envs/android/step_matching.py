"""AITW-style offline evaluation of recorded episodes: does a predicted step match the recorded one?

The rule of AITW's ``action_matching``: actions without a point (type, back, home, enter, status) match
when their types match; a tap and a swipe never match; two taps match when both fall in the same element
box grown by ``box_scale`` of its height and width (AITW's 1.4: ``0.7 x`` the side added on each side,
clipped to the screen) or lie within ``tap_distance`` (0.14) of each other in normalised (y, x); two swipes
match when their main axes agree (AITW compares the axis, not the sign). ``compare_typed_text`` adds a
text check that AITW's matcher leaves out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from envs.android.actions import DeviceAction
from envs.android.hierarchy import BoundMark

TAP_DISTANCE = 0.14
BOX_SCALE = 1.4
SWIPE_DISTANCE = 0.04  # a gesture shorter than this (normalised) is a tap


@dataclass(frozen=True)
class RecordedStep:
    """One step in AITW's terms: a type and, for gestures, touch and lift points as normalised (y, x)."""

    action_type: str  # "dual_point", "type", "back", "home", "enter", "complete", "impossible", ...
    touch_yx: tuple[float, float] = (-1.0, -1.0)
    lift_yx: tuple[float, float] = (-1.0, -1.0)
    text: str = ""

    @property
    def is_tap(self) -> bool:
        return (
            self.action_type == "dual_point"
            and float(np.linalg.norm(np.subtract(self.touch_yx, self.lift_yx))) <= SWIPE_DISTANCE
        )


def _grown(boxes: np.ndarray, scale: float) -> np.ndarray:
    """(N, 4) normalised (y, x, height, width) boxes grown as AITW does, clipped to the screen."""
    grow_y, grow_x = scale * boxes[:, 2], scale * boxes[:, 3]
    return np.stack(
        [
            np.maximum(0, boxes[:, 0] - grow_y / 2),
            np.maximum(0, boxes[:, 1] - grow_x / 2),
            np.minimum(1, boxes[:, 2] + grow_y),
            np.minimum(1, boxes[:, 3] + grow_x),
        ],
        axis=1,
    )


def _inside(yx: tuple[float, float], boxes: np.ndarray) -> np.ndarray:
    y, x = yx
    return (boxes[:, 0] <= y) & (y <= boxes[:, 0] + boxes[:, 2]) & (boxes[:, 1] <= x) & (x <= boxes[:, 1] + boxes[:, 3])


def taps_match(
    first_yx: tuple[float, float],
    second_yx: tuple[float, float],
    element_boxes: Sequence[Sequence[float]],
    tap_distance: float = TAP_DISTANCE,
    box_scale: float = BOX_SCALE,
) -> bool:
    """AITW's tap rule over element boxes given as normalised (y, x, height, width)."""
    boxes = np.asarray(element_boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes):
        grown = _grown(boxes, box_scale)
        if bool(np.any(_inside(first_yx, grown) & _inside(second_yx, grown))):
            return True
    return float(np.linalg.norm(np.subtract(first_yx, second_yx))) <= tap_distance


def steps_match(
    predicted: RecordedStep,
    reference: RecordedStep,
    element_boxes: Sequence[Sequence[float]] = (),
    compare_typed_text: bool = False,
) -> bool:
    """Whether ``predicted`` would lead to the same screen as ``reference`` (AITW's definition)."""
    if predicted.action_type != "dual_point" or reference.action_type != "dual_point":
        same = predicted.action_type == reference.action_type
        if same and compare_typed_text and predicted.action_type == "type":
            return predicted.text.strip().casefold() == reference.text.strip().casefold()
        return same
    if predicted.is_tap != reference.is_tap:
        return False
    if predicted.is_tap:
        return taps_match(predicted.touch_yx, reference.touch_yx, element_boxes)
    predicted_axis = int(np.argmax(np.abs(np.subtract(predicted.lift_yx, predicted.touch_yx))))
    reference_axis = int(np.argmax(np.abs(np.subtract(reference.lift_yx, reference.touch_yx))))
    return predicted_axis == reference_axis


def pixel_box_to_yxhw(box: Sequence[float], screen_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """A pixel box (x0, y0, x1, y1) as AITW's normalised (y, x, height, width)."""
    width, height = screen_size
    x0, y0, x1, y1 = box
    return y0 / height, x0 / width, (y1 - y0) / height, (x1 - x0) / width


def episode_step_accuracy(
    predicted: Sequence[RecordedStep],
    reference: Sequence[RecordedStep],
    element_boxes: Sequence[Sequence[Sequence[float]]],
    compare_typed_text: bool = False,
) -> tuple[float, list[bool]]:
    """Per-step matches of a predicted episode against a recorded one (AITW's partial-match score: the
    fraction of reference steps matched) and the list of matches."""
    if len(predicted) != len(reference) or len(reference) != len(element_boxes):
        raise ValueError(
            f"got {len(predicted)} predicted steps, {len(reference)} recorded steps and {len(element_boxes)} box "
            "lists; give one of each per recorded step"
        )
    matches = [
        steps_match(step, gold, boxes, compare_typed_text)
        for step, gold, boxes in zip(predicted, reference, element_boxes, strict=True)
    ]
    return (sum(matches) / len(matches) if matches else 0.0), matches


def step_from_action(action: DeviceAction, marks: Sequence[BoundMark], screen_size: tuple[int, int]) -> RecordedStep:
    """A device action on a screen (its marks, its (width, height)) in AITW's terms, for ``steps_match``."""
    width, height = screen_size
    kinds = {"key": action.key or "", "status": "complete" if action.status == "complete" else "impossible"}
    if action.kind in ("tap", "long_press", "swipe"):
        if action.mark is not None:
            bound = next((bound for bound in marks if bound.label == action.mark), None)
            if bound is None:
                return RecordedStep("invalid")
            x, y = bound.node.center
        elif action.point is not None:
            x, y = action.point
        else:
            x, y = width / 2, height / 2
        touch = (y / height, x / width)
        if action.kind != "swipe":
            return RecordedStep("dual_point", touch, touch)
        offsets = {"up": (-0.4, 0.0), "down": (0.4, 0.0), "left": (0.0, -0.4), "right": (0.0, 0.4)}
        dy, dx = offsets[action.direction or "up"]
        return RecordedStep("dual_point", touch, (touch[0] + dy, touch[1] + dx))
    if action.kind == "type":
        return RecordedStep("type", text=action.text or "")
    return RecordedStep(kinds.get(action.kind, action.kind))
