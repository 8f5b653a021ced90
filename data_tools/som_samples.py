"""UI-grounding samples from Set-of-Mark elements, in the sample contract (``data_tools.sample_format``).

Tasks (SeeClick's grounding tasks plus Magma's Set-of-Mark answer), coordinates normalised to [0, 1]
with two decimals, points at the element's centre:

- ``text_to_point``: 'Where is the element "Sign in" on this screen? Answer with a point.'
  -> ``Coordinate: (0.17, 0.43).``
- ``text_to_box``: 'Locate "Sign in" in the screenshot and give its bounding box.'
  -> ``(0.12, 0.40, 0.22, 0.46)`` (left, top, right, bottom)
- ``point_to_text``: 'What text does the element at (0.17, 0.43) show?' -> ``Sign in``
- ``box_to_text``: 'What text is inside the box (0.12, 0.40, 0.22, 0.46)?' -> ``Sign in``
- ``widget_caption``: 'Describe the element at (0.17, 0.43) in a few words.' -> ``A button labelled "Sign in".``
- ``som_action`` (image with marks drawn): 'Numbered marks label the elements of this screen. I want to
  click the button "Sign in". Where should I click, and which mark is it on?'
  -> ``Coordinate: (0.17, 0.43). Mark: 3.`` (parsed by ``magma.actions.parse_ui_action(text, "som")``)

With ``SomConfig.marks_on_grounding_images`` the grounding tasks also get the marked image and the
point / box answers end with `` Mark: N.`` (Magma trained SeeClick's data that way).

An annotation (one JSON line per screenshot) is ``{"image": path, "source": "web"|"android"|"detector",
"elements": [{"box": [x0, y0, x1, y1], "kind": ..., "text": ...}]}``, or ``{"image": ..., "android_xml":
path or XML}``, or ``{"image": ..., "dom": [nodes]}``; relative paths start at the annotation's folder.
"""

from __future__ import annotations

import io
import os
import stat
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from data_tools.errors import UserFacingError
from data_tools.jsonl_lines import JsonLineError, read_json_line
from data_tools.sample_format import ACTION_PLACEHOLDER, IMAGE_PLACEHOLDER
from data_tools.som import (
    Box,
    ElementMark,
    MarkStyle,
    SomInputError,
    UIElement,
    draw_marks,
    elements_from_android_hierarchy,
    elements_from_dom,
    filter_elements,
    number_marks,
    sample_elements,
)

SOM_TASKS = ("text_to_point", "text_to_box", "point_to_text", "box_to_text", "widget_caption", "som_action")
DEFAULT_KIND_WEIGHTS = {"button": 2.0, "link": 2.0, "input": 2.0, "checkbox": 1.5, "select": 1.5, "icon": 1.5}
DEFAULT_KIND_WEIGHTS |= {"text": 1.0, "image": 0.5}
DEFAULT_TASK_WEIGHTS = {"som_action": 2.0, "text_to_point": 1.0, "text_to_box": 1.0, "point_to_text": 1.0}
DEFAULT_TASK_WEIGHTS |= {"box_to_text": 1.0, "widget_caption": 1.0}

# Our own paraphrases; one is drawn per sample so the model does not learn a single phrasing.
_QUESTIONS = {
    "text_to_point": (
        'Where is the element "{text}" on this screen? Answer with a point.',
        'Locate "{text}" in the screenshot and give its position as a point.',
        'I want to click "{text}". Which point should I click?',
    ),
    "text_to_box": (
        'Where is the element "{text}" on this screen? Answer with a box.',
        'Locate "{text}" in the screenshot and give its bounding box.',
        'Give the box (left, top, right, bottom) of the element "{text}".',
    ),
    "point_to_text": (
        "What text does the element at {point} show?",
        "Read the text of the element at point {point}.",
    ),
    "box_to_text": (
        "What text is inside the box {box}?",
        "Read the text of the element in the box {box}.",
    ),
    "widget_caption": (
        "Describe the element at {point} in a few words.",
        "What is the element at {point}?",
    ),
    "som_action": (
        "Numbered marks label the elements of this screen. I want to click {target}. "
        "Where should I click, and which mark is it on?",
        "The elements in this screenshot carry numbered marks. To click {target}, "
        "give the click coordinate and the mark number.",
    ),
}
_TEXT_TASKS = ("text_to_point", "text_to_box", "point_to_text", "box_to_text", "widget_caption")
_POINT_QUESTION_TASKS = ("point_to_text", "widget_caption")


class SomConfigError(UserFacingError, ValueError):
    """A Set-of-Mark sample configuration with an unknown task or an impossible value."""


