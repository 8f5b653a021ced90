"""Set-of-Mark (SoM): numbered marks on the elements of a screenshot.

Elements come from web DOM boxes, Android view hierarchies, detector boxes or segmentation masks;
they are cleaned (out of view, too large, near-duplicates), sampled by kind and numbered.

**Numbering rule** (the one rule, used by ``data_tools.som_samples`` and the web environment): marks are
numbered 1, 2, ..., N in reading order of their boxes' top-left corners. Boxes whose tops lie
within ``row_tolerance`` pixels of the first box of a row (default: half the median box height)
form one row; rows go top to bottom, and within a row marks go left to right.

**Label placement**: each number sits in a filled box at one of a few candidate spots of its
element (outside above the corners, inside the corners, below, beside); the spot chosen overlaps
earlier labels least, then other elements' boxes least (a point mark's label also avoids its own
point), then comes first in that list. When every such spot touches an earlier label, spots further
out (in label-size steps around the element) are tried too. Labels stay inside the image. The font
grows with the image (a fraction of its shorter side, within bounds); each mark has its own colour,
and the number is black or white, whichever contrasts with it.

UI-grounding samples built on these marks live in ``data_tools.som_samples``.
"""

from __future__ import annotations

import colorsys
import math
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from data_tools.errors import UserFacingError

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in pixels, x1 and y1 exclusive


class SomInputError(UserFacingError, ValueError):
    """An annotation or screenshot that cannot be turned into Set-of-Mark samples; ``reason`` keys the job summary."""

    def __init__(self, message: str, reason: str = "malformed_annotation") -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # keeps ``reason`` across worker processes
        return type(self), (str(self), self.reason)


@dataclass(frozen=True)
class UIElement:
    """One element of a screen: its pixel box, kind ("button", "link", "input", "text", "icon", ...), text, origin."""

    box: Box
    kind: str
    text: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        try:
            x0, y0, x1, y1 = (float(value) for value in self.box)
        except (TypeError, ValueError) as error:
            raise ValueError(f"a box is four numbers (x0, y0, x1, y1), got {self.box!r}") from error
        if not all(math.isfinite(value) for value in (x0, y0, x1, y1)) or x1 < x0 or y1 < y0:
            raise ValueError(f"a box needs finite x0 <= x1 and y0 <= y1, got {self.box!r}")
        object.__setattr__(self, "box", (x0, y0, x1, y1))

    @property
    def area(self) -> float:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


@dataclass(frozen=True)
class ElementMark:
    """A Set-of-Mark mark: a UI element with its number (``label``, 1-based) and where the number is drawn
    (``label_box``, None until placed). Not Trace-of-Mark's ``data_tools.tom.TrackedMark``, a point in a video."""

    label: int
    element: UIElement
    label_box: Box | None = None


# ---------------------------------------------------------------------------------------------- box sources


def _clean_text(value: Any) -> str:
    return " ".join(str(value).split()) if value is not None else ""


_DOM_ROLE_KINDS = {
    "link": "link",
    "button": "button",
    "menuitem": "button",
    "tab": "button",
    "checkbox": "checkbox",
    "radio": "checkbox",
    "switch": "checkbox",
    "textbox": "input",
    "searchbox": "input",
    "combobox": "select",
    "listbox": "select",
    "img": "image",
}
_DOM_TAG_KINDS = {"a": "link", "button": "button", "textarea": "input", "select": "select"}
_DOM_TAG_KINDS |= dict.fromkeys(("img", "svg", "picture", "canvas", "video"), "image")
_DOM_TEXT_KEYS = ("text", "innerText", "inner_text", "aria_label", "ariaLabel", "aria-label", "name", "alt")
_DOM_TEXT_KEYS += ("title", "placeholder", "value")


