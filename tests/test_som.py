"""Set-of-Mark: box sources, filters, sampling, numbering, label placement and drawing, grounding samples."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from data_tools.sample_format import validate_sample
from data_tools.shards import ShardWriter
from data_tools.som import (
    ElementMark,
    MarkStyle,
    SomInputError,
    UIElement,
    draw_marks,
    draw_point_marks,
    elements_from_android_hierarchy,
    elements_from_detections,
    elements_from_dom,
    elements_from_masks,
    filter_elements,
    mark_colour,
    number_marks,
    place_mark_labels,
    point_marks,
    sample_elements,
)
from data_tools.som_samples import (
    SOM_TASKS,
    SomConfig,
    SomConfigError,
    format_som_target,
    read_annotation_line,
    som_grounding_samples,
    som_samples_from_annotation,
    som_samples_from_annotation_line,
)
from magma.actions import format_som_answer, parse_ui_action

ANDROID_XML = """<?xml version='1.0' encoding='UTF-8' standalone='yes' ?>
<hierarchy rotation="0">
  <node index="0" text="" class="android.widget.FrameLayout" content-desc="" clickable="false"
        bounds="[0,0][1080,2400]">
    <node index="0" text="" class="android.widget.ImageButton" content-desc="Navigate up" clickable="true"
          bounds="[0,63][147,210]" />
    <node index="1" text="Settings" class="android.widget.TextView" content-desc="" clickable="false"
          bounds="[189,101][420,172]" />
    <node index="2" text="" class="android.widget.EditText" content-desc="Search settings" clickable="true"
          bounds="[40,250][1040,380]" />
    <node index="3" text="Wi-Fi" class="android.widget.LinearLayout" content-desc="" clickable="true"
          bounds="[0,400][1080,560]" />
    <node index="4" text="Hidden" class="android.widget.Button" content-desc="" clickable="true"
          visible-to-user="false" bounds="[0,600][300,700]" />
    <node index="5" text="" class="android.widget.Switch" content-desc="" clickable="true"
          bounds="[900,430][1040,530]" />
  </node>