@dataclass
class SomConfig:
    """How screenshots become grounding samples: which elements get marks, which tasks, how many samples.

    ``task_weights`` picks ``samples_per_image`` distinct tasks per screenshot; text tasks use elements whose
    text has ``min_text_chars``..``max_text_chars`` characters (SeeClick kept texts of at most 60).
    """

    max_marks: int = 30
    kind_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_KIND_WEIGHTS))
    task_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TASK_WEIGHTS))
    samples_per_image: int = 2
    min_text_chars: int = 2
    max_text_chars: int = 60
    max_area_fraction: float = 0.5
    min_side_px: float = 4.0
    iou_duplicate: float = 0.8
    detector_score_threshold: float = 0.3
    marks_on_grounding_images: bool = False
    seed: int = 0
    style: MarkStyle = field(default_factory=MarkStyle)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.task_weights) - set(SOM_TASKS))
        if unknown:
            raise SomConfigError(f"unknown Set-of-Mark tasks {unknown}; use some of {', '.join(SOM_TASKS)}")
        if not any(weight > 0 for weight in self.task_weights.values()):
            raise SomConfigError("every task weight is 0, so no sample would be made; give a task a positive weight")
        for name in ("max_marks", "samples_per_image", "min_text_chars"):
            if getattr(self, name) < 1:
                raise SomConfigError(f"{name} is {getattr(self, name)}; use 1 or more")


def format_point(point: tuple[float, float]) -> str:
    """``(0.17, 0.43)``: a normalised point with two decimals."""
    return f"({point[0]:.2f}, {point[1]:.2f})"


def format_box(box: Sequence[float]) -> str:
    """``(0.12, 0.40, 0.22, 0.46)``: a normalised box (left, top, right, bottom) with two decimals."""
    return "(" + ", ".join(f"{value:.2f}" for value in box) + ")"


def format_som_target(point: tuple[float, float], mark: int | None) -> str:
    """Magma's Set-of-Mark answer ``Coordinate: (0.17, 0.43). Mark: 3.`` (without the mark: ``Coordinate: (...).``)."""
    text = f"Coordinate: {format_point(point)}."
    return text if mark is None else f"{text} Mark: {mark}."


