"""Hostile model output and task files against the Android environment, on the simulated phone through the
real adb server protocol. The simulated phone's shell reads command lines as a device's sh does (unquoted
``;``, ``&&``, ``|``, ``$(...)`` and backticks take effect), so an unquoted argument would really inject."""

from __future__ import annotations

import itertools
import json

import pytest

from envs.android.adb_client import AdbRequestTooLongError
from envs.android.device import AndroidDevice
from envs.android.env import AndroidEnv, AndroidEnvConfig, SettleConfig
from envs.android.shell_arguments import InvalidDeviceArgumentError, shell_command
from envs.android.simulated_device import SimulatedAdbServer
from envs.android.simulated_device.device import SimulatedDevice
from envs.android.tasks import AndroidTask, SetupRecipe, TaskFileError, load_tasks
from envs.android.text_input import MAX_TYPED_TEXT_CHARS, TypedTextTooLongError

APP = "com.example.simapp"
INJECTION = f"; input text INJECTED; am force-stop {APP}"
_serials = itertools.count(5800, 2)


@pytest.fixture(scope="module")
def server():
    with SimulatedAdbServer() as running:
        yield running


def _env(server: SimulatedAdbServer, **config) -> tuple[AndroidEnv, SimulatedDevice]:
    device = server.add_device(serial=f"emulator-{next(_serials)}", adb_keyboard=True)
    settle = SettleConfig(change_timeout_s=0.3, stable_timeout_s=1.0, wait_action_s=0.3)
    return AndroidEnv(AndroidEnvConfig(serial=device.serial, adb_port=server.port, settle=settle, **config)), device


def _task(activity: str = ".MainActivity") -> AndroidTask:
    return AndroidTask("t", "do it", APP, app_name="Sim App", setup=SetupRecipe(activity=activity))


def test_the_simulated_shell_runs_unquoted_separators_and_substitutions():
    """The premise of the tests below: on the simulated phone, as on a device, unquoted syntax runs."""
    device = SimulatedDevice()
    device.run_shell(f"pm path Sim{INJECTION}")
    assert ["input", "text", "INJECTED"] in device.executed and ["am", "force-stop", APP] in device.executed
    device.run_shell("echo $(id) `getprop ro.serialno`")
    assert device.executed_substitutions == ["id", "getprop ro.serialno"]
    quoted = SimulatedDevice()
    quoted.run_shell(shell_command("pm", "path", f"Sim{INJECTION} $(id) `id` && id | id"))
    assert quoted.executed == [["pm", "path", f"Sim{INJECTION} $(id) `id` && id | id"]]
    assert quoted.executed_substitutions == []


@pytest.mark.parametrize(
    "app_name",
    [
        f"Sim App{INJECTION}",
        f"{APP}{INJECTION}",
        f"{APP} && input text INJECTED",
        f"{APP}|input text INJECTED",
        f"{APP}\ninput text INJECTED",
        f"$(input text INJECTED){APP}",
        f"`input text INJECTED`{APP}",
        f"{APP} -c x; input text INJECTED #",
    ],
)
def test_an_injected_app_name_runs_nothing_and_is_a_counted_failed_step(server, app_name):
    env, device = _env(server)
    env.reset(options={"task": _task(".FormActivity")})
    env.step(json.dumps({"action_type": "click", "index": 1}))  # focus a text field, where injected text would land
    before = len(device.executed)
    observation, _, terminated, _, info = env.step(json.dumps({"action_type": "open_app", "app_name": app_name}))
    after = device.executed[before:]
    assert not any(argv[:2] == ["input", "text"] for argv in after), after
    assert not any(argv[:2] == ["am", "force-stop"] for argv in after), after
    assert not any(argv[:1] in (["pm"], ["monkey"]) for argv in after), "the bad name must not reach the device"
    assert device.executed_substitutions == []
    assert "not an Android package name" in info["action_error"] and info["failed_steps"] == 1
    assert not terminated and observation["activity"] == f"{APP}.FormActivity"  # nothing was stopped
    assert "INJECTED" not in observation["som"]


def test_an_injected_name_in_the_apps_mapping_is_refused_too(server):
    env, device = _env(server, apps={"Notes": f"{APP}{INJECTION}"})
    env.reset(options={"task": _task()})
    _, _, _, _, info = env.step(json.dumps({"action_type": "open_app", "app_name": "Notes"}))
    assert "not an Android package name" in info["action_error"]
    assert not any("INJECTED" in " ".join(argv) for argv in device.executed)


TRICKY_TEXTS = [
    "$(input text INJECTED)",
    "`input text INJECTED`",
    "a; input text INJECTED",
    "a && input text INJECTED || b | c & d",
    "it's \"quoted\" 'twice'",
    "# not a comment > /sdcard/x < y 2>&1",
    "${HOME} $HOME \\$HOME \\",
    "%s 100% %%s",
]


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_text_with_shell_syntax_is_typed_literally(server, text):
    env, device = _env(server)
    env.reset(options={"task": _task(".FormActivity")})
    _, _, _, _, info = env.step(json.dumps({"action_type": "input_text", "text": text, "index": 1}))
    assert info["action_error"] is None
    name = next(node for node in env.nodes if node.resource_id == f"{APP}:id/name_input")
    assert name.text == text
    assert device.executed_substitutions == [] and "/sdcard/x" not in device.files
    assert {argv[0] for argv in device.executed} <= {
        "getprop",
        "wm",
        "settings",
        "am",
        "screencap",
        "uiautomator",
        "dumpsys",
        "input",
        "pm",
        "monkey",
    }
    assert not any(argv[:3] == ["input", "text", "INJECTED"] for argv in device.executed)


