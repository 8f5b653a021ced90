"""What the simulated phone shows: a PNG of its windows (as ``screencap -p`` returns) and the focused window
as a ``uiautomator dump`` XML (the real attribute set and order, ``bounds="[x0,y0][x1,y1]"``)."""

from __future__ import annotations

import io
from xml.sax.saxutils import quoteattr

from PIL import Image, ImageDraw, ImageFont

from envs.android.simulated_device.screens import SimNode

_LIGHT = {"background": (250, 250, 250), "text": (33, 33, 33), "title": (25, 118, 210), "accent": (25, 118, 210)}
_DARK = {"background": (30, 30, 30), "text": (230, 230, 230), "title": (13, 71, 161), "accent": (144, 202, 249)}


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(8, size))


def render_png(layers: list[SimNode], size: tuple[int, int], dark: bool = False, black: bool = False) -> bytes:
    """The screen as PNG bytes; ``black`` for a FLAG_SECURE window (screencap returns a black frame)."""
    colours = _DARK if dark else _LIGHT
    image = Image.new("RGB", size, (0, 0, 0) if black else colours["background"])
    if not black:
        draw = ImageDraw.Draw(image)
        for layer in layers:
            for node in layer.walk():
                _draw_node(draw, node, colours, size)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _draw_node(draw: ImageDraw.ImageDraw, node: SimNode, colours: dict, size: tuple[int, int]) -> None:
    x0, y0, x1, y1 = node.bounds
    height = y1 - y0
    font = _font(round(min(size) * 0.04))
    text_colour = colours["text"]
    if node.style == "dim":
        draw.rectangle((0, 0, size[0], size[1]), fill=(90, 90, 90))
        return
    if node.style == "title":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=colours["title"])
        text_colour = (255, 255, 255)
    elif node.style == "button":
        draw.rounded_rectangle((x0, y0, x1 - 1, y1 - 1), radius=height // 4, fill=colours["accent"])
        text_colour = (255, 255, 255)
    elif node.style == "dialog":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=colours["background"])
    elif node.style == "field":
        line = (255, 87, 34) if node.focused else colours["accent"]
        draw.rectangle((x0, y1 - 4, x1 - 1, y1 - 1), fill=line)
    elif node.style == "row":
        draw.line((x0, y1 - 1, x1, y1 - 1), fill=(200, 200, 200))
    elif node.style == "icon":
        side = min(x1 - x0, y1 - y0 - 30)
        draw.rounded_rectangle((x0, y0, x0 + side, y0 + side), radius=side // 5, fill=(67, 160, 71))
    elif node.style == "switch":
        track = (x1 - round(2.2 * height / 2), y0 + height // 4, x1 - 8, y1 - height // 4)
        draw.rounded_rectangle(track, radius=height // 4, fill=colours["accent"] if node.checked else (160, 160, 160))
        knob_x = track[2] - (track[3] - track[1]) if node.checked else track[0]
        draw.ellipse((knob_x, track[1], knob_x + track[3] - track[1], track[3]), fill=(255, 255, 255))
    label = node.text or (node.hint if node.style == "field" else "")
    if label and node.style not in ("list", "row", "background"):
        colour = (150, 150, 150) if not node.text else text_colour
        centre = node.style in ("button", "title")
        box = draw.textbbox((0, 0), label, font=font)
        text_width, text_height = box[2] - box[0], box[3] - box[1]
        x = x0 + (x1 - x0 - text_width) / 2 if centre else x0 + 12
        y = (y1 - 26 if node.style == "icon" else y0 + (height - text_height) / 2) - box[1]
        draw.text((x, y), label, fill=colour, font=font)


def _node_xml(node: SimNode, index: int, parts: list[str]) -> None:
    flags = (
        ("checkable", node.checkable),
        ("checked", node.checked),
        ("clickable", node.clickable),
        ("enabled", True),
        ("focusable", node.focusable),
        ("focused", node.focused),
        ("scrollable", node.scrollable),
        ("long-clickable", node.long_clickable),
        ("password", node.password),
        ("selected", False),
    )
    x0, y0, x1, y1 = node.bounds
    attributes = [
        f'index="{index}"',
        f"text={quoteattr(node.text)}",
        f"resource-id={quoteattr(node.resource_id)}",
        f"class={quoteattr(node.cls)}",
        f"package={quoteattr(node.package)}",
        f"content-desc={quoteattr(node.content_desc)}",
        *(f'{name}="{str(value).lower()}"' for name, value in flags),
        f'bounds="[{x0},{y0}][{x1},{y1}]"',
    ]
    if node.hint:
        attributes.insert(3, f"hint={quoteattr(node.hint)}")
    parts.append("<node " + " ".join(attributes) + (">" if node.children else " />"))
    for child_index, child in enumerate(node.children):
        child.package = child.package or node.package
        _node_xml(child, child_index, parts)
    if node.children:
        parts.append("</node>")


def hierarchy_xml(root: SimNode, rotation: int) -> str:
    """The window as ``uiautomator dump`` writes it (one line, no pretty printing)."""
    parts = ["<?xml version='1.0' encoding='UTF-8' standalone='yes' ?>", f'<hierarchy rotation="{rotation}">']
    _node_xml(root, 0, parts)
    parts.append("</hierarchy>")
    return "".join(parts)