</hierarchy>
"""


def overlaps(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def screenshot(width: int = 480, height: int = 360) -> tuple[Image.Image, list[UIElement]]:
    """A toy web page drawn with PIL: a header link, a search input, a grid of buttons and a caption."""
    image = Image.new("RGB", (width, height), (248, 248, 248))
    draw = ImageDraw.Draw(image)
    elements = [UIElement((16, 12, 96, 36), "link", "Home"), UIElement((120, 12, 400, 36), "input", "Search products")]
    for row, column in itertools.product(range(3), range(3)):
        box = (16 + column * 150, 70 + row * 80, 146 + column * 150, 120 + row * 80)
        elements.append(UIElement(box, "button", f"Item {row * 3 + column + 1}"))
    elements.append(UIElement((16, 320, 300, 340), "text", "Prices include tax"))
    for element in elements:
        draw.rectangle(element.box, outline=(90, 90, 90), fill=(225, 230, 240))
        draw.text((element.box[0] + 4, element.box[1] + 4), element.text, fill=(0, 0, 0))
    return image, elements


# ------------------------------------------------------------------------------------------------ sources


def test_elements_from_dom_reads_playwright_and_browsergym_shapes():
    nodes = [
        {"tag": "a", "text": "  Sign \n in ", "bounding_box": {"x": 10, "y": 20, "width": 60, "height": 18}},
        {"tagName": "INPUT", "type": "search", "placeholder": "Search", "bbox": [100, 20, 200, 24], "visibility": 1.0},
        {"tag": "input", "type": "checkbox", "x": 5, "y": 60, "width": 12, "height": 12},
        {"tag": "div", "role": "button", "aria_label": "Close", "bbox": [400, 5, 20, 20]},
        {"tag": "img", "alt": "Logo", "bbox": [300, 0, 50, 40]},
        {"tag": "span", "text": "Welcome back", "bbox": [10, 90, 120, 16]},
        {"tag": "div", "bbox": [0, 0, 640, 480]},  # a text-less container: no mark
        {"tag": "button", "text": "Hidden", "bbox": [10, 200, 80, 30], "visibility": 0.1},
        {"tag": "button", "text": "Gone", "bbox": [10, 240, 80, 30], "visible": False},
        {"tag": "button", "text": "Empty", "bbox": [10, 280, 0, 30]},
        {"tag": "p", "text": "no box"},
    ]
    elements = elements_from_dom(nodes)
    assert [(element.kind, element.text) for element in elements] == [
        ("link", "Sign in"),
        ("input", "Search"),
        ("checkbox", ""),
        ("button", "Close"),
        ("image", "Logo"),
        ("text", "Welcome back"),
    ]
    assert elements[0].box == (10.0, 20.0, 70.0, 38.0) and elements[1].box == (100.0, 20.0, 300.0, 44.0)
    assert all(element.source == "web" for element in elements)
    with pytest.raises(SomInputError, match=r"DOM node 0 .*bbox \[x, y, width, height\]"):
        elements_from_dom([{"tag": "a", "bbox": ["left", 0, 1, 1]}])


def test_elements_from_android_hierarchy_keeps_widgets_with_their_text():
    elements = elements_from_android_hierarchy(ANDROID_XML)
    assert [(element.kind, element.text, element.box) for element in elements] == [
        ("icon", "Navigate up", (0.0, 63.0, 147.0, 210.0)),
        ("text", "Settings", (189.0, 101.0, 420.0, 172.0)),
        ("input", "Search settings", (40.0, 250.0, 1040.0, 380.0)),
        ("button", "Wi-Fi", (0.0, 400.0, 1080.0, 560.0)),
        ("checkbox", "", (900.0, 430.0, 1040.0, 530.0)),
    ]
    assert {element.source for element in elements} == {"android"}
    with pytest.raises(SomInputError, match=r"not valid XML.*uiautomator dump"):
        elements_from_android_hierarchy("<hierarchy><node bounds=")


def test_elements_from_detections_drops_low_scores():
    boxes = np.array([[10, 10, 50, 40], [60, 10, 90, 40], [0, 0, 5, 5]], dtype=np.float32)
    elements = elements_from_detections(boxes, [0.9, 0.2, 0.5], ["icon", "text", "icon"], score_threshold=0.3)
    assert [(element.box, element.kind) for element in elements] == [
        ((10.0, 10.0, 50.0, 40.0), "icon"),
        ((0.0, 0.0, 5.0, 5.0), "icon"),
    ]
    with pytest.raises(ValueError, match="one of each"):
        elements_from_detections(boxes, [0.9], ["icon"])


def test_elements_from_masks_boxes_each_mask():
    first, second, empty = (np.zeros((40, 60), dtype=bool) for _ in range(3))
    first[5:10, 20:31] = True
    second[30, 2] = second[35, 8] = True
    elements = elements_from_masks([first, empty, second], ["cup", "nothing", "spoon"])
    assert [(element.box, element.kind) for element in elements] == [
        ((20.0, 5.0, 31.0, 10.0), "cup"),
        ((2.0, 30.0, 9.0, 36.0), "spoon"),
    ]
    assert elements_from_masks([first])[0].kind == "region"


# -------------------------------------------------------------------------------------- filters, sampling


def test_filter_elements_drops_out_of_view_too_large_and_nested_duplicates():
    elements = [
        UIElement((-50, 10, -5, 40), "button", "left of the view"),
        UIElement((630, 100, 700, 140), "button", "mostly right of the view"),  # 10 px visible: clipped, kept
        UIElement((637, 200, 700, 240), "button", "sliver"),  # 3 px visible: dropped
        UIElement((10, 500, 90, 540), "button", "below the fold"),
        UIElement((0, 0, 600, 400), "image", "hero"),  # 78% of the image: too large
        UIElement((100, 100, 200, 130), "link", "Pricing"),  # a link ...
        UIElement((102, 101, 198, 129), "image", ""),  # ... and its background image: a duplicate, keep the text
        UIElement((300, 300, 340, 330), "button", ""),
        UIElement((301, 300, 340, 330), "icon", ""),  # no text on either: keep the smaller
        UIElement((400, 300, 500, 360), "button", "Outer"),
        UIElement((420, 310, 450, 330), "icon", "Inner"),  # nested but not a duplicate: both kept
    ]
    kept = filter_elements(elements, (640, 480), max_area_fraction=0.5, min_side_px=4, iou_duplicate=0.8)
    assert [element.text or element.kind for element in kept] == [
        "mostly right of the view",
        "Pricing",
        "icon",
        "Outer",
        "Inner",
    ]
    assert kept[0].box == (630.0, 100.0, 640.0, 140.0)
    assert kept[1].kind == "link" and kept[2].box == (301.0, 300.0, 340.0, 330.0)


def test_sample_elements_follows_kind_weights():
    elements = [UIElement((i, 0, i + 5, 5), "button") for i in range(10)]
    elements += [UIElement((i, 10, i + 5, 15), "text") for i in range(10)]
    elements += [UIElement((i, 20, i + 5, 25), "image") for i in range(10)]
    weights = {"button": 3.0, "text": 1.0, "image": 0.0}
    rng = np.random.default_rng(0)
    kinds = [sample_elements(elements, 1, weights, rng)[0].kind for _ in range(4000)]
    assert "image" not in kinds
    assert kinds.count("button") / len(kinds) == pytest.approx(0.75, abs=0.03)
    several = sample_elements(elements, 8, weights, rng)
    assert len(several) == 8 and len(set(several)) == 8
    assert several == sorted(several, key=elements.index)  # input order kept
    assert sample_elements(elements[:3], 8, weights, rng) == elements[:3]


def test_number_marks_follows_reading_order():
    # Given out of order; the second row's tops wobble by a few pixels but form one row.
    boxes = {
        "row2-right": (300, 104, 360, 130),
        "row1-left": (10, 10, 80, 40),
        "row2-left": (10, 100, 80, 126),
        "row1-right": (400, 12, 470, 40),
        "row2-middle": (150, 98, 220, 124),
        "row1-middle": (200, 8, 260, 40),
        "row3": (5, 200, 60, 230),
    }
    elements = [UIElement(box, "button", name) for name, box in boxes.items()]
    marks = number_marks(elements)
    assert [mark.label for mark in marks] == list(range(1, 8))
    assert [mark.element.text for mark in marks] == [
        "row1-left",
        "row1-middle",
        "row1-right",
        "row2-left",
        "row2-middle",
        "row2-right",
        "row3",
    ]


# ------------------------------------------------------------------------------------------------ drawing


def test_labels_do_not_overlap_on_a_crowded_layout_and_are_drawn():
    image = Image.new("RGB", (320, 240), (240, 240, 240))
    elements = [
        UIElement((4 + column * 39, 4 + row * 29, 40 + column * 39, 30 + row * 29), "button")
        for row, column in itertools.product(range(8), range(8))
    ]
    marks = place_mark_labels(number_marks(elements), image.size)
    assert [mark.label for mark in marks] == list(range(1, 65))
    for first, second in itertools.combinations(marks, 2):
        assert not overlaps(first.label_box, second.label_box), (first.label, second.label)
    for mark in marks:
        x0, y0, x1, y1 = mark.label_box
        assert 0 <= x0 < x1 <= 320 and 0 <= y0 < y1 <= 240
    drawn = draw_marks(image, marks)
    original = np.asarray(image)
    assert drawn.shape == original.shape and drawn.dtype == np.uint8
    for mark in marks:
        x0, y0, x1, y1 = (int(value) for value in mark.label_box)
        patch = drawn[y0:y1, x0:x1].reshape(-1, 3)
        assert np.abs(patch.astype(int) - original[y0:y1, x0:x1].reshape(-1, 3)).sum(axis=1).mean() > 50
        # The label is filled with the mark's colour, with the number in a contrasting colour on it.
        assert (patch == mark_colour(mark.label)).all(axis=1).mean() > 0.4
        assert len(np.unique(patch, axis=0)) > 1
    # Each box outline is drawn in its mark's colour.
    first = marks[0].element.box
    assert tuple(drawn[int(first[1]) + 15, int(first[0])]) == mark_colour(1)
    # An array input gives the same picture as a PIL input.
    assert np.array_equal(draw_marks(original, marks), drawn)


def test_labels_avoid_earlier_labels_when_boxes_pile_up():
    # Cascaded windows 2 px apart: every spot next to a box touches earlier labels, so labels must move further out.
    elements = [UIElement((100 + 2 * i, 100 + 2 * i, 130 + 2 * i, 121 + 2 * i), "window") for i in range(16)]
    marks = place_mark_labels(number_marks(elements), (400, 300))
    for first, second in itertools.combinations(marks, 2):
        assert not overlaps(first.label_box, second.label_box), (first.label, second.label)


def test_labels_prefer_free_space_outside_the_box():
    elements = [UIElement((100, 100, 200, 140), "button", "A"), UIElement((100, 30, 200, 95), "button", "B")]
    marks = place_mark_labels(number_marks(elements), (400, 300))
    top, bottom = marks  # B (label 1) is above A (label 2)
    assert top.element.text == "B" and top.label_box[3] <= 30  # above its box, where nothing else is
    # Above A is only a 5-pixel gap, so A's label goes where it covers no other element.
    assert not overlaps(bottom.label_box, top.element.box) and not overlaps(bottom.label_box, top.label_box)


def test_font_scales_with_image_size():
    style = MarkStyle()
    assert style.font_size((256, 256)) < style.font_size((1024, 768)) < style.font_size((4000, 3000))
    assert style.font_size((4000, 3000)) == style.max_font_px and style.font_size((64, 64)) == style.min_font_px
    assert MarkStyle(font_px=17).font_size((4000, 3000)) == 17
    sizes = []
    for scale in (1, 4):
        element = UIElement((40 * scale, 40 * scale, 120 * scale, 80 * scale), "button")
        (mark,) = place_mark_labels([ElementMark(7, element)], (320 * scale, 240 * scale))
        sizes.append(mark.label_box[3] - mark.label_box[1])
    assert sizes[1] > 2.5 * sizes[0]


def test_point_marks_label_next_to_each_point_without_hiding_it():
    image = Image.new("RGB", (400, 300), (255, 255, 255))
    points = [(100, 100), (108, 104), (300, 200)]
    marks = point_marks(points, image.size, labels=[3, 1, 2])
    assert sorted(mark.label for mark in marks) == [1, 2, 3]
    for first, second in itertools.combinations(marks, 2):
        assert not overlaps(first.label_box, second.label_box)
    for mark in marks:
        assert not overlaps(mark.label_box, mark.element.box)  # the point stays visible
        center_x, center_y = mark.element.center
        assert abs(mark.label_box[0] - center_x) < 40 and abs(mark.label_box[1] - center_y) < 40
    drawn = draw_point_marks(image, points, labels=[3, 1, 2])
    assert tuple(drawn[200, 300]) == mark_colour(2)
    x0, y0, x1, y1 = (int(value) for value in next(mark.label_box for mark in marks if mark.label == 2))
    assert (drawn[y0:y1, x0:x1] != 255).any()


# ------------------------------------------------------------------------------------------------ samples


def expected_marks(elements: list[UIElement], size: tuple[int, int]) -> dict[str, ElementMark]:
    return {mark.element.text: mark for mark in number_marks(filter_elements(elements, size))}


@pytest.mark.parametrize("task", SOM_TASKS)
def test_grounding_samples_validate_and_answer_about_the_right_element(task):
    image, elements = screenshot()
    size = image.size
    config = SomConfig(max_marks=50)
    marks = expected_marks(elements, size)
    for seed in range(5):
        samples = som_grounding_samples(image, elements, task, np.random.default_rng(seed), config)
        assert len(samples) == 1
        record, images = samples[0]
        validate_sample(record, len(images))
        question = record["conversations"][0]["value"]
        answer = record["conversations"][1]["value"]
        assert question.startswith("<image>\n")
        target = marks[record["meta"]["target"]["text"]]
        assert record["meta"]["target"]["mark"] == target.label and record["meta"]["task"] == task
        x0, y0, x1, y1 = target.element.box
        center = ((x0 + x1) / 2 / size[0], (y0 + y1) / 2 / size[1])
        if task in ("text_to_point", "text_to_box", "som_action"):
            assert f'"{target.element.text}"' in question
        if task in ("text_to_point", "som_action"):
            action = parse_ui_action(answer, "som")
            assert action.coordinate == pytest.approx(center, abs=0.006)
            assert action.element_id == (target.label if task == "som_action" else None)
        if task == "text_to_box":
            values = [
                float(value) for value in re.fullmatch(r"\(([\d.]+), ([\d.]+), ([\d.]+), ([\d.]+)\)", answer).groups()
            ]
            assert values == pytest.approx([x0 / size[0], y0 / size[1], x1 / size[0], y1 / size[1]], abs=0.006)
        if task in ("point_to_text", "widget_caption"):
            x, y = (float(value) for value in re.search(r"\(([\d.]+), ([\d.]+)\)", question).groups())
            assert x0 <= x * size[0] <= x1 and y0 <= y * size[1] <= y1
        if task == "box_to_text":
            assert re.search(r"\([\d.]+, [\d.]+, [\d.]+, [\d.]+\)", question)
        if task in ("point_to_text", "box_to_text"):
            assert answer == target.element.text
        if task == "widget_caption":
            assert f'"{target.element.text}"' in answer and target.element.kind in answer
        # Only the Set-of-Mark task shows the marks; the others see the clean screenshot.
        assert images[0].shape == (size[1], size[0], 3)
        assert np.array_equal(images[0], np.asarray(image)) == (task != "som_action")


def test_som_answers_match_the_magma_codec_and_marked_grounding_adds_the_mark():
    assert (
        format_som_target((0.17, 0.43), 3) == format_som_answer(3, (0.17, 0.43)) == "Coordinate: (0.17, 0.43). Mark: 3."
    )
    image, elements = screenshot()
    config = SomConfig(max_marks=50, marks_on_grounding_images=True)
    marks = expected_marks(elements, image.size)
    (record, images), *_ = som_grounding_samples(image, elements, "text_to_point", np.random.default_rng(1), config)
    action = parse_ui_action(record["conversations"][1]["value"], "som")
    assert action.element_id == marks[record["meta"]["target"]["text"]].label and action.coordinate is not None
    assert not np.array_equal(images[0], np.asarray(image))


def test_text_tasks_skip_elements_without_unique_text():
    image, _ = screenshot()
    elements = [UIElement((10, 10, 60, 40), "button", "OK"), UIElement((100, 10, 160, 40), "button", "OK")]
    elements.append(UIElement((200, 10, 260, 40), "icon"))
    assert som_grounding_samples(image, elements, "text_to_point", np.random.default_rng(0)) == []
    # The icon is the only one of its kind, so a Set-of-Mark question can still name it.
    (record, _), *_ = som_grounding_samples(image, elements, "som_action", np.random.default_rng(0))
    assert "the icon" in record["conversations"][0]["value"] and record["meta"]["target"]["mark"] == 3


# -------------------------------------------------------------------------------------------- annotations


def write_annotations(tmp_path: Path, lines: list[dict]) -> Path:
    path = tmp_path / "annotations.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_annotations_from_each_source_become_samples(tmp_path):
    image, elements = screenshot()
    image.save(tmp_path / "page.png")
    Image.new("RGB", (1080, 2400), (250, 250, 250)).save(tmp_path / "phone.png")
    (tmp_path / "phone.xml").write_text(ANDROID_XML)
    dom = [{"tag": "button", "text": element.text, "bbox": [*element.box[:2], 80, 30]} for element in elements[2:5]]
    path = write_annotations(
        tmp_path,
        [
            {
                "image": "page.png",
                "source": "web",
                "elements": [{"box": list(e.box), "kind": e.kind, "text": e.text} for e in elements],
            },
            {"image": "phone.png", "source": "android", "android_xml": "phone.xml"},
            {"image": str(tmp_path / "page.png"), "source": "web", "dom": dom},
        ],
    )
    config = SomConfig(samples_per_image=3)
    with ShardWriter(tmp_path / "shards", prefix="som") as writer:
        for line in (1, 2, 3):
            samples = som_samples_from_annotation_line(f"{path}:{line}", config, np.random.default_rng(line))
            assert len(samples) == 3
            assert len({record["meta"]["task"] for record, _ in samples}) == 3
            for record, images in samples:
                validate_sample(record, len(images))
                writer.write(record, images)
    assert writer.samples_written == 9
    # The same annotation and seed give the same samples.
    annotation = json.loads(path.read_text().splitlines()[0])
    first = som_samples_from_annotation(annotation, config, np.random.default_rng(5), base_dir=tmp_path)
    second = som_samples_from_annotation(annotation, config, np.random.default_rng(5), base_dir=tmp_path)
    assert [record for record, _ in first] == [record for record, _ in second]


@pytest.mark.parametrize(
    ("annotation", "reason", "message"),
    [
        ({"image": "missing.png", "elements": []}, "unreadable_image", r"'.*missing\.png' not found; fix the 'image'"),
        (
            {"image": "broken.png", "elements": []},
            "unreadable_image",
            r"cannot read screenshot .*broken\.png.*readable",
        ),
        ({"image": "page.png"}, "malformed_annotation", r"exactly one of 'elements', 'android_xml' or 'dom'"),
        ({"image": 7, "elements": []}, "malformed_annotation", r"'image' must be a file path"),
        (
            {"image": "page.png", "elements": [{"box": [10, 10, 5, 5], "kind": "button"}]},
            "malformed_annotation",
            r"element 0 is malformed .*\[x0, y0, x1, y1\] in pixels",
        ),
        ({"image": "page.png", "android_xml": "<hierarchy><node"}, "malformed_annotation", "not valid XML"),
        (
            {"image": "page.png", "elements": [{"box": [0.1, 0.1, 0.3, 0.2], "kind": "button", "text": "Go"}]},
            "no_usable_elements",
            r"boxes are in pixels of this image, not normalised",
        ),
    ],
)
def test_bad_annotations_raise_clear_errors(tmp_path, annotation, reason, message):
    Image.new("RGB", (64, 48)).save(tmp_path / "page.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    path = write_annotations(tmp_path, [annotation])
    with pytest.raises(SomInputError, match=message) as caught:
        som_samples_from_annotation_line(f"{path}:1", SomConfig(), np.random.default_rng(0))
    assert caught.value.reason == reason
    assert str(caught.value).startswith(f"{path}:1")  # names the input


def test_read_annotation_line_seeks_to_the_line_and_sees_edits(tmp_path):
    path = write_annotations(tmp_path, [{"image": f"{index}.png", "elements": []} for index in range(1, 6)])
    assert read_annotation_line(f"{path}:4") == ({"image": "4.png", "elements": []}, tmp_path)
    write_annotations(tmp_path, [{"image": "new.png", "note": "é" * 3, "elements": []}, {"image": "last.png"}])
    assert read_annotation_line(f"{path}:2")[0] == {"image": "last.png"}
    with pytest.raises(SomInputError, match=r"has no line 3 \(it has 2\)"):
        read_annotation_line(f"{path}:3")


def test_unreadable_annotation_lines_and_configs(tmp_path):
    path = tmp_path / "annotations.jsonl"
    path.write_text('{"image": "page.png", \n')
    with pytest.raises(SomInputError, match=r"annotations\.jsonl:1 is not valid JSON .*fix that line"):
        som_samples_from_annotation_line(f"{path}:1")
    with pytest.raises(SomInputError, match="has no line 4"):
        som_samples_from_annotation_line(f"{path}:4")
    with pytest.raises(SomInputError, match=r"file\.jsonl:LINE"):
        som_samples_from_annotation_line(str(path))
    with pytest.raises(SomConfigError, match="unknown Set-of-Mark tasks"):
        SomConfig(task_weights={"text_to_pointer": 1.0})


def test_som_modules_import_no_model_code():
    code = "import sys, data_tools.som_samples; assert not {'torch', 'magma', 'envs'} & set(sys.modules), sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr


def test_placeholders_written_in_a_screenshots_text_stay_text(tmp_path):
    """A button labelled ``<image>`` (untrusted annotation text) must not become a sample-format placeholder."""
    image, elements = screenshot()
    image.save(tmp_path / "page.png")
    hostile = ["<image>", "<action> now", "see <image><image>"]
    raw = [{"box": list(e.box), "kind": e.kind, "text": text} for e, text in zip(elements, hostile, strict=False)]
    annotation = {"image": "page.png", "source": "web", "elements": raw}
    config = SomConfig(samples_per_image=6, task_weights={task: 1.0 for task in SOM_TASKS})
    for seed in range(8):
        for record, images in som_samples_from_annotation(annotation, config, np.random.default_rng(seed), tmp_path):
            validate_sample(record, len(images))  # one <image>, the sample's own
            text = " ".join(turn["value"] for turn in record["conversations"])
            assert text.count("<image>") == 1 and "<action>" not in text


@pytest.mark.parametrize("kind", ["rgb array", "grey array", "rgba array", "pil rgb"])
def test_drawing_marks_leaves_the_given_image_untouched(kind):
    pixels = np.random.default_rng(7).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    image = {
        "rgb array": pixels,
        "grey array": pixels[..., 0].copy(),
        "rgba array": np.dstack([pixels, np.full((60, 80), 255, np.uint8)]),
        "pil rgb": Image.fromarray(pixels),
    }[kind]
    before = np.array(image).copy()
    points = [(20.0, 20.0), (50.0, 40.0)]
    drawn = draw_point_marks(image, points, labels=[2, 1])
    boxed = draw_marks(image, [ElementMark(1, UIElement((10, 10, 40, 30), "button"))])
    assert np.array_equal(np.array(image), before)  # drawn on a copy, never on the caller's pixels
    for result in (drawn, boxed):
        assert result.shape == (60, 80, 3) and result.dtype == np.uint8 and not np.array_equal(result, before)
    assert tuple(drawn[40, 50]) == mark_colour(1)