def test_a_newline_in_typed_text_is_the_enter_key_not_a_second_command(server):
    env, device = _env(server)
    env.reset(options={"task": _task(".FormActivity")})
    _, _, _, _, info = env.step(json.dumps({"action_type": "input_text", "text": "a\ninput text INJECTED", "index": 1}))
    assert info["action_error"] is None
    assert ["input", "keyevent", "KEYCODE_ENTER"] in device.executed
    assert ["input", "text", "input%stext%sINJECTED"] in device.executed  # typed as text into the next field
    assert not any(argv[:3] == ["input", "text", "INJECTED"] for argv in device.executed)


@pytest.mark.parametrize(
    "reply",
    [
        '{"action_type": "click", "x": NaN, "y": 10}',
        '{"action_type": "click", "x": Infinity, "y": 10}',
        '{"action_type": "click", "x": 1e308, "y": 10}',
        '{"action_type": "click", "x": -5, "y": 10}',
        '{"action_type": "long_press", "x": 100000, "y": 10}',
        '{"action_type": "click", "x": ' + "9" * 5000 + ', "y": 10}',
        "[" * 100_000,
        '{"action_type": "open_app", "app_name": "' + "a." * 2000 + 'b"}',
        '{"action_type": "open_app", "app_name": "com.example.\\u0000simapp"}',
    ],
)
def test_malformed_points_and_replies_are_counted_failed_steps(server, reply):
    env, device = _env(server)
    env.reset(options={"task": _task()})
    before = len(device.executed)
    _, _, terminated, _, info = env.step(reply)
    assert info["action_error"] and info["failed_steps"] == 1 and not terminated
    assert not any(argv[:1] in (["input"], ["monkey"], ["pm"]) for argv in device.executed[before:])


def test_device_methods_check_the_shape_of_every_value(server):
    env, _ = _env(server)
    env.reset(options={"task": _task()})
    device: AndroidDevice = env.device
    for call in (
        lambda: device.key("BACK; reboot"),
        lambda: device.start_activity(f"{APP}/.Main; reboot"),
        lambda: device.start_activity(APP),
        lambda: device.force_stop("x"),
        lambda: device.clear_data(f"{APP} {APP}"),
        lambda: device.swipe((1, 1), (2, 2), duration_ms=-1),
        lambda: device.tap(float("nan"), 1),
        lambda: device.shell("echo", "a\0b"),
    ):
        with pytest.raises(InvalidDeviceArgumentError):
            call()
    device.key("KEYCODE_BACK")
    device.key("4")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("app", f"{APP}; reboot", "not an Android package name"),
        ("activity", ".Main; reboot", "not an activity component"),
        ("activity", "../Main", "not an activity component"),
        ("max_steps", -3, "max_steps"),
        ("setup", ["force_stop"], "'setup' must be an object"),
    ],
)
def test_task_files_with_hostile_names_are_refused_at_load(tmp_path, field, value, message):
    task = {"task_id": "t", "goal": "g", "app": APP, "setup": {"activity": ".MainActivity"}}
    if field == "activity":
        task["setup"]["activity"] = value
    else:
        task[field] = value
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps([task]))
    with pytest.raises(TaskFileError, match=message):
        load_tasks(path)


def test_a_deeply_nested_task_file_is_a_clear_error(tmp_path):
    path = tmp_path / "tasks.json"
    path.write_text("[" * 100_000)
    with pytest.raises(TaskFileError, match="not valid JSON"):
        load_tasks(path)


@pytest.mark.parametrize("text", ["a" * 200_000, "é" * 200_000, "a b\n" * 20_000])
def test_text_longer_than_one_action_types_is_a_counted_failed_step(server, text):
    env, device = _env(server)
    env.reset(options={"task": _task(".FormActivity")})
    before = len(device.executed)
    reply = json.dumps({"action_type": "input_text", "text": text, "index": 1})
    _, _, terminated, _, info = env.step(reply)
    assert info["action_error"] and str(MAX_TYPED_TEXT_CHARS) in info["action_error"]
    assert info["failed_steps"] == 1 and not terminated and len(info["action_error"]) < 1000
    assert not any(argv[:1] in (["input"], ["am"]) for argv in device.executed[before:])
    _, _, _, _, info = env.step(json.dumps({"action_type": "input_text", "text": "x y" * 600, "index": 1}))
    assert info["action_error"] is None  # the environment goes on, and text under the bound is typed


def test_device_methods_refuse_text_and_requests_over_the_adb_limits(server):
    env, device = _env(server)
    env.reset(options={"task": _task(".FormActivity")})
    with pytest.raises(TypedTextTooLongError):
        env.device.type_text("b" * (MAX_TYPED_TEXT_CHARS + 1))
    before = len(device.executed)
    with pytest.raises(AdbRequestTooLongError, match="65535"):
        env.device.shell("echo", "c" * 70_000)  # would wrap adb's 4-hex-digit length prefix
    assert device.executed[before:] == []
    assert env.device.shell("echo", "ok").returncode == 0  # the connection is still usable
