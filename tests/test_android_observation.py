"""Android observations and pure parts: hierarchy -> marks -> listing, text escaping for the device shell
(checked against a real POSIX sh), action parsing in both action spaces, AITW step matching, task checks."""

from __future__ import annotations

import io
import json
import shutil
import subprocess

import pytest
from PIL import Image

from envs.android.actions import DeviceAction, parse_android_action
from envs.android.device import split_dump_and_activities, split_pngs
from envs.android.hierarchy import HierarchyError, actionable_marks, parse_hierarchy, som_listing
from envs.android.shell_arguments import shell_command
from envs.android.simulated_device.device import _unescape_input_text
from envs.android.step_matching import RecordedStep, episode_step_accuracy, steps_match, taps_match
from envs.android.tasks import AndroidTask, TaskFileError, evaluate_checks, load_tasks
from envs.android.text_input import adb_keyboard_command, input_text_commands, is_input_text_typable
from magma.actions import ActionParseError


def _node(bounds: str, cls: str = "android.widget.TextView", children: str = "", **attributes: str) -> str:
    defaults = {"text": "", "resource-id": "", "content-desc": "", "clickable": "false", "checkable": "false"}
    defaults |= {"checked": "false", "scrollable": "false", "focused": "false", "enabled": "true"}
    defaults |= {key.replace("_", "-"): value for key, value in attributes.items()}
    attrs = " ".join(f'{key}="{value}"' for key, value in defaults.items())
    return f'<node {attrs} class="{cls}" package="com.example" bounds="{bounds}">{children}</node>'


# A dump in the real shape: nested layouts, a clickable row whose text is on a child, a switch, a field,
# an off-screen button and a disabled one, then uiautomator's trailing message.
DUMP = (
    "<?xml version='1.0' encoding='UTF-8' standalone='yes' ?><hierarchy rotation=\"0\">"
    + _node(
        "[0,0][1080,2400]",
        "android.widget.FrameLayout",
        _node("[0,0][1080,200]", text="Inbox")
        + _node("[900,40][1060,160]", "android.widget.ImageButton", content_desc="Search", clickable="true")
        + _node(
            "[0,300][1080,500]",
            "android.widget.LinearLayout",
            _node("[40,320][1000,380]", text="Meeting at 5") + _node("[40,400][1000,480]", text="from Ann"),
            clickable="true",
        )
        + _node(
            "[0,520][1080,640]",
            "android.widget.Switch",
            text="Wi-Fi",
            checkable="true",
            checked="true",
            clickable="true",
        )
        + _node("[40,700][1040,800]", "android.widget.EditText", text="", focused="true", clickable="true")
        + _node("[40,2600][1040,2700]", "android.widget.Button", text="Below the screen", clickable="true")
        + _node("[40,900][1040,1000]", "android.widget.Button", text="Disabled", clickable="true", enabled="false"),
    )
    + "</hierarchy>UI hierchary dumped to: /dev/tty\n"
)


def test_hierarchy_to_marks_to_listing():
    nodes, rotation = parse_hierarchy(DUMP)
    assert rotation == 0 and len(nodes) == 10 and nodes[0].label == ""
    row = next(node for node in nodes if node.short_class == "LinearLayout")
    assert row.label == "Meeting at 5 from Ann" and row.text == ""  # a clickable container reads like its row
    marks = actionable_marks(nodes, (1080, 2400))
    # reading order (rows top to bottom); off-screen and disabled nodes get no mark
    assert [(bound.label, bound.node.short_class) for bound in marks] == [
        (1, "ImageButton"),
        (2, "LinearLayout"),
        (3, "Switch"),
        (4, "EditText"),
    ]
    assert marks[1].node.center == (540.0, 400.0)
    assert som_listing(marks).splitlines() == [
        "[1] [ImageButton] [Search]",
        "[2] [LinearLayout] [Meeting at 5 from Ann]",
        "[3] [Switch] [Wi-Fi] [checked]",
        "[4] [EditText] [] [focused]",
    ]
    assert marks[2].node.attribute("checked") == "true" and marks[3].node.editable


@pytest.mark.parametrize(
    "dump", ["ERROR: null root node returned by UiTestAutomationBridge.\n", "", "<hierarchy><node"]
)
def test_failed_dumps_raise_hierarchy_error(dump):
    with pytest.raises(HierarchyError):
        parse_hierarchy(dump)


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_screencap_pair_splits_at_each_png_end():
    first, second = _png((255, 0, 0)), _png((0, 0, 255))
    assert split_pngs(first + second) == [first, second]
    assert split_pngs(first) == [first] and split_pngs(b"") == []
    for broken in (first + second[:-5], first + b"WARNING: linker", b"error: closed"):
        with pytest.raises(ValueError):
            split_pngs(broken)


ACTIVITIES = (
    "ACTIVITY MANAGER ACTIVITIES (dumpsys activity activities)\n"
    "    topResumedActivity=ActivityRecord{8c3f2a1 u0 com.example/.MainActivity t17}\n"
)


def test_the_dump_and_the_activities_split_where_the_dump_ends():
    # a screen whose text imitates a dumpsys line stays in the dump (view text is XML-escaped there)
    spoof = _node("[0,0][10,10]", text="topResumedActivity=ActivityRecord{1 u0 evil/.Fake t1} &lt;/hierarchy&gt;")
    dump = f"<?xml version='1.0' ?><hierarchy rotation=\"0\">{spoof}</hierarchy>UI hierchary dumped to: /dev/tty\n"
    assert split_dump_and_activities(dump + ACTIVITIES) == (dump, ACTIVITIES)
    secure = "ERROR: null root node returned by UiTestAutomationBridge.\n"
    assert split_dump_and_activities(secure + ACTIVITIES) == (secure, ACTIVITIES)
    assert split_dump_and_activities("something else entirely\n") is None