def normalised_box(box: Box, image_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """A pixel box as fractions of the image width and height, clipped to [0, 1]."""
    width, height = image_size
    x0, y0, x1, y1 = box
    return tuple(float(min(max(value, 0.0), 1.0)) for value in (x0 / width, y0 / height, x1 / width, y1 / height))


def normalised_center(box: Box, image_size: tuple[int, int]) -> tuple[float, float]:
    """The centre of a pixel box as fractions of the image width and height."""
    x0, y0, x1, y1 = normalised_box(box, image_size)
    return (x0 + x1) / 2, (y0 + y1) / 2


def som_marks(
    elements: Sequence[UIElement], image_size: tuple[int, int], config: SomConfig, rng: np.random.Generator
) -> list[ElementMark]:
    """Elements filtered, sampled by kind (at most ``config.max_marks``) and numbered by the reading-order rule."""
    kept = filter_elements(elements, image_size, config.max_area_fraction, config.min_side_px, config.iou_duplicate)
    return number_marks(sample_elements(kept, config.max_marks, config.kind_weights, rng))


def _usable_text(text: str, config: SomConfig) -> bool:
    return config.min_text_chars <= len(text) <= config.max_text_chars


def _describe(element: UIElement, config: SomConfig) -> str:
    """How a question names an element: its kind and, when usable, its text (``the button "Sign in"``)."""
    return f'the {element.kind} "{element.text}"' if _usable_text(element.text, config) else f"the {element.kind}"


def _caption(element: UIElement) -> str:
    if element.kind == "text":
        return f'Text reading "{element.text}".'
    article = "An" if element.kind[:1].lower() in "aeiou" else "A"
    return f'{article} {element.kind} labelled "{element.text}".'


def _smallest_mark_at(point: tuple[float, float], marks: Sequence[ElementMark]) -> ElementMark | None:
    inside = [mark for mark in marks if mark.element.box[0] <= point[0] < mark.element.box[2]]
    inside = [mark for mark in inside if mark.element.box[1] <= point[1] < mark.element.box[3]]
    return min(inside, key=lambda mark: mark.element.area, default=None)


def _eligible_targets(task: str, marks: Sequence[ElementMark], config: SomConfig) -> list[ElementMark]:
    """Marks a question of ``task`` can name without ambiguity."""
    if task == "som_action":
        descriptions = Counter(_describe(mark.element, config) for mark in marks)
        return [mark for mark in marks if descriptions[_describe(mark.element, config)] == 1]
    texts = Counter(mark.element.text for mark in marks)
    eligible = [mark for mark in marks if _usable_text(mark.element.text, config) and texts[mark.element.text] == 1]
    if task in _POINT_QUESTION_TASKS:  # the point must fall on the target, not on a smaller element inside it
        eligible = [mark for mark in eligible if _smallest_mark_at(mark.element.center, marks) is mark]
    return eligible


def _question_and_answer(
    task: str, target: ElementMark, image_size: tuple[int, int], config: SomConfig, rng: np.random.Generator
) -> tuple[str, str]:
    element = target.element
    point, box = normalised_center(element.box, image_size), normalised_box(element.box, image_size)
    template = _QUESTIONS[task][int(rng.integers(len(_QUESTIONS[task])))]
    question = template.format(
        text=element.text, point=format_point(point), box=format_box(box), target=_describe(element, config)
    )
    mark_suffix = f" Mark: {target.label}." if config.marks_on_grounding_images else ""
    answers = {
        "text_to_point": format_som_target(point, None) + mark_suffix,
        "text_to_box": format_box(box) + mark_suffix,
        "point_to_text": element.text,
        "box_to_text": element.text,
        "widget_caption": _caption(element),
        "som_action": format_som_target(point, target.label),
    }
    return question, answers[task]


def _as_plain_text(text: str) -> str:
    """Annotation text (an element's text or kind) as sample text: a ``<image>`` or ``<action>`` written in a
    screenshot's UI is not a placeholder of the sample format, so it is written ``[image]`` / ``[action]``."""
    for placeholder in (IMAGE_PLACEHOLDER, ACTION_PLACEHOLDER):
        text = text.replace(placeholder, f"[{placeholder[1:-1]}]")
    return text


class _Screen:
    """One screenshot with its marks; the marked image is drawn once, when a task first needs it."""

    def __init__(self, image: Image.Image | np.ndarray, style: MarkStyle) -> None:
        pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
        self.image = np.asarray(pil.convert("RGB"))
        self.size = (self.image.shape[1], self.image.shape[0])
        self.style = style
        self.marks: list[ElementMark] = []
        self._marked: np.ndarray | None = None

    def marked(self) -> np.ndarray:
        if self._marked is None:
            self._marked = draw_marks(self.image, self.marks, self.style)
        return self._marked


def _task_sample(
    screen: _Screen, task: str, config: SomConfig, rng: np.random.Generator, sample_id: str, source: str
) -> tuple[dict[str, Any], list[np.ndarray]] | None:
    """One sample of ``task`` about a target drawn by kind weight, or None when no mark suits the task."""
    targets = _eligible_targets(task, screen.marks, config)
    if not targets:
        return None
    weights = np.array([config.kind_weights.get(mark.element.kind, 1.0) for mark in targets], dtype=np.float64)
    weights = weights if weights.sum() > 0 else np.ones(len(targets))
    target = targets[int(rng.choice(len(targets), p=weights / weights.sum()))]
    question, answer = (_as_plain_text(text) for text in _question_and_answer(task, target, screen.size, config, rng))
    marked = task == "som_action" or config.marks_on_grounding_images
    record = {
        "id": f"{sample_id}-{task}",
        "source": source,
        "conversations": [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}],
        "meta": {
            "task": task,
            "image_size": list(screen.size),
            "num_marks": len(screen.marks),
            "marked_image": marked,
            "target": {
                "mark": target.label,
                "kind": target.element.kind,
                "text": target.element.text,
                "box": [round(value, 2) for value in target.element.box],
            },
        },
    }
    return record, [screen.marked() if marked else screen.image]


def som_grounding_samples(
    image: Image.Image | np.ndarray,
    elements: Sequence[UIElement],
    task: str,
    rng: np.random.Generator,
    config: SomConfig | None = None,
    sample_id: str = "som",
    source: str = "som",
) -> list[tuple[dict[str, Any], list[np.ndarray]]]:
    """Samples ``(record, [image])`` of one grounding ``task`` (see the module docstring) on a screenshot:
    one sample about one target mark, or none when no element suits the task (e.g. none has text)."""
    if task not in SOM_TASKS:
        raise SomConfigError(f"unknown Set-of-Mark task {task!r}; use one of {', '.join(SOM_TASKS)}")
    config = config or SomConfig()
    screen = _Screen(image, config.style)
    screen.marks = som_marks(elements, screen.size, config, rng)
    sample = _task_sample(screen, task, config, rng, sample_id, source)
    return [sample] if sample is not None else []


# ------------------------------------------------------------------------------------------------ annotations


