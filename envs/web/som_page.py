"""Set-of-Mark on a live page: one JavaScript pass finds elements, tags them with stable ids, returns boxes.

The pass keeps interactable elements (links, buttons, form fields, ARIA widgets, click handlers,
contenteditable) and text elements (those with their own non-empty text, not inside an interactable)
that are visible, intersect the viewport, are not covered at their centre, and cover at most 80% of the
viewport. Each gets an injected ``data-som-id`` attribute, only if it has none yet: ids, once given,
stay with their element across re-layouts and steps, so ``click [12]`` binds to the same element even
if the page moved. New elements take the next free number of the document, in reading order (top,
then left) of the pass that first sees them; a new document starts again at 1. The marks are drawn by
``data_tools.som`` with these ids as labels.

The same pass says whether the page can show a text caret (a text field or editable element has focus, or
one inside a frame it cannot see into) or still loads fonts. If not, the screenshot is taken straight through DevTools
(``Page.captureScreenshot``, lossless PNG encoded for speed), the pixels Playwright's ``page.screenshot``
gives; else through Playwright, which hides the caret and waits for fonts first.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from data_tools.som import ElementMark, MarkStyle, UIElement, draw_marks, place_mark_labels

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
  const noCaretInputs = new Set(['checkbox', 'radio', 'button', 'submit', 'reset', 'range', 'color', 'file',
    'image', 'hidden']);
  const mayShowCaret = () => {
    let doc = document, el = document.activeElement;
    for (let depth = 0; depth < 64; depth++) {
      if (doc.designMode === 'on') return true;
      if (!el) return false;
      if (el.shadowRoot && el.shadowRoot.activeElement) { el = el.shadowRoot.activeElement; continue; }
      if (el.tagName === 'IFRAME' || el.tagName === 'FRAME') {
        let inner = null;
        try { inner = el.contentDocument; } catch (error) { inner = null; }
        if (!inner) return true;  /* a cross-origin frame: it may hold a focused field */
        doc = inner;
        el = inner.activeElement;
        continue;
      }
      if (el.tagName === 'INPUT') return !noCaretInputs.has(el.type);
      return el.isContentEditable || el.tagName === 'TEXTAREA';
    }
    return true;
  };
  return JSON.stringify({  /* one string crosses to Python faster than a structured value */
    elements: found.map((item) => ({
      id: parseInt(item.el.getAttribute(attribute), 10),
      tag: (item.el.getAttribute('role') || item.el.tagName).toUpperCase(),
      text: label(item.el),
      box: item.box,
      interactive: item.interactive,
    })),
    plainCapture: document.fonts.status === 'loaded' && !mayShowCaret(),
  });
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


@dataclass(frozen=True)
class PageScan:
    """What one Set-of-Mark pass saw: the elements, by id, and whether a screenshot may skip Playwright's caret
    hiding and font wait (no focused editable element, fonts loaded)."""

    elements: list[PageElement]
    plain_capture: bool


def scan_page(page: Any) -> PageScan:
    """Run the one Set-of-Mark pass on ``page`` (tagging new elements)."""
    raw = json.loads(page.evaluate(_SOM_SCRIPT, [SOM_ATTRIBUTE, MAX_VIEWPORT_FRACTION, MAX_TEXT_CHARS]))
    elements = [
        PageElement(int(item["id"]), item["tag"], item["text"], tuple(item["box"]), bool(item["interactive"]))
        for item in raw["elements"]
    ]
    return PageScan(sorted(elements, key=lambda element: element.som_id), bool(raw["plainCapture"]))


def find_page_elements(page: Any) -> list[PageElement]:
    """Run the one Set-of-Mark pass on ``page`` (tagging new elements) and return them sorted by id."""
    return scan_page(page).elements


def som_listing(elements: list[PageElement]) -> str:
    """The text observation: one ``[id] [TAG] [text]`` line per element, by id."""
    return "\n".join(element.listing_line() for element in elements)


def screenshot_array(page: Any, devtools: Any = None, plain_capture: bool = False) -> np.ndarray:
    """The viewport as an HxWx3 uint8 array: through the page's DevTools session ``devtools`` when the scan
    allowed a ``plain_capture`` (module docstring), else (or if that fails) through ``page.screenshot``."""
    if devtools is not None and plain_capture:
        try:
            shot = devtools.send("Page.captureScreenshot", {"format": "png", "optimizeForSpeed": True})
            return _decode_png(base64.b64decode(shot["data"]))
        except Exception:  # the session went away with its page: Playwright's path says what is wrong
            pass
    return _decode_png(page.screenshot(type="png"))


def _decode_png(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def page_marks(elements: list[PageElement], image_size: tuple[int, int]) -> list[ElementMark]:
    """The ``data_tools.som`` marks of ``elements`` on a ``(width, height)`` image (boxes clipped to it)."""
    width, height = image_size
    marks = []
    for element in elements:
        x0, y0, x1, y1 = element.box
        box = (min(x0, width), min(y0, height), min(x1, width), min(y1, height))
        kind = "button" if element.interactive else "text"
        marks.append(ElementMark(element.som_id, UIElement(box, kind, element.text, source="dom")))
    return marks


def place_page_marks(
    elements: list[PageElement], image_size: tuple[int, int], style: MarkStyle | None = None
) -> list[ElementMark]:
    """``page_marks`` with their labels placed, as ``draw_marks`` would place them on that image; needs no
    pixels, so it can run while the screenshot is taken."""
    return place_mark_labels(page_marks(elements, image_size), image_size, style)


def draw_page_marks(
    screenshot: np.ndarray,
    elements: list[PageElement],
    style: MarkStyle | None = None,
    placed: list[ElementMark] | None = None,
) -> np.ndarray:
    """The screenshot with each element's box and id drawn by ``data_tools.som`` (boxes scaled to image pixels);
    ``placed`` are the elements' marks already placed for this image's size (``place_page_marks``)."""
    height, width = screenshot.shape[:2]
    return draw_marks(screenshot, placed if placed is not None else page_marks(elements, (width, height)), style)