TRICKY = [
    "hello world",
    'it\'s "quoted"',
    "a & b; c | d",
    "100% sure",
    "50%s off",
    "%%s",
    "$HOME `id` *",
    "back\\slash",
]


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")
@pytest.mark.parametrize("text", TRICKY)
def test_input_text_commands_survive_the_shell_and_android_unescaping(text):
    typed = ""
    for command in input_text_commands(text):
        assert command[:2] == ["input", "text"]
        # a real POSIX shell parses the command line as the device's sh would: one argument, unchanged
        words = subprocess.run(
            ["sh", "-c", f"set -- {shell_command(*command[2:])}; printf '%s\\0' \"$@\""],
            capture_output=True,
            check=True,
        ).stdout.split(b"\0")[:-1]
        assert len(words) == 1
        typed += _unescape_input_text(words[0].decode())  # what Android's `input text` types
    assert typed == text


def test_newlines_become_enter_and_unicode_needs_adb_keyboard():
    assert input_text_commands("a\nb") == [
        ["input", "text", "a"],
        ["input", "keyevent", "KEYCODE_ENTER"],
        ["input", "text", "b"],
    ]
    assert not is_input_text_typable("café") and is_input_text_typable("cafe\t")
    with pytest.raises(ValueError, match="ASCII"):
        input_text_commands("日本")
    assert adb_keyboard_command("日本")[-1] == "5pel5pys"  # base64 of the UTF-8 bytes


def test_both_action_spaces_parse_to_device_actions():
    assert parse_android_action('{"TAP": {"MARK": 3}}') == DeviceAction("tap", mark=3)
    assert parse_android_action('I will scroll.\n```{"SWIPE": "UP"}```') == DeviceAction("swipe", direction="up")
    assert parse_android_action('{"NAVIGATE": "HOME"}') == DeviceAction("key", key="home")
    assert parse_android_action('{"SET_TASK_STATUS": "IMPOSSIBLE"}').status == "infeasible"
    assert parse_android_action('{"action_type": "click", "x": 10.4, "y": 20}') == DeviceAction("tap", point=(10, 20))
    # AndroidWorld scrolls name where the view moves: scroll down is a finger swipe up
    assert parse_android_action('{"action_type": "scroll", "direction": "down"}').direction == "up"
    assert parse_android_action("{'action_type': 'input_text', 'text': 'hi', 'index': 2}") == DeviceAction(
        "type", mark=2, text="hi"
    )
    assert parse_android_action('{"action_type": "status", "goal_status": "complete"}').terminal
    for bad in ('{"action_type": "click"}', '{"action_type": "fly"}', '{"TAP": {"MARK": "x"}}', "tap 3", "{}"):
        with pytest.raises(ActionParseError):
            parse_android_action(bad)


def test_aitw_step_matching():
    box = [(0.40, 0.10, 0.05, 0.20)]  # (y, x, height, width): 0.40..0.45 x 0.10..0.30
    tap = RecordedStep("dual_point", (0.42, 0.12), (0.42, 0.12))
    assert steps_match(RecordedStep("dual_point", (0.43, 0.29), (0.43, 0.29)), tap, box)
    # outside the box but inside the box grown by 1.4 (0.7 x each side), and > 0.14 away
    far_in_grown = RecordedStep("dual_point", (0.42, 0.43), (0.42, 0.43))
    assert steps_match(far_in_grown, tap, box) and not steps_match(far_in_grown, tap, [])
    assert taps_match((0.5, 0.5), (0.6, 0.55), []) and not taps_match((0.5, 0.5), (0.7, 0.5), [])
    swipe_up = RecordedStep("dual_point", (0.8, 0.5), (0.2, 0.5))
    assert steps_match(RecordedStep("dual_point", (0.2, 0.5), (0.8, 0.5)), swipe_up)  # same axis, as AITW
    assert not steps_match(RecordedStep("dual_point", (0.5, 0.8), (0.5, 0.2)), swipe_up)
    assert not steps_match(tap, swipe_up)
    typed = RecordedStep("type", text="Hello")
    assert steps_match(RecordedStep("type", text="bye"), typed)
    assert not steps_match(RecordedStep("type", text="bye"), typed, compare_typed_text=True)
    score, matches = episode_step_accuracy([tap, RecordedStep("back")], [tap, RecordedStep("home")], [box, []])
    assert score == 0.5 and matches == [True, False]


def test_task_file_and_checks(tmp_path):
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps([{"task_id": "a", "goal": "g", "app": "com.x", "checks": [{"type": "nope"}]}]))
    with pytest.raises(TaskFileError, match="check 0"):
        load_tasks(path)
    with pytest.raises(TaskFileError, match="does not exist"):
        load_tasks(tmp_path / "missing.json")
    nodes, _ = parse_hierarchy(DUMP)
    task = AndroidTask(
        "t",
        "g",
        "com.example",
        checks=[
            {"type": "text_present", "text": "meeting at 5"},
            {"type": "text_absent", "text": "Outbox"},
            {"type": "node_attribute", "match": {"text": "Wi-Fi"}, "attribute": "checked", "value": "true"},
            {"type": "activity", "activity": ".InboxActivity"},
            {"type": "answer", "value": "5"},
        ],
    )
    assert evaluate_checks(task, nodes, ("com.example", "com.example.InboxActivity"), "at 5") == (True, [])
    passed, notes = evaluate_checks(task, None, ("com.other", "com.other.Main"), "")
    assert not passed and len(notes) == 5