MAX_SCREENSHOT_PIXELS = 50_000_000  # an 8K screen is 33 million; more is a broken or hostile file
MAX_SCREENSHOT_BYTES = 64 * 2**20  # an uncompressed 8K RGB PNG is about 100 MB; real screenshots are far smaller
MAX_ANDROID_XML_BYTES = 16 * 2**20  # a dump of a busy screen is well under 1 MB


def _resolve(path_text: Any, base_dir: Path, origin: str, what: str) -> Path:
    if not isinstance(path_text, str) or not path_text:
        raise SomInputError(f"{origin}: '{what}' must be a file path (a string), got {path_text!r}; fix the annotation")
    path = Path(path_text)
    return path if path.is_absolute() else base_dir / path


def read_annotated_file(
    path: Path, origin: str, key: str, max_bytes: int, missing_reason: str = "malformed_annotation"
) -> bytes:
    """The bytes of the file an annotation names under ``key``, refused unless it is a regular file (not a FIFO,
    a device or a directory) of at most ``max_bytes``; checked on the opened descriptor, so nothing blocks or
    swaps in between. Reasons: ``missing_reason`` (no such file), ``not_a_file``, ``file_too_large``."""
    what = f"the '{key}' file"
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO's open must not wait
    except FileNotFoundError:
        raise SomInputError(
            f"{origin}: {what} '{path}' not found; fix the '{key}' path (relative paths start at the annotation "
            "file's folder)",
            reason=missing_reason,
        ) from None
    except OSError as error:
        raise SomInputError(
            f"{origin}: cannot open {what} '{path}' ({error.strerror or error}); fix the path", reason="not_a_file"
        ) from None
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise SomInputError(
                f"{origin}: {what} '{path}' is not a regular file (a directory, pipe, device or special file); "
                "point the annotation at a file",
                reason="not_a_file",
            )
        if status.st_size > max_bytes:
            raise SomInputError(
                f"{origin}: {what} '{path}' has {status.st_size} bytes, more than {max_bytes // 2**20} MiB; "
                "shrink it or leave it out",
                reason="file_too_large",
            )
        with os.fdopen(os.dup(descriptor), "rb") as file:
            data = file.read(max_bytes + 1)  # bounded: the file may have grown since fstat
    finally:
        os.close(descriptor)
    if len(data) > max_bytes:
        raise SomInputError(
            f"{origin}: {what} '{path}' is more than {max_bytes // 2**20} MiB; shrink it or leave it out",
            reason="file_too_large",
        )
    return data


def _load_screenshot(path: Path, origin: str) -> Image.Image:
    data = read_annotated_file(path, origin, "image", MAX_SCREENSHOT_BYTES, missing_reason="unreadable_image")
    try:
        with Image.open(io.BytesIO(data)) as opened:
            if opened.width * opened.height > MAX_SCREENSHOT_PIXELS:  # checked from the header, before decoding
                raise SomInputError(
                    f"{origin}: screenshot '{path}' is {opened.width}x{opened.height}, more than "
                    f"{MAX_SCREENSHOT_PIXELS // 1_000_000} million pixels; scale it down or leave it out",
                    reason="image_too_large",
                )
            return opened.convert("RGB")
    except SomInputError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise SomInputError(
            f"{origin}: cannot read screenshot '{path}' ({error}); replace it with a readable PNG or JPEG file",
            reason="unreadable_image",
        ) from None


def _elements_from_list(raw: Any, source: str, config: SomConfig, origin: str) -> list[UIElement]:
    if not isinstance(raw, list):
        raise SomInputError(f"{origin}: 'elements' must be a list of {{'box', 'kind', 'text'}} objects; fix it")
    elements = []
    for index, item in enumerate(raw):
        if not isinstance(item, Mapping) or "box" not in item:
            raise SomInputError(f"{origin}: element {index} has no 'box'; give each element 'box': [x0, y0, x1, y1]")
        try:
            element = UIElement(tuple(item["box"]), str(item.get("kind", "other")), str(item.get("text") or ""), source)
            score = float(item.get("score", 1.0))
        except (TypeError, ValueError) as error:
            raise SomInputError(
                f"{origin}: element {index} is malformed ({error}); give 'box': [x0, y0, x1, y1] in pixels "
                "and, for detections, a numeric 'score'"
            ) from None
        if score >= config.detector_score_threshold:
            elements.append(element)
    return elements


