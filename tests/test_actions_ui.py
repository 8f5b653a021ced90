"""UI action grammars: VisualWebArena, Set-of-Mark answers and AITW JSON."""

import re

import pytest

from magma.actions import (
    ActionParseError,
    UIAction,
    aitw_to_vwa,
    extract_vwa_action,
    format_aitw_action,
    format_som_answer,
    format_ui_action,
    format_vwa_action,
    parse_aitw_action,
    parse_som_answer,
    parse_ui_action,
    parse_vwa_action,
    som_to_vwa,
)

VWA_CANONICAL = {
    "click [1234]": UIAction("click", element_id=1234),
    "type [12] [red running shoes] [1]": UIAction("type", element_id=12, text="red running shoes", press_enter=True),
    "type [12] [a [bracketed] word] [0]": UIAction("type", element_id=12, text="a [bracketed] word", press_enter=False),
    "hover [7]": UIAction("hover", element_id=7),
    "press [Control+v]": UIAction("press", keys="Control+v"),
    "scroll [up]": UIAction("scroll", direction="up"),
    "scroll [down]": UIAction("scroll", direction="down"),
    "goto [http://localhost:9980/forums/all]": UIAction("goto", url="http://localhost:9980/forums/all"),
    "go_back": UIAction("go_back"),
    "go_forward": UIAction("go_forward"),
    "new_tab": UIAction("new_tab"),
    "tab_focus [2]": UIAction("tab_focus", tab_index=2),
    "close_tab": UIAction("close_tab"),
    "stop [$25.99]": UIAction("stop", answer="$25.99"),
    "stop []": UIAction("stop", answer=""),
}


@pytest.mark.parametrize(("text", "action"), VWA_CANONICAL.items())
def test_vwa_round_trip(text: str, action: UIAction) -> None:
    assert parse_vwa_action(text) == action
    assert format_vwa_action(action) == text
    assert format_ui_action(parse_ui_action(text, "vwa"), "vwa") == text


@pytest.mark.parametrize(
    ("text", "action"),
    [
        ("type [12] [hello]", UIAction("type", element_id=12, text="hello", press_enter=True)),  # VWA default
        ("  Click  [3]  ", UIAction("click", element_id=3)),
        ("click[3]", UIAction("click", element_id=3)),
        ("scroll down", UIAction("scroll", direction="down")),
        ("stop", UIAction("stop", answer="")),
    ],
)
def test_vwa_accepts_the_variants_its_parser_does(text: str, action: UIAction) -> None:
    assert parse_vwa_action(text) == action


def test_extract_vwa_action_from_prose() -> None:
    reply = (
        "Let's think step-by-step. The search box has id [5], e.g. ```type [5] [shoes]```.\n"
        "In summary, the next action I will perform is ```click [1234]```"
    )
    assert extract_vwa_action(reply) == "click [1234]"
    assert parse_ui_action(reply, "vwa") == UIAction("click", element_id=1234)
    assert extract_vwa_action("So: ```\nscroll [down]\n```") == "scroll [down]"
    assert extract_vwa_action("```text\nhover [4]\n```") == "hover [4]"
    assert extract_vwa_action("  go_back \n") == "go_back"  # bare actions need no fences


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("click [abc]", "non-negative integer"),
        ("click []", "missing its id"),
        ("click", "needs [id]"),
        ("fly [3]", "unknown verb 'fly'"),
        ("scroll [sideways]", "up or down"),
        ("type [x] [hello] [1]", "non-negative integer"),
        ("type [3]", "type needs [id] [text]"),
        ("tab_focus [first]", "non-negative integer"),
        ("goto []", "empty argument"),
        ("go_back [1]", "takes no argument"),
        ("", "empty output"),
        ("   ", "empty output"),
        ("[3]", "no action verb"),
    ],
)
def test_vwa_malformed_output_raises_with_the_text(text: str, reason: str) -> None:
    with pytest.raises(ActionParseError, match=re.escape(reason)) as caught:
        parse_vwa_action(text)
    assert caught.value.text == text
    assert caught.value.reason in str(caught.value)


def test_dispatcher_error_carries_the_whole_model_output() -> None:
    reply = "I will now ```fly [3]```"
    with pytest.raises(ActionParseError, match="unknown verb") as caught:
        parse_ui_action(reply, "vwa")
    assert caught.value.text == reply


def test_parse_error_message_is_truncated() -> None:
    with pytest.raises(ActionParseError) as caught:
        parse_vwa_action("fly " + "x" * 1000)
    assert len(str(caught.value)) < 400 and "more chars" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "mark", "coordinate"),
    [
        ("Coordinate: (0.17, 0.43). Mark: 3.", 3, (0.17, 0.43)),
        ("Mark: 12.", 12, None),
        ("Coordinate: (0.50, 1.00).", None, (0.5, 1.0)),
    ],
)
def test_som_round_trip(text: str, mark: int | None, coordinate: tuple[float, float] | None) -> None:
    action = parse_som_answer(text)
    assert action == UIAction("point", element_id=mark, coordinate=coordinate)
    assert format_som_answer(mark, coordinate) == text
    assert format_ui_action(parse_ui_action(text, "som"), "som") == text