def _dom_box(node: Mapping[str, Any]) -> Box | None:
    """The (x0, y0, x1, y1) of a node from ``bbox`` [x, y, w, h] (BrowserGym), a Playwright-style
    ``bounding_box`` / ``boundingBox`` dict, or flat x/y/width/height keys; None if it has none."""
    raw = node.get("bbox", node.get("bounding_box", node.get("boundingBox")))
    if raw is None and all(key in node for key in ("x", "y", "width", "height")):
        raw = node
    if raw is None:
        return None
    x, y, width, height = (raw["x"], raw["y"], raw["width"], raw["height"]) if isinstance(raw, Mapping) else raw
    return float(x), float(y), float(x) + float(width), float(y) + float(height)


def _dom_kind(node: Mapping[str, Any], text: str) -> str | None:
    tag = str(node.get("tag", node.get("tagName", node.get("tag_name", "")))).lower()
    role = str(node.get("role") or "").lower()
    if role in _DOM_ROLE_KINDS:
        return _DOM_ROLE_KINDS[role]
    if tag == "input":
        input_type = str(node.get("type") or "text").lower()
        if input_type in ("submit", "button", "reset", "image"):
            return "button"
        return "checkbox" if input_type in ("checkbox", "radio") else "input"
    if tag in _DOM_TAG_KINDS:
        return _DOM_TAG_KINDS[tag]
    if node.get("clickable"):
        return "button"
    return "text" if text else None  # a generic container without text is no mark


def elements_from_dom(nodes: Sequence[Mapping[str, Any]]) -> list[UIElement]:
    """Elements from DOM nodes (Playwright / BrowserGym shape: a box, tag and/or role, text, visibility).

    Invisible nodes (``visible`` false or BrowserGym ``visibility`` < 0.5), empty boxes and text-less
    generic containers are skipped; a node whose box is not numbers raises SomInputError.
    """
    elements = []
    for index, node in enumerate(nodes):
        if not isinstance(node, Mapping):
            raise SomInputError(f"DOM node {index} is a {type(node).__name__}, not an object; give one dict per node")
        try:
            box = _dom_box(node)
            visibility = float(node.get("visibility", 1.0))
        except (KeyError, TypeError, ValueError) as error:
            raise SomInputError(
                f"DOM node {index} has a malformed box or visibility ({error!r}); give bbox [x, y, width, height] "
                "in pixels and visibility as a number"
            ) from None
        if box is None or node.get("visible", True) is False or visibility < 0.5:
            continue
        text = next((_clean_text(node[key]) for key in _DOM_TEXT_KEYS if _clean_text(node.get(key))), "")
        kind = _dom_kind(node, text)
        if kind is not None and box[2] > box[0] and box[3] > box[1]:
            elements.append(UIElement(box, kind, text, source="web"))
    return elements


_ANDROID_CLASS_KINDS = {
    "Button": "button",
    "MaterialButton": "button",
    "ImageButton": "icon",
    "FloatingActionButton": "icon",
    "EditText": "input",
    "AutoCompleteTextView": "input",
    "CheckBox": "checkbox",
    "Switch": "checkbox",
    "SwitchCompat": "checkbox",
    "RadioButton": "checkbox",
    "ToggleButton": "checkbox",
    "Spinner": "select",
}
_ANDROID_BOUNDS = re.compile(r"\[(-?\d+),(-?\d+)\]\[(-?\d+),(-?\d+)\]")


def _android_kind(class_name: str, clickable: bool, has_text: bool) -> str | None:
    short = class_name.rsplit(".", 1)[-1]
    if short in _ANDROID_CLASS_KINDS:
        return _ANDROID_CLASS_KINDS[short]
    if short == "ImageView":
        return "icon" if clickable else "image"
    if clickable:
        return "button"
    return "text" if has_text else None  # a layout container without text is no mark


