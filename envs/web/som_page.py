"""Set-of-Mark on a live page: one JavaScript pass finds elements, tags them with stable ids, returns boxes.

The pass keeps interactable elements (links, buttons, form fields, ARIA widgets, click handlers,
contenteditable) and text elements (those with their own non-empty text, not inside an interactable)
that are visible, intersect the viewport, are not covered at their centre, and cover at most 80% of the
viewport. Each gets an injected ``data-som-id`` attribute, only if it has none yet: ids, once given,
stay with their element across re-layouts and steps, so ``click [12]`` binds to the same element even
if the page moved. New elements take the next free number of the document, in reading order (top,
then left) of the pass that first sees them; a new document starts again at 1. The marks are drawn by
``data_tools.som`` with these ids as labels.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from data_tools.som import ElementMark, MarkStyle, UIElement, draw_marks

SOM_ATTRIBUTE = "data-som-id"
MAX_VIEWPORT_FRACTION = 0.8
MAX_TEXT_CHARS = 100

_SOM_SCRIPT = """
([attribute, maxFraction, maxChars]) => {
  const vw = window.innerWidth, vh = window.innerHeight;
  const interactive = 'a[href],button,input,select,textarea,summary,[onclick],[contenteditable=""],' +
    '[contenteditable="true"],[role=button],[role=link],[role=checkbox],[role=radio],[role=tab],' +
    '[role=menuitem],[role=option],[role=switch],[role=textbox],[role=combobox],[role=searchbox],[tabindex]';
  const isInteractive = (el) => el.matches(interactive) && !(el.tagName === 'INPUT' && el.type === 'hidden');
  const ownText = (el) => {
    let text = '';
    for (const node of el.childNodes) if (node.nodeType === 3) text += node.textContent;
    return text.trim();
  };
  const label = (el) => {
    const parts = [el.getAttribute('aria-label'), el.tagName === 'IMG' ? el.alt : null,
      (el.tagName === 'INPUT' || el.tagName === 'TEXTAREA') ? (el.value || el.placeholder) : null,
      el.tagName === 'SELECT' ? (el.selectedOptions[0] || {}).text : null,
      el.innerText, el.title];
    for (const part of parts) if (part && part.trim()) return part.replace(/\\s+/g, ' ').trim().slice(0, maxChars);
    return '';
  };
  const found = [];
  const seenInteractive = new Set();
  for (const el of document.body ? document.body.querySelectorAll('*') : []) {
    const inter = isInteractive(el);
    if (!inter) {
      if (el.tagName === 'IMG') { /* images count as text elements (their alt) */ }
      else if (!ownText(el)) continue;
      let parent = el.parentElement, nested = false;
      while (parent) { if (seenInteractive.has(parent)) { nested = true; break; } parent = parent.parentElement; }
      if (nested) continue;
    }
    const rect = el.getBoundingClientRect();
    if (rect.width < 1 || rect.height < 1) continue;
    const x0 = Math.max(0, rect.left), y0 = Math.max(0, rect.top);
    const x1 = Math.min(vw, rect.right), y1 = Math.min(vh, rect.bottom);
    if (x1 - x0 < 1 || y1 - y0 < 1) continue;
    if ((x1 - x0) * (y1 - y0) > maxFraction * vw * vh) continue;
    const style = getComputedStyle(el);
    if (style.visibility === 'hidden' || style.display === 'none' || parseFloat(style.opacity) === 0) continue;
    const top = document.elementFromPoint((x0 + x1) / 2, (y0 + y1) / 2);
    if (top && top !== el && !el.contains(top) && !top.contains(el)) continue;
    if (inter) seenInteractive.add(el);
    found.push({el, box: [x0, y0, x1, y1], interactive: inter});
  }
  const root = document.documentElement;
  let next = parseInt(root.getAttribute('data-som-next') || '1', 10);
  const fresh = found.filter((item) => !item.el.hasAttribute(attribute));
  fresh.sort((a, b) => (Math.round(a.box[1] / 4) - Math.round(b.box[1] / 4)) || (a.box[0] - b.box[0]));
  for (const item of fresh) item.el.setAttribute(attribute, String(next++));
  root.setAttribute('data-som-next', String(next));
  return found.map((item) => ({
    id: parseInt(item.el.getAttribute(attribute), 10),
    tag: (item.el.getAttribute('role') || item.el.tagName).toUpperCase(),
    text: label(item.el),
    box: item.box,
    interactive: item.interactive,
  }));
}
"""


@dataclass(frozen=True)
class PageElement:
    """One marked element: its injected id, tag (or ARIA role), text and viewport box in CSS pixels."""

    som_id: int
    tag: str
    text: str
    box: tuple[float, float, float, float]
    interactive: bool

    def listing_line(self) -> str:
        return f"[{self.som_id}] [{self.tag}] [{self.text}]"


def find_page_elements(page: Any) -> list[PageElement]:
    """Run the one Set-of-Mark pass on ``page`` (tagging new elements) and return them sorted by id."""
    raw = page.evaluate(_SOM_SCRIPT, [SOM_ATTRIBUTE, MAX_VIEWPORT_FRACTION, MAX_TEXT_CHARS])
    elements = [
        PageElement(int(item["id"]), item["tag"], item["text"], tuple(item["box"]), bool(item["interactive"]))
        for item in raw
    ]
    return sorted(elements, key=lambda element: element.som_id)


def som_listing(elements: list[PageElement]) -> str:
    """The text observation: one ``[id] [TAG] [text]`` line per element, by id."""
    return "\n".join(element.listing_line() for element in elements)


def screenshot_array(page: Any) -> np.ndarray:
    """The viewport as an HxWx3 uint8 array."""
    return np.asarray(Image.open(io.BytesIO(page.screenshot(type="png"))).convert("RGB"))


def draw_page_marks(screenshot: np.ndarray, elements: list[PageElement], style: MarkStyle | None = None) -> np.ndarray:
    """The screenshot with each element's box and id drawn by ``data_tools.som`` (boxes scaled to image pixels)."""
    height, width = screenshot.shape[:2]
    marks = []
    for element in elements:
        x0, y0, x1, y1 = element.box
        box = (min(x0, width), min(y0, height), min(x1, width), min(y1, height))
        kind = "button" if element.interactive else "text"
        marks.append(ElementMark(element.som_id, UIElement(box, kind, element.text, source="dom")))
    return draw_marks(screenshot, marks, style)
