"""Deterministic item images drawn with PIL: simple shapes in the item's colour, with visible extras.

Every PNG carries its facts (colour, kind, extras) in a text chunk, so an offline oracle can answer
yes/no visual questions about it (`answer_visual_question`) without a model; the pixels carry the
same facts for a real vision model.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

IMAGE_SIZE = (240, 180)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (210, 30, 40),
    "blue": (40, 80, 210),
    "green": (40, 160, 60),
    "yellow": (240, 210, 30),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
    "orange": (245, 140, 20),
    "purple": (130, 50, 170),
    "pink": (240, 130, 180),
    "grey": (130, 130, 130),
}
BACKGROUND = (225, 230, 235)
OUTLINE = (60, 60, 60)


def _wheel(draw: ImageDraw.ImageDraw, cx: int, cy: int, r: int) -> None:
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=OUTLINE, width=5)


def _draw_bicycle(draw: ImageDraw.ImageDraw, colour: tuple[int, int, int], extras: list[str]) -> None:
    _wheel(draw, 65, 120, 35)
    _wheel(draw, 175, 120, 35)
    for line in [(65, 120, 110, 120), (110, 120, 150, 70), (150, 70, 95, 70), (95, 70, 65, 120), (150, 70, 175, 120)]:
        draw.line(line, fill=colour, width=8)
    draw.line((95, 70, 90, 55), fill=colour, width=6)
    draw.line((150, 70, 155, 50), fill=colour, width=6)
    if "basket" in extras:
        draw.rectangle((150, 30, 195, 55), fill=(160, 110, 50), outline=OUTLINE, width=2)


def _draw_car(draw: ImageDraw.ImageDraw, colour: tuple[int, int, int], extras: list[str]) -> None:
    draw.rectangle((30, 85, 210, 130), fill=colour, outline=OUTLINE, width=2)
    draw.polygon([(70, 85), (95, 55), (165, 55), (185, 85)], fill=colour, outline=OUTLINE)
    draw.rectangle((100, 62, 160, 82), fill=(180, 210, 240))
    _wheel(draw, 70, 135, 18)
    _wheel(draw, 170, 135, 18)
    if "roof box" in extras:
        draw.rectangle((95, 35, 165, 52), fill=(30, 30, 30))


def _draw_chair(draw: ImageDraw.ImageDraw, colour: tuple[int, int, int], extras: list[str]) -> None:
    draw.rectangle((85, 30, 155, 95), fill=colour, outline=OUTLINE, width=2)
    draw.rectangle((75, 95, 165, 115), fill=colour, outline=OUTLINE, width=2)
    for x in (80, 155):
        draw.rectangle((x, 115, x + 8, 165), fill=OUTLINE)
    if "cushion" in extras:
        draw.ellipse((90, 85, 150, 105), fill=(250, 250, 220), outline=OUTLINE)


def _draw_sofa(draw: ImageDraw.ImageDraw, colour: tuple[int, int, int], extras: list[str]) -> None:
    draw.rectangle((40, 60, 200, 110), fill=colour, outline=OUTLINE, width=2)
    draw.rectangle((25, 80, 50, 140), fill=colour, outline=OUTLINE, width=2)
    draw.rectangle((190, 80, 215, 140), fill=colour, outline=OUTLINE, width=2)
    draw.rectangle((50, 105, 190, 140), fill=colour, outline=OUTLINE, width=2)
    if "cushion" in extras:
        draw.ellipse((60, 70, 100, 105), fill=(250, 250, 220), outline=OUTLINE)


def _draw_kayak(draw: ImageDraw.ImageDraw, colour: tuple[int, int, int], extras: list[str]) -> None:
    draw.ellipse((15, 80, 225, 120), fill=colour, outline=OUTLINE, width=2)
    draw.ellipse((100, 90, 140, 108), fill=(40, 40, 40))
    if "paddle" in extras:
        draw.line((60, 50, 180, 150), fill=(120, 80, 40), width=5)
        draw.ellipse((45, 38, 75, 62), fill=(120, 80, 40))
        draw.ellipse((165, 138, 195, 162), fill=(120, 80, 40))


def _draw_lamp(draw: ImageDraw.ImageDraw, colour: tuple[int, int, int], extras: list[str]) -> None:
    draw.polygon([(85, 30), (155, 30), (175, 85), (65, 85)], fill=colour, outline=OUTLINE)
    draw.rectangle((116, 85, 124, 150), fill=OUTLINE)
    draw.ellipse((85, 145, 155, 165), fill=OUTLINE)


def _draw_guitar(draw: ImageDraw.ImageDraw, colour: tuple[int, int, int], extras: list[str]) -> None:
    draw.ellipse((30, 80, 110, 160), fill=colour, outline=OUTLINE, width=2)
    draw.ellipse((75, 60, 135, 120), fill=colour, outline=OUTLINE, width=2)
    draw.ellipse((70, 105, 90, 125), fill=(30, 30, 30))
    draw.line((95, 110, 210, 25), fill=(120, 80, 40), width=10)


def _draw_tshirt(draw: ImageDraw.ImageDraw, colour: tuple[int, int, int], extras: list[str]) -> None:
    draw.polygon(
        [(80, 25), (160, 25), (205, 60), (180, 85), (165, 70), (165, 165), (75, 165), (75, 70), (60, 85), (35, 60)],
        fill=colour,
        outline=OUTLINE,
    )
    if "stripes" in extras:
        for y in range(50, 160, 22):
            draw.rectangle((76, y, 164, y + 8), fill=(250, 250, 250))


def _draw_mug(draw: ImageDraw.ImageDraw, colour: tuple[int, int, int], extras: list[str]) -> None:
    draw.rectangle((70, 45, 150, 150), fill=colour, outline=OUTLINE, width=3)
    draw.ellipse((135, 70, 185, 125), outline=colour, width=10)
    if "stripes" in extras:
        for y in range(60, 145, 25):
            draw.rectangle((71, y, 149, y + 8), fill=(250, 250, 250))


def _draw_backpack(draw: ImageDraw.ImageDraw, colour: tuple[int, int, int], extras: list[str]) -> None:
    draw.rounded_rectangle((65, 35, 175, 165), radius=25, fill=colour, outline=OUTLINE, width=3)
    draw.rounded_rectangle((85, 100, 155, 150), radius=10, outline=OUTLINE, width=3)
    draw.arc((95, 15, 145, 55), 180, 360, fill=OUTLINE, width=5)
    if "stripes" in extras:
        draw.rectangle((66, 70, 174, 82), fill=(250, 250, 250))


def _draw_sneaker(draw: ImageDraw.ImageDraw, colour: tuple[int, int, int], extras: list[str]) -> None:
    draw.polygon([(30, 130), (40, 70), (100, 70), (130, 100), (210, 110), (215, 130)], fill=colour, outline=OUTLINE)
    draw.rectangle((30, 130, 215, 145), fill=(245, 245, 245), outline=OUTLINE)
    if "stripes" in extras:
        for x in (70, 90, 110):
            draw.line((x, 75, x + 20, 125), fill=(250, 250, 250), width=6)


def _draw_headphones(draw: ImageDraw.ImageDraw, colour: tuple[int, int, int], extras: list[str]) -> None:
    draw.arc((55, 25, 185, 155), 180, 360, fill=colour, width=12)
    draw.rounded_rectangle((45, 85, 80, 145), radius=10, fill=colour, outline=OUTLINE, width=2)
    draw.rounded_rectangle((160, 85, 195, 145), radius=10, fill=colour, outline=OUTLINE, width=2)


def _draw_blanket(draw: ImageDraw.ImageDraw, colour: tuple[int, int, int], extras: list[str]) -> None:
    draw.rectangle((40, 30, 200, 150), fill=colour, outline=OUTLINE, width=2)
    draw.polygon([(200, 150), (200, 110), (160, 150)], fill=(200, 200, 200))
    if "stripes" in extras:
        for x in range(55, 195, 30):
            draw.rectangle((x, 31, x + 10, 149), fill=(250, 250, 250))


OBJECT_DRAWERS = {
    "bicycle": _draw_bicycle,
    "car": _draw_car,
    "chair": _draw_chair,
    "sofa": _draw_sofa,
    "kayak": _draw_kayak,
    "lamp": _draw_lamp,
    "guitar": _draw_guitar,
    "t-shirt": _draw_tshirt,
    "mug": _draw_mug,
    "backpack": _draw_backpack,
    "sneaker": _draw_sneaker,
    "headphones": _draw_headphones,
    "blanket": _draw_blanket,
}


def _draw_scene(draw: ImageDraw.ImageDraw, scene: str, time_of_day: str) -> None:
    night = time_of_day == "night"
    sky = (15, 20, 50) if night else (150, 200, 245)
    draw.rectangle((0, 0, *IMAGE_SIZE), fill=sky)
    if night:
        for x, y in [(20, 15), (60, 30), (110, 12), (170, 25), (215, 10), (140, 40)]:
            draw.ellipse((x, y, x + 3, y + 3), fill=(255, 255, 220))
        draw.ellipse((190, 20, 215, 45), fill=(240, 240, 200))
    else:
        draw.ellipse((185, 15, 220, 50), fill=(255, 220, 60))
    if scene == "skyline":
        for i, (x, h) in enumerate([(5, 90), (40, 130), (75, 70), (105, 150), (145, 100), (185, 120)]):
            draw.rectangle((x, 180 - h, x + 32, 180), fill=(40, 40, 60) if night else (90, 100, 120))
            for wy in range(185 - h, 175, 14):
                lit = (250, 220, 90) if night and (wy + i) % 3 else (200, 220, 240)
                draw.rectangle((x + 6, wy, x + 12, wy + 6), fill=lit)
    elif scene == "mountain":
        draw.polygon([(0, 180), (80, 50), (160, 180)], fill=(90, 90, 100))
        draw.polygon([(90, 180), (170, 70), (240, 180)], fill=(110, 110, 120))
        draw.polygon([(65, 75), (80, 50), (95, 75)], fill=(250, 250, 250))
    elif scene == "beach":
        draw.rectangle((0, 110, 240, 145), fill=(30, 90, 170))
        draw.rectangle((0, 145, 240, 180), fill=(230, 210, 150))
    elif scene == "forest":
        draw.rectangle((0, 150, 240, 180), fill=(60, 120, 50))
        for x in range(10, 240, 45):
            draw.polygon([(x, 150), (x + 20, 70), (x + 40, 150)], fill=(30, 100, 40))
    elif scene == "cat":
        draw.rectangle((0, 140, 240, 180), fill=(170, 130, 90))
        draw.ellipse((70, 80, 170, 150), fill=(230, 140, 40))
        draw.ellipse((135, 55, 185, 100), fill=(230, 140, 40))
        draw.polygon([(140, 65), (145, 40), (158, 60)], fill=(230, 140, 40))
        draw.polygon([(165, 60), (178, 40), (182, 68)], fill=(230, 140, 40))


def image_bytes(facts: list[str], drawing: str, colour: str = "", time_of_day: str = "day") -> bytes:
    """A PNG of an object (`drawing` in OBJECT_DRAWERS, filled with `colour`) or a scene, with `facts` embedded."""
    image = Image.new("RGB", IMAGE_SIZE, BACKGROUND)
    draw = ImageDraw.Draw(image)
    if drawing in OBJECT_DRAWERS:
        OBJECT_DRAWERS[drawing](draw, COLOURS[colour], facts)
    else:
        _draw_scene(draw, drawing, time_of_day)
    info = PngInfo()
    info.add_text("facts", ",".join(facts))
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def write_object_image(path: Path, kind: str, colour: str, extras: list[str]) -> None:
    path.write_bytes(image_bytes([colour, kind, *extras], kind, colour))


def write_scene_image(path: Path, scene: str, time_of_day: str) -> None:
    path.write_bytes(image_bytes([scene, time_of_day], scene, time_of_day=time_of_day))


def image_facts(png: bytes) -> list[str]:
    """The facts embedded in a bundled-site image (empty for any other image)."""
    with Image.open(io.BytesIO(png)) as image:
        text = image.info.get("facts", "") if isinstance(image.info, dict) else ""
    return [fact for fact in text.split(",") if fact]


VISUAL_VOCABULARY = {
    *COLOURS,
    *OBJECT_DRAWERS,
    "basket",
    "roof box",
    "cushion",
    "paddle",
    "stripes",
    "skyline",
    "mountain",
    "beach",
    "forest",
    "cat",
    "night",
    "day",
}


def answer_visual_question(facts: list[str], question: str) -> str:
    """An oracle answer ("yes"/"no") to "Is this a red bicycle with a basket? (yes/no)" from embedded facts:
    yes when every vocabulary word the question names is among the facts."""
    text = question.lower()
    named = [word for word in VISUAL_VOCABULARY if word in text]
    named = [word for word in named if not any(word != other and word in other for other in named)]
    return "yes" if named and all(word in facts for word in named) else "no"


def bundled_site_vqa(images: list[Image.Image], prompts: list[str]) -> list[str]:
    """A VQA model for the bundled sites only (``GradingConfig.vqa_model``): each generated image
    carries its facts, so the offline suite grades visual tasks without a model. Any other image is
    answered "unknown"."""
    answers = []
    for image, prompt in zip(images, prompts, strict=True):
        text = image.info.get("facts", "") if isinstance(image.info, dict) else ""
        facts = [fact for fact in text.split(",") if fact]
        answers.append(answer_visual_question(facts, prompt) if facts else "unknown")
    return answers