def elements_from_android_hierarchy(xml: str) -> list[UIElement]:
    """Elements from a ``uiautomator dump`` (``bounds="[x0,y0][x1,y1]"``, class, text, content-desc, clickable).

    Kept: widgets of a known class, clickable nodes and nodes with text or content-desc; nodes marked
    ``visible-to-user="false"`` and empty boxes are skipped.
    """
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as error:
        raise SomInputError(f"the Android view hierarchy is not valid XML ({error}); give a uiautomator dump") from None
    elements = []
    for node in root.iter("node"):
        if node.get("visible-to-user") == "false":
            continue
        match = _ANDROID_BOUNDS.fullmatch((node.get("bounds") or "").replace(" ", ""))
        if match is None:
            continue
        x0, y0, x1, y1 = (float(value) for value in match.groups())
        text = _clean_text(node.get("text")) or _clean_text(node.get("content-desc"))
        kind = _android_kind(node.get("class") or "", node.get("clickable") == "true", bool(text))
        if kind is not None and x1 > x0 and y1 > y0:
            elements.append(UIElement((x0, y0, x1, y1), kind, text, source="android"))
    return elements


def elements_from_detections(
    boxes: np.ndarray | Sequence[Sequence[float]],
    scores: np.ndarray | Sequence[float],
    labels: Sequence[str],
    score_threshold: float = 0.3,
) -> list[UIElement]:
    """Elements from detector output: (N, 4) pixel boxes x0, y0, x1, y1, N scores and N class names
    (the kind); detections scoring below ``score_threshold`` are dropped."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"got {len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels; give one of each")
    return [
        UIElement(tuple(box), str(label), source="detector")
        for box, score, label in zip(boxes, scores, labels, strict=True)
        if score >= score_threshold and box[2] > box[0] and box[3] > box[1]
    ]


def elements_from_masks(masks: Sequence[np.ndarray], labels: Sequence[str] | None = None) -> list[UIElement]:
    """Elements from HxW boolean masks, each boxed by its pixels; ``labels`` (default "region") are the kinds.
    Empty masks are skipped."""
    if labels is not None and len(labels) != len(masks):
        raise ValueError(f"got {len(masks)} masks and {len(labels)} labels; give one label per mask or none")
    elements = []
    for index, mask in enumerate(masks):
        rows, columns = np.nonzero(np.asarray(mask, dtype=bool))
        if rows.size:
            box = (columns.min(), rows.min(), columns.max() + 1, rows.max() + 1)
            elements.append(UIElement(box, labels[index] if labels is not None else "region", source="mask"))
    return elements


# ------------------------------------------------------------------------------------- filtering and sampling


def _boxes_array(boxes: Sequence[Box]) -> np.ndarray:
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def _intersection_areas(box: Sequence[float], boxes: np.ndarray) -> np.ndarray:
    """The intersection area of ``box`` with each row of ``boxes`` (N, 4)."""
    width = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    height = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    return np.clip(width, 0, None) * np.clip(height, 0, None)


def _areas(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def filter_elements(
    elements: Sequence[UIElement],
    image_size: tuple[int, int],
    max_area_fraction: float = 0.5,
    min_side_px: float = 4.0,
    iou_duplicate: float = 0.8,
) -> list[UIElement]:
    """Elements worth a mark on an image of ``image_size`` (width, height), in their given order.

    Boxes are clipped to the image; dropped are those whose visible part is narrower or lower than
    ``min_side_px`` (out of view), those covering more than ``max_area_fraction`` of the image, and
    near-duplicates (IoU >= ``iou_duplicate``, e.g. a link and the span inside it): of those the one
    with text is kept, then the smaller one.
    """
    width, height = image_size
    in_view = []
    for element in elements:
        x0, y0, x1, y1 = np.clip(element.box, 0, [width, height, width, height]).tolist()
        visible = replace(element, box=(x0, y0, x1, y1))
        narrow_side = min(visible.box[2] - visible.box[0], visible.box[3] - visible.box[1])
        if narrow_side >= min_side_px and visible.area <= max_area_fraction * width * height:
            in_view.append(visible)
    if not in_view:
        return []
    boxes = _boxes_array([element.box for element in in_view])
    areas = _areas(boxes)
    preference = sorted(range(len(in_view)), key=lambda i: (not in_view[i].text, areas[i], i))
    kept: list[int] = []
    for index in preference:
        if kept:
            others = boxes[kept]
            overlap = _intersection_areas(boxes[index], others)
            iou = overlap / np.maximum(areas[index] + areas[kept] - overlap, 1e-9)
            if iou.max() >= iou_duplicate:
                continue
        kept.append(index)
    return [in_view[index] for index in sorted(kept)]


def sample_elements(
    elements: Sequence[UIElement],
    max_marks: int,
    kind_weights: Mapping[str, float] | None,
    rng: np.random.Generator,
) -> list[UIElement]:
    """At most ``max_marks`` elements drawn without replacement, each with probability proportional to its
    kind's weight (kinds not in ``kind_weights`` weigh 1, weight 0 never drawn); returned in input order."""
    weights = np.array([(kind_weights or {}).get(element.kind, 1.0) for element in elements], dtype=np.float64)
    candidates = np.flatnonzero(weights > 0)
    if len(candidates) <= max_marks:
        return [elements[index] for index in candidates]
    chosen = rng.choice(candidates, size=max_marks, replace=False, p=weights[candidates] / weights[candidates].sum())
    return [elements[index] for index in sorted(chosen)]