@pytest.mark.parametrize(
    ("text", "mark", "coordinate"),
    [
        ("Mark: 12", 12, None),
        ("mark:12", 12, None),
        ("  coordinate :( 0.2 ,0.9 ) .  MARK : 7 ", 7, (0.2, 0.9)),
        ("The answer is Mark: 4.", 4, None),
    ],
)
def test_som_is_tolerant_of_case_and_spacing(text: str, mark: int | None, coordinate) -> None:
    assert parse_som_answer(text) == UIAction("point", element_id=mark, coordinate=coordinate)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Coordinate: (1.5, 0.2). Mark: 3.", r"\[0, 1\]"),
        ("Coordinate: (-0.1, 0.2).", r"\[0, 1\]"),
        ("Coordinate: 0.1, 0.2. Mark: 3.", r"\(x, y\)"),
        ("Coordinate: (a, b).", "numbers"),
        ("Mark: three.", "non-negative integer"),
        ("Mark: 2.5", "non-negative integer"),
        ("I don't know", "no 'Mark:'"),
        ("", "no 'Mark:'"),
    ],
)
def test_som_malformed_output_raises_with_the_text(text: str, reason: str) -> None:
    with pytest.raises(ActionParseError, match=reason) as caught:
        parse_som_answer(text)
    assert caught.value.text == text


AITW_CANONICAL = {
    '{"TAP": {"MARK": 3}}': UIAction("tap", element_id=3),
    '{"SWIPE": "UP"}': UIAction("swipe", direction="up"),
    '{"SWIPE": "DOWN"}': UIAction("swipe", direction="down"),
    '{"SWIPE": "LEFT"}': UIAction("swipe", direction="left"),
    '{"SWIPE": "RIGHT"}': UIAction("swipe", direction="right"),
    '{"NAVIGATE": "BACK"}': UIAction("navigate_back"),
    '{"NAVIGATE": "HOME"}': UIAction("navigate_home"),
    '{"TYPE": "hello wörld"}': UIAction("type", text="hello wörld"),
    '{"SET_TASK_STATUS": "COMPLETE"}': UIAction("status", answer="complete"),
    '{"SET_TASK_STATUS": "IMPOSSIBLE"}': UIAction("status", answer="impossible"),
}


@pytest.mark.parametrize(("text", "action"), AITW_CANONICAL.items())
def test_aitw_round_trip(text: str, action: UIAction) -> None:
    assert parse_aitw_action(text) == action
    assert format_aitw_action(action) == text
    assert format_ui_action(parse_ui_action(text, "aitw"), "aitw") == text


def test_aitw_tolerates_prose_single_quotes_and_case() -> None:
    assert parse_aitw_action("Action: {'TAP': {'MARK': 9}}") == UIAction("tap", element_id=9)
    assert parse_aitw_action('```json\n{"swipe": "left"}\n```') == UIAction("swipe", direction="left")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"TAP": 3}', "MARK"),
        ('{"TAP": {"MARK": "3"}}', "MARK"),
        ('{"TAP": {"MARK": -1}}', "non-negative"),
        ('{"SWIPE": "DIAGONAL"}', "UP, DOWN, LEFT, RIGHT"),
        ('{"NAVIGATE": "RECENTS"}', "BACK, HOME"),
        ('{"TYPE": 5}', "string"),
        ('{"SET_TASK_STATUS": "DONE"}', "COMPLETE, IMPOSSIBLE"),
        ('{"CLICK": 3}', "unknown action 'CLICK'"),
        ('{"TAP": {"MARK": 1}, "SWIPE": "UP"}', "exactly one"),
        ("[1, 2]", "exactly one"),
        ("not json", "not a JSON object"),
        ("", "not a JSON object"),
        ("{__import__('os').system('true')}", "not a JSON object"),
    ],
)
def test_aitw_malformed_output_raises_with_the_text(text: str, reason: str) -> None:
    with pytest.raises(ActionParseError, match=reason) as caught:
        parse_aitw_action(text)
    assert caught.value.text == text


def test_som_and_aitw_convert_to_vwa() -> None:
    assert som_to_vwa(parse_som_answer("Coordinate: (0.1, 0.2). Mark: 5.")) == UIAction("click", element_id=5)
    assert format_vwa_action(aitw_to_vwa(parse_aitw_action('{"TAP": {"MARK": 3}}'))) == "click [3]"
    assert aitw_to_vwa(UIAction("navigate_back")) == UIAction("go_back")
    assert aitw_to_vwa(UIAction("status", answer="impossible")) == UIAction("stop", answer="N/A")
    with pytest.raises(ActionParseError, match="no mark"):
        som_to_vwa(parse_som_answer("Coordinate: (0.1, 0.2)."))
    with pytest.raises(ActionParseError, match="no VisualWebArena equivalent"):
        aitw_to_vwa(UIAction("swipe", direction="up"))


def test_actions_are_validated_on_construction() -> None:
    with pytest.raises(ValueError, match="unknown UI action kind"):
        UIAction("jump")
    with pytest.raises(ValueError, match="click needs element_id"):
        UIAction("click")
    with pytest.raises(ValueError, match="does not take text"):
        UIAction("click", element_id=1, text="x")
    with pytest.raises(ValueError, match="has no VisualWebArena form"):
        format_vwa_action(UIAction("swipe", direction="up"))
    with pytest.raises(ValueError, match="has no AITW form"):
        format_aitw_action(UIAction("click", element_id=1))
    with pytest.raises(ValueError, match="unknown UI action grammar"):
        parse_ui_action("click [1]", "xml")