def elements_from_annotation(
    annotation: Mapping[str, Any], base_dir: Path, config: SomConfig, origin: str
) -> list[UIElement]:
    """The elements of one annotation, from exactly one of ``elements``, ``android_xml`` or ``dom``."""
    given = [key for key in ("elements", "android_xml", "dom") if key in annotation]
    if len(given) != 1:
        raise SomInputError(
            f"{origin}: an annotation needs exactly one of 'elements', 'android_xml' or 'dom', found "
            f"{given or 'none'}; keep one"
        )
    if given == ["elements"]:
        return _elements_from_list(annotation["elements"], str(annotation.get("source", "")), config, origin)
    if given == ["dom"]:
        if not isinstance(annotation["dom"], list):
            raise SomInputError(f"{origin}: 'dom' must be a list of DOM nodes; fix the annotation")
        try:
            return elements_from_dom(annotation["dom"])
        except SomInputError as error:
            raise SomInputError(f"{origin}: {error}") from None
    xml = annotation["android_xml"]
    if not (isinstance(xml, str) and xml.lstrip().startswith("<")):
        path = _resolve(xml, base_dir, origin, "android_xml")
        data = read_annotated_file(path, origin, "android_xml", MAX_ANDROID_XML_BYTES)
        try:
            xml = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise SomInputError(f"{origin}: '{path}' is not UTF-8 ({error}); fix the 'android_xml' file") from None
    try:
        return elements_from_android_hierarchy(xml)
    except SomInputError as error:
        raise SomInputError(f"{origin}: {error}") from None


def som_samples_from_annotation(
    annotation: Mapping[str, Any],
    config: SomConfig | None = None,
    rng: np.random.Generator | None = None,
    base_dir: str | Path = ".",
    origin: str = "annotation",
) -> list[tuple[dict[str, Any], list[np.ndarray]]]:
    """Up to ``config.samples_per_image`` samples of distinct tasks (drawn by task weight) for one annotated
    screenshot; a bad annotation or unreadable image raises SomInputError naming ``origin`` and the fix."""
    config = config or SomConfig()
    rng = rng if rng is not None else np.random.default_rng(config.seed)
    if not isinstance(annotation, Mapping):
        raise SomInputError(f"{origin}: an annotation is a JSON object with 'image' and elements; fix the line")
    image_path = _resolve(annotation.get("image"), Path(base_dir), origin, "image")
    elements = elements_from_annotation(annotation, Path(base_dir), config, origin)
    screen = _Screen(_load_screenshot(image_path, origin), config.style)
    screen.marks = som_marks(elements, screen.size, config, rng)
    if not screen.marks:
        raise SomInputError(
            f"{origin}: none of the {len(elements)} elements is usable on the {screen.size[0]}x{screen.size[1]} "
            "screenshot (all out of view, tiny or too large); check that boxes are in pixels of this image, "
            "not normalised to [0, 1]",
            reason="no_usable_elements",
        )
    tasks = [task for task in SOM_TASKS if config.task_weights.get(task, 0) > 0]
    weights = np.array([config.task_weights[task] for task in tasks], dtype=np.float64)
    order = rng.choice(len(tasks), size=len(tasks), replace=False, p=weights / weights.sum())
    sample_id = f"som-{Path(image_path).stem}"
    source = f"som-{annotation.get('source', 'ui')}"
    samples = []
    for task_index in order:
        sample = _task_sample(screen, tasks[task_index], config, rng, sample_id, source)
        if sample is not None:
            samples.append(sample)
        if len(samples) == config.samples_per_image:
            break
    return samples


def read_annotation_line(identifier: str) -> tuple[dict[str, Any], Path]:
    """The annotation at ``file.jsonl:LINE`` (1-based, as corpus jobs name inputs) and the file's folder;
    read with the bounds of ``data_tools.jsonl_lines`` (line length, nesting depth)."""
    path_text, _, line_text = identifier.rpartition(":")
    if not path_text or not line_text.isdigit():
        raise SomInputError(f"'{identifier}' does not name an annotation line; write it as file.jsonl:LINE")
    path, number = Path(path_text), int(line_text)
    try:
        annotation = read_json_line(path, number)
    except OSError as error:
        raise SomInputError(f"cannot read annotation file '{path}' ({error}); check the path") from None
    except JsonLineError as error:
        raise SomInputError(str(error), reason=error.reason) from None
    return annotation, path.parent


def som_samples_from_annotation_line(
    identifier: str, config: SomConfig | None = None, rng: np.random.Generator | None = None
) -> list[tuple[dict[str, Any], list[np.ndarray]]]:
    """``som_samples_from_annotation`` for the line ``file.jsonl:LINE`` of an annotation file."""
    annotation, base_dir = read_annotation_line(identifier)
    return som_samples_from_annotation(annotation, config, rng, base_dir=base_dir, origin=identifier)