def number_marks(elements: Sequence[UIElement], row_tolerance: float | None = None) -> list[ElementMark]:
    """Marks numbered 1..N in reading order (see the module docstring for the rule)."""
    if not elements:
        return []
    if row_tolerance is None:
        row_tolerance = max(1.0, 0.5 * float(np.median([element.box[3] - element.box[1] for element in elements])))
    by_top = sorted(elements, key=lambda element: (element.box[1], element.box[0]))
    rows: list[list[UIElement]] = []
    for element in by_top:
        if rows and element.box[1] - rows[-1][0].box[1] <= row_tolerance:
            rows[-1].append(element)
        else:
            rows.append([element])
    ordered = [element for row in rows for element in sorted(row, key=lambda item: (item.box[0], item.box[1]))]
    return [ElementMark(label, element) for label, element in enumerate(ordered, start=1)]


# ------------------------------------------------------------------------------------------------- drawing


@dataclass(frozen=True)
class MarkStyle:
    """How marks look: the font is ``font_fraction`` of the image's shorter side within [min_font_px,
    max_font_px] unless ``font_px`` fixes it; line width and point radius follow the font unless given."""

    font_fraction: float = 0.035
    min_font_px: int = 10
    max_font_px: int = 48
    font_px: int | None = None
    line_width: int | None = None
    point_radius: int | None = None
    draw_boxes: bool = True

    def font_size(self, image_size: tuple[int, int]) -> int:
        if self.font_px is not None:
            return self.font_px
        scaled = round(self.font_fraction * min(image_size))
        return int(min(max(scaled, self.min_font_px), self.max_font_px))


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def mark_colour(label: int) -> tuple[int, int, int]:
    """A saturated colour per label; consecutive labels get far-apart hues (golden-ratio steps)."""
    red, green, blue = colorsys.hsv_to_rgb((label * 0.618033988749895) % 1.0, 0.85, 0.9)
    return round(red * 255), round(green * 255), round(blue * 255)


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luminance > 150 else (255, 255, 255)


@lru_cache(maxsize=4096)
def _text_extent(text: str, font_size: int) -> tuple[float, float, float, float]:
    """(left, right) of ``text``'s ink and (top, bottom) of the digits' ink in the font of ``font_size``:
    measured once per text and size (FreeType's bounding boxes cost more than drawing a label)."""
    font = _font(font_size)
    left, _, right, _ = font.getbbox(text)
    _, top, _, bottom = font.getbbox("0123456789")
    return left, right, top, bottom


