"""The view hierarchy of a ``uiautomator dump``: its nodes, the actionable ones as Set-of-Mark elements
(numbered by ``data_tools.som.number_marks``, the one rule the web environment uses too) and the listing.

A clickable container without text of its own (a list row around a TextView) takes its descendants' text,
so its mark reads like the row. A node is actionable when it is enabled and clickable, long-clickable,
checkable, scrollable or editable. Marks stay bound to their nodes: acting on mark k acts on node k's
bounds centre.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass

from data_tools.som import ElementMark, UIElement, filter_elements, number_marks

_BOUNDS = re.compile(r"\[(-?\d+),(-?\d+)\]\[(-?\d+),(-?\d+)\]")
_EDITABLE_CLASSES = ("EditText", "AutoCompleteTextView", "MultiAutoCompleteTextView", "SearchView$SearchAutoComplete")


class HierarchyError(ValueError):
    """A dump that is not a uiautomator hierarchy (a secure screen, an error message, cut-off XML)."""


@dataclass(frozen=True)
class ViewNode:
    """One node of the dump, with the attributes agents and task checks use."""

    index: int  # position in document order
    cls: str
    resource_id: str
    text: str
    content_desc: str
    package: str
    bounds: tuple[int, int, int, int]
    clickable: bool
    long_clickable: bool
    checkable: bool
    checked: bool
    scrollable: bool
    focusable: bool
    focused: bool
    enabled: bool
    selected: bool
    password: bool
    editable: bool
    label: str  # text, else content-desc, else the descendants' text (for a clickable container)

    @property
    def short_class(self) -> str:
        return self.cls.rsplit(".", 1)[-1]

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bounds
        return (x0 + x1) / 2, (y0 + y1) / 2

    @property
    def actionable(self) -> bool:
        interactive = self.clickable or self.long_clickable or self.checkable or self.scrollable or self.editable
        return self.enabled and interactive

    def attribute(self, name: str) -> str:
        """An attribute by its uiautomator name (``resource-id``, ``checked``, ``text``...) as text."""
        key = name.replace("-", "_")
        key = {"class": "cls", "content_desc": "content_desc"}.get(key, key)
        value = getattr(self, key)
        return str(value).lower() if isinstance(value, bool) else str(value)


def _clean(value: str | None) -> str:
    return " ".join((value or "").split())


def parse_hierarchy(xml: str) -> tuple[list[ViewNode], int]:
    """The nodes of a uiautomator dump in document order, and the screen rotation it records (0..3).

    Text around the XML (``uiautomator dump /dev/tty`` appends "UI hierchary dumped to: ...") is ignored; a
    dump without a ``<hierarchy>`` raises HierarchyError carrying the device's message.
    """
    start, end = xml.find("<?xml"), xml.rfind("</hierarchy>")
    if start < 0:
        start = xml.find("<hierarchy")
    if start < 0 or end < 0:
        message = " ".join(xml.split())[:200] or "empty output"
        raise HierarchyError(f"no view hierarchy in the dump ({message})")
    try:
        root = ElementTree.fromstring(xml[start : end + len("</hierarchy>")])
    except ElementTree.ParseError as error:
        raise HierarchyError(f"the view hierarchy is not valid XML ({error})") from None
    rotation = int(root.get("rotation") or 0)
    nodes: list[ViewNode] = []

    def visit(element: ElementTree.Element) -> str:
        """Add ``element``'s node and its subtree; returns the subtree's text."""
        position = len(nodes)
        nodes.append(None)  # type: ignore[arg-type]  # filled after the children, which give the label
        child_texts = [visit(child) for child in element if child.tag == "node"]
        own = _clean(element.get("text")) or _clean(element.get("content-desc"))
        descendants = " ".join(text for text in child_texts if text)
        flag = {name: element.get(name) == "true" for name in ("clickable", "long-clickable", "checkable")}
        cls = element.get("class") or ""
        match = _BOUNDS.fullmatch((element.get("bounds") or "").replace(" ", ""))
        bounds = tuple(int(value) for value in match.groups()) if match else (0, 0, 0, 0)
        nodes[position] = ViewNode(
            index=position,
            cls=cls,
            resource_id=element.get("resource-id") or "",
            text=element.get("text") or "",
            content_desc=element.get("content-desc") or "",
            package=element.get("package") or "",
            bounds=bounds,  # type: ignore[arg-type]
            clickable=flag["clickable"],
            long_clickable=flag["long-clickable"],
            checkable=flag["checkable"],
            checked=element.get("checked") == "true",
            scrollable=element.get("scrollable") == "true",
            focusable=element.get("focusable") == "true",
            focused=element.get("focused") == "true",
            enabled=element.get("enabled", "true") == "true",
            selected=element.get("selected") == "true",
            password=element.get("password") == "true",
            editable=element.get("editable") == "true" or cls.rsplit(".", 1)[-1] in _EDITABLE_CLASSES,
            label=own or (descendants if flag["clickable"] or flag["long-clickable"] else ""),
        )
        return own or descendants

    for child in root:
        if child.tag == "node":
            visit(child)
    return nodes, rotation


def node_kind(node: ViewNode) -> str:
    """The Set-of-Mark element kind of a node (data_tools.som's vocabulary)."""
    if node.editable:
        return "input"
    if node.checkable:
        return "checkbox"
    if node.short_class in ("ImageView", "ImageButton", "FloatingActionButton"):
        return "icon"
    if node.clickable or node.long_clickable:
        return "button"
    return "list" if node.scrollable else "text"


@dataclass(frozen=True)
class BoundMark:
    """A Set-of-Mark mark and the node it stands for."""

    mark: ElementMark
    node: ViewNode

    @property
    def label(self) -> int:
        return self.mark.label


def actionable_marks(
    nodes: list[ViewNode], screen_size: tuple[int, int], max_area_fraction: float = 0.9
) -> list[BoundMark]:
    """Marks 1..N over the actionable nodes visible on a ``screen_size`` (width, height) screen.

    Nodes go through ``data_tools.som.filter_elements`` (off screen, tiny, near-duplicates) and are numbered
    in reading order by ``number_marks``. ``max_area_fraction`` is high so that a scrollable list keeps its mark.
    """
    elements = [
        UIElement(node.bounds, node_kind(node), node.label, source=f"android:{node.index}")
        for node in nodes
        if node.actionable and node.bounds[2] > node.bounds[0] and node.bounds[3] > node.bounds[1]
    ]
    kept = filter_elements(elements, screen_size, max_area_fraction=max_area_fraction)
    by_index = {node.index: node for node in nodes}
    return [BoundMark(mark, by_index[int(mark.element.source.split(":")[1])]) for mark in number_marks(kept)]


def _state(node: ViewNode) -> str:
    states = []
    if node.checkable:
        states.append("checked" if node.checked else "unchecked")
    if node.editable and node.focused:
        states.append("focused")
    if node.scrollable:
        states.append("scrollable")
    return f" [{', '.join(states)}]" if states else ""


def som_listing(marks: list[BoundMark]) -> str:
    """One line per mark, ``[id] [class] [text]``, plus ``[checked]`` / ``[focused]`` / ``[scrollable]`` states."""
    return "\n".join(
        f"[{bound.label}] [{bound.node.short_class}] [{bound.node.label}]{_state(bound.node)}" for bound in marks
    )