@lru_cache(maxsize=4096)
def _label_size(text: str, font_size: int) -> tuple[int, int]:
    left, right, top, bottom = _text_extent(text, font_size)
    padding = max(1, font_size // 6)
    return int(right - left) + 2 * padding, int(bottom - top) + 2 * padding


def _candidate_spots(box: Box, width: int, height: int) -> np.ndarray:
    """Top-left corners (K, 2) for a ``width`` x ``height`` label, in order of preference."""
    x0, y0, x1, y1 = box
    return np.array(
        [
            (x0, y0 - height),  # outside, above the top-left corner
            (x1 - width, y0 - height),  # outside, above the top-right corner
            (x0, y0),  # inside the top-left corner
            (x1 - width, y0),  # inside the top-right corner
            (x0, y1),  # outside, below the bottom-left corner
            (x1 - width, y1),  # outside, below the bottom-right corner
            (x0, y1 - height),  # inside the bottom-left corner
            (x1 - width, y1 - height),  # inside the bottom-right corner
            (x1, y0),  # right of the box, at its top
            (x0 - width, y0),  # left of the box, at its top
        ],
        dtype=np.float64,
    )


# Spots further out, in label-size steps around the box, for crowded layouts (nearest first).
_FALLBACK_STEPS = np.array(
    sorted(((i, j) for i in range(-3, 4) for j in range(-3, 4)), key=lambda s: (abs(s[0]) + abs(s[1]), s[1], s[0])),
    dtype=np.float64,
)


def _fallback_spots(box: Box, width: int, height: int) -> np.ndarray:
    return np.array([box[0], box[1]]) + _FALLBACK_STEPS * np.array([width, height])


def _overlap_sums(candidates: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """For each candidate box (K, 4): the summed intersection area with ``boxes`` (N, 4)."""
    if not len(boxes):
        return np.zeros(len(candidates))
    width = np.minimum(candidates[:, None, 2], boxes[None, :, 2]) - np.maximum(
        candidates[:, None, 0], boxes[None, :, 0]
    )
    height = np.minimum(candidates[:, None, 3], boxes[None, :, 3]) - np.maximum(
        candidates[:, None, 1], boxes[None, :, 1]
    )
    return (np.maximum(width, 0) * np.maximum(height, 0)).sum(axis=1)  # np.clip's values, at less overhead


def _place_label(
    box: Box, size: tuple[int, int], other_boxes: np.ndarray, labels: np.ndarray, image_size: tuple[int, int]
) -> Box:
    """The label box of least overlap with earlier ``labels``, then with ``other_boxes``, inside the image:
    the preferred spots first; the fallback ring only when none of them is clear of every earlier label."""
    width, height = size
    image_width, image_height = image_size
    spots = _candidate_spots(box, width, height)
    for corners in (spots, np.concatenate([spots, _fallback_spots(box, width, height)])):
        x = np.minimum(np.maximum(corners[:, 0], 0.0), max(image_width - width, 0.0))  # inside the image
        y = np.minimum(np.maximum(corners[:, 1], 0.0), max(image_height - height, 0.0))
        candidates = np.stack([x, y, x + width, y + height], axis=1)
        label_overlap = _overlap_sums(candidates, labels)
        box_overlap = _overlap_sums(candidates, other_boxes)
        best = int(np.lexsort((np.arange(len(candidates)), box_overlap, label_overlap))[0])
        if label_overlap[best] == 0.0:
            break  # a spot clear of every earlier label: no need to look further out
    return tuple(float(value) for value in candidates[best])  # type: ignore[return-value]


def place_mark_labels(
    marks: Sequence[ElementMark],
    image_size: tuple[int, int],
    style: MarkStyle | None = None,
    cover_own_box: bool = True,
) -> list[ElementMark]:
    """``marks`` with their ``label_box`` set by the placement rule (module docstring), in label order.
    With ``cover_own_box`` False (point marks) a label also avoids its own element, so it never hides the point."""
    style = style or MarkStyle()
    font_size = style.font_size(image_size)
    boxes = _boxes_array([mark.element.box for mark in marks])
    placed = np.zeros((len(marks), 4))
    result = []
    for count, index in enumerate(sorted(range(len(marks)), key=lambda i: marks[i].label)):
        mark = marks[index]
        others = np.delete(boxes, index, axis=0) if cover_own_box else boxes
        size = _label_size(str(mark.label), font_size)
        label_box = _place_label(mark.element.box, size, others, placed[:count], image_size)
        placed[count] = label_box
        result.append(replace(mark, label_box=label_box))
    return result


def _as_rgb_image(image: Image.Image | np.ndarray) -> Image.Image:
    """A new RGB image (never the caller's own pixels, so it can be drawn on) from a PIL image or uint8 array."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")  # a copy even when already RGB
    array = np.asarray(image)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"an image array must be HxW, HxWx3 or HxWx4 uint8, got {array.shape} {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 3:
        return Image.fromarray(array)  # PIL unpacks RGB into its own 4-byte pixels: already a copy
    return Image.fromarray(array).convert("RGB")


def _draw_label(draw: ImageDraw.ImageDraw, mark: ElementMark, font_size: int) -> None:
    assert mark.label_box is not None
    x0, y0, x1, y1 = mark.label_box
    colour = mark_colour(mark.label)
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=colour)
    text = str(mark.label)
    left, right, top, bottom = _text_extent(text, font_size)
    text_x = x0 + (x1 - x0 - (right - left)) / 2 - left
    text_y = y0 + (y1 - y0 - (bottom - top)) / 2 - top
    draw.text((text_x, text_y), text, fill=_text_colour(colour), font=_font(font_size))


def draw_marks(
    image: Image.Image | np.ndarray, marks: Sequence[ElementMark], style: MarkStyle | None = None
) -> np.ndarray:
    """A copy of ``image`` (PIL or uint8 array) as an HxWx3 uint8 array with each mark's box outlined in its
    colour and its number in a filled label; labels not yet placed are placed by ``place_mark_labels``."""
    style = style or MarkStyle()
    canvas = _as_rgb_image(image)
    font_size = style.font_size(canvas.size)
    if any(mark.label_box is None for mark in marks):
        marks = place_mark_labels(marks, canvas.size, style)
    draw = ImageDraw.Draw(canvas)
    line_width = style.line_width or max(1, font_size // 8)
    if style.draw_boxes:
        for mark in marks:
            x0, y0, x1, y1 = mark.element.box
            draw.rectangle(
                (x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=mark_colour(mark.label), width=line_width
            )
    for mark in marks:
        _draw_label(draw, mark, font_size)
    return np.asarray(canvas)


def point_marks(
    points: Sequence[tuple[float, float]],
    image_size: tuple[int, int],
    labels: Sequence[int] | None = None,
    style: MarkStyle | None = None,
) -> list[ElementMark]:
    """Marks for pixel points (x, y): each a small square element of the point radius, labelled 1..N unless
    ``labels`` are given, with label boxes placed by the same rule as box marks."""
    style = style or MarkStyle()
    radius = style.point_radius or max(2, style.font_size(image_size) // 4)
    labels = list(labels) if labels is not None else list(range(1, len(points) + 1))
    if len(labels) != len(points):
        raise ValueError(f"got {len(points)} points and {len(labels)} labels; give one label per point")
    marks = [
        ElementMark(int(label), UIElement((x - radius, y - radius, x + radius, y + radius), "point"))
        for (x, y), label in zip(points, labels, strict=True)
    ]
    return place_mark_labels(marks, image_size, style, cover_own_box=False)


def draw_point_marks(
    image: Image.Image | np.ndarray,
    points: Sequence[tuple[float, float]],
    labels: Sequence[int] | None = None,
    style: MarkStyle | None = None,
) -> np.ndarray:
    """A copy of ``image`` with a dot at each pixel point (x, y) and its number in a label next to it
    (placed as for boxes; see ``point_marks``), as an HxWx3 uint8 array."""
    style = style or MarkStyle()
    canvas = _as_rgb_image(image)
    marks = point_marks(points, canvas.size, labels, style)
    draw = ImageDraw.Draw(canvas)
    for mark in marks:
        draw.ellipse(mark.element.box, fill=mark_colour(mark.label), outline=(255, 255, 255))
    font_size = style.font_size(canvas.size)
    for mark in marks:
        _draw_label(draw, mark, font_size)
    return np.asarray(canvas)
