"""AndroidEnv end to end on the simulated phone, through the real adb server protocol (adbutils, and the
adb binary where installed): every action type with its effect checked, failed steps, secure screens,
device errors and a device that goes away mid-episode."""

from __future__ import annotations

import io
import itertools
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from envs.android.adb_client import (
    AdbServerUnreachableError,
    DeviceLostError,
    DeviceNotFoundError,
    DeviceOfflineError,
    DeviceUnauthorizedError,
)
from envs.android.env import AndroidEnv, AndroidEnvConfig, SettleConfig
from envs.android.simulated_device import SimulatedAdbServer, SimulatedDevice
from envs.android.tasks import AndroidTask, SetupRecipe
from magma.training.launch import free_port

APP = "com.example.simapp"
_serials = itertools.count(5554, 2)


@pytest.fixture(scope="module")
def server():
    with SimulatedAdbServer() as running:
        yield running


def _env(server: SimulatedAdbServer, client: str = "adbutils", **device_options) -> tuple[AndroidEnv, object]:
    device = server.add_device(serial=f"emulator-{next(_serials)}", **device_options)
    config = AndroidEnvConfig(
        serial=device.serial,
        adb_port=server.port,
        client=client,
        settle=SettleConfig(change_timeout_s=0.3, stable_timeout_s=1.0, wait_action_s=0.3),
    )
    return AndroidEnv(config), device


def _task(activity: str = ".MainActivity", **fields) -> AndroidTask:
    setup = SetupRecipe(clear_data=True, activity=activity)
    return AndroidTask("t", "do it", APP, app_name="Sim App", setup=setup, **fields)


def _mark(env: AndroidEnv, label: str) -> int:
    return next(bound.label for bound in env.marks if bound.node.label == label)


def _node(env: AndroidEnv, resource: str):
    return next(node for node in env.nodes if node.resource_id == f"{APP}:id/{resource}")


def test_observation_contract_and_mark_binding(server):
    env, device = _env(server)
    observation, info = env.reset(options={"task": _task()})
    assert set(observation) >= {"image", "screenshot", "som", "text", "activity", "package", "instruction"}
    assert observation["screenshot"].shape == (960, 540, 3) and observation["image"].dtype == np.uint8
    assert not np.array_equal(observation["image"], observation["screenshot"])  # marks are drawn
    assert observation["package"] == APP and observation["activity"] == f"{APP}.MainActivity"
    listing = ["[1] [Button] [Form]", "[2] [Button] [Settings]", "[3] [Button] [Secure]"]
    assert observation["som"].splitlines()[:3] == listing
    assert observation["instruction"] == "do it" and info["task_id"] == "t"
    # the mark's node centre is what gets tapped: mark 2 opens Settings
    observation, *_ = env.step(json.dumps({"TAP": {"MARK": 2}}))
    assert observation["activity"] == f"{APP}.SettingsActivity"
    assert "input tap 270 " in " ".join(device.commands)


def test_every_action_type_has_its_effect(server):
    env, _ = _env(server, adb_keyboard=True)
    env.reset(options={"task": _task()})
    # swipe (AITW) scrolls the list; AndroidWorld scroll the other way scrolls it back
    obs, *_ = env.step('{"SWIPE": "UP"}')
    assert "[Item 1]" not in obs["som"] and "[Item 12]" in obs["som"]
    first_item = _mark(env, "Item 6")
    obs, *_ = env.step(json.dumps({"action_type": "scroll", "direction": "up", "index": _mark(env, "")}))
    assert _mark(env, "Item 2") == first_item  # the list moved back by 4 rows (half its height)
    # long press asks to delete; AndroidWorld click by index confirms
    obs, *_ = env.step(json.dumps({"action_type": "long_press", "index": _mark(env, "Item 2")}))
    assert "[Delete]" in obs["som"]
    obs, *_ = env.step(json.dumps({"action_type": "click", "index": _mark(env, "Delete")}))
    assert "[Item 2]" not in obs["som"] and "[Item 3]" in obs["som"]
    # typing with shell metacharacters, into a field chosen by index, then AITW TYPE into the focused field
    env.step(json.dumps({"TAP": {"MARK": _mark(env, "Form")}}))
    text = 'Ann & Bob\'s "50%s" $x;`y`'
    obs, _, _, _, info = env.step(json.dumps({"action_type": "input_text", "text": text, "index": 1}))
    assert info["action_error"] is None and _node(env, "name_input").text == text
    env.step('{"action_type": "keyboard_enter"}')  # Enter moves to the next field
    obs, _, _, _, info = env.step(json.dumps({"TYPE": "Grüße 日本"}))  # through ADBKeyBoard
    assert info["action_error"] is None and _node(env, "note_input").text == "Grüße 日本"
    # back closes the keyboard focus, then leaves the form; home goes to the launcher; open_app comes back
    env.step('{"NAVIGATE": "BACK"}')
    obs, *_ = env.step('{"action_type": "navigate_back"}')
    assert obs["activity"] == f"{APP}.MainActivity"
    obs, *_ = env.step('{"NAVIGATE": "HOME"}')
    assert obs["package"] == "com.google.android.apps.nexuslauncher"
    obs, *_ = env.step('{"action_type": "open_app", "app_name": "Sim App"}')
    assert obs["activity"] == f"{APP}.MainActivity"
    obs, _, _, _, info = env.step('{"action_type": "wait"}')
    assert info["action_error"] is None and info["steps"] == 13 and info["failed_steps"] == 0
    assert {"action", "settle", "dump", "som", "decode", "foreground"} <= set(info["timings"])
    # an answer ends the episode and is graded
    _, reward, terminated, truncated, info = env.step('{"action_type": "answer", "text": "done"}')
    assert terminated and not truncated and info["success"] is True and reward == 1.0 and info["answer"] == "done"


def test_failed_steps_are_counted_and_the_episode_goes_on(server):
    env, _ = _env(server)  # no ADBKeyBoard
    env.reset(options={"task": _task(activity=".FormActivity", max_steps=6)})
    _, _, _, _, info = env.step('{"TAP": {"MARK": 99}}')
    assert "no mark [99]" in info["action_error"] and info["failed_steps"] == 1
    _, _, _, _, info = env.step("tap the button please")
    assert "cannot parse action" in info["action_error"] and info["failed_steps"] == 2
    env.step('{"TAP": {"MARK": 1}}')
    _, _, _, _, info = env.step('{"TYPE": "naïve"}')
    assert "ADBKeyBoard" in info["action_error"] and _node(env, "name_input").text == ""
    _, _, _, _, info = env.step('{"action_type": "open_app", "app_name": "com.missing.app"}')
    assert "not installed" in info["action_error"] and info["failed_steps"] == 4
    _, reward, terminated, _, info = env.step('{"SET_TASK_STATUS": "IMPOSSIBLE"}')
    assert reward == 0.0 and terminated and info["success"] is False and "infeasible" in info["eval_notes"][0]


def test_secure_screen_and_checks_at_max_steps(server):
    env, _ = _env(server)
    checks = [{"type": "activity", "activity": ".SecureActivity"}, {"type": "text_present", "text": "PIN"}]
    env.reset(options={"task": _task(max_steps=1, checks=checks)})
    obs, _, terminated, truncated, info = env.step(json.dumps({"TAP": {"MARK": 3}}))
    assert obs["activity"] == f"{APP}.SecureActivity" and obs["som"].startswith("(no view hierarchy")
    assert "FLAG_SECURE" in info["observation_error"] and not obs["screenshot"].any()  # black, as screencap gives
    assert truncated and not terminated and info["success"] is False
    assert info["eval_notes"] == ["text_present: no view hierarchy at the end (secure screen?)"]


def test_rotation_swaps_the_screen_and_marks_follow(server):
    env, device = _env(server)
    device.run_shell("settings put system user_rotation 1")
    observation, _ = env.reset(options={"task": _task()})
    assert env.device.screen.size == (960, 540) and observation["screenshot"].shape == (540, 960, 3)
    settings = next(bound for bound in env.marks if bound.node.label == "Settings")
    assert settings.node.bounds[2] > 540  # laid out for the landscape screen
    observation, *_ = env.step(json.dumps({"TAP": {"MARK": settings.label}}))
    assert observation["activity"] == f"{APP}.SettingsActivity"


def test_missing_activity_fails_reset_with_a_clear_message(server):
    env, _ = _env(server)
    with pytest.raises(Exception, match=r"cannot start com\.example\.simapp/\.NopeActivity"):
        env.reset(options={"task": _task(activity=".NopeActivity")})


def test_device_errors_name_the_fix(server):
    _, unauthorized = _env(server, state="unauthorized")
    with pytest.raises(DeviceUnauthorizedError, match="Allow USB debugging"):
        AndroidEnv(serial=unauthorized.serial, adb_port=server.port).connect()
    _, offline = _env(server, state="offline")
    with pytest.raises(DeviceOfflineError, match="offline"):
        AndroidEnv(serial=offline.serial, adb_port=server.port).connect()
    with pytest.raises(DeviceNotFoundError, match="not attached"):
        AndroidEnv(serial="nope", adb_port=server.port).connect()
    with pytest.raises(DeviceNotFoundError, match="devices are attached"):
        AndroidEnv(adb_port=server.port).connect()
    with pytest.raises(AdbServerUnreachableError, match="start-server"):
        AndroidEnv(adb_port=free_port()).connect()
    with SimulatedAdbServer() as empty, pytest.raises(DeviceNotFoundError, match="emulator -avd"):
        AndroidEnv(adb_port=empty.port).connect()


def test_device_going_away_mid_episode(server):
    env, device = _env(server)
    env.reset(options={"task": _task()})
    server.remove_device(device.serial)  # unplugged
    with pytest.raises(DeviceLostError, match="went away"):
        env.step('{"TAP": {"MARK": 1}}')


@pytest.mark.skipif(shutil.which("adb") is None, reason="the adb binary is not installed (apt-get install adb)")
def test_adb_binary_client_drives_the_same_device(server):
    env, device = _env(server, client="adb")
    env.reset(options={"task": _task()})
    env.step(json.dumps({"TAP": {"MARK": _mark(env, "Settings")}}))
    env.step(json.dumps({"action_type": "click", "index": _mark(env, "Dark mode")}))
    assert _node(env, "dark_mode_switch").checked and device.phone.data.dark_mode
    env.step(json.dumps({"TAP": {"MARK": _mark(env, "Sync on Wi-Fi only")}}))
    assert not device.phone.data.wifi_only


class AnimatingDevice(SimulatedDevice):
    """The simulated phone, whose next screencaps show the frames queued in ``animation`` (a transition)."""

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.animation: list[bytes] = []

    def _screen_png(self) -> bytes:
        return self.animation.pop(0) if self.animation else super()._screen_png()


def _frame(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (540, 960), (shade, shade, shade)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_step_is_three_adb_calls_and_the_observation_waits_for_the_screen_to_hold(server):
    device = server.add_device(AnimatingDevice(serial=f"emulator-{next(_serials)}"))
    settle = SettleConfig(change_timeout_s=0.3, stable_timeout_s=5.0)
    env = AndroidEnv(AndroidEnvConfig(serial=device.serial, adb_port=server.port, settle=settle))
    env.reset(options={"task": _task()})
    sent = len(device.commands)
    observation, *_ = env.step(json.dumps({"TAP": {"MARK": _mark(env, "Settings")}}))
    tap, screencaps, hierarchy = device.commands[sent:]  # the action, the settle pair, dump and foreground
    assert tap.startswith("input tap ") and screencaps == "screencap -p; screencap -p"
    assert hierarchy == "uiautomator dump /dev/tty; dumpsys activity activities"
    assert observation["activity"] == f"{APP}.SettingsActivity" and "[Dark mode]" in observation["som"]
    # a transition of three frames: screencaps go on until two in a row are the same, then it is observed
    device.animation = [_frame(shade) for shade in (40, 80, 120)]
    sent = len(device.commands)
    observation, *_ = env.step('{"NAVIGATE": "BACK"}')
    # frames 1-2 (the change, still moving) in one call, then one at a time: 3, 4 (the app) and 5 (holds)
    assert device.commands[sent + 1 : -1] == ["screencap -p; screencap -p"] + ["screencap -p"] * 3
    assert observation["activity"] == f"{APP}.MainActivity" and observation["screenshot"].any()
    assert observation["screenshot"].reshape(-1, 3).std(axis=0).max() > 0  # the app's screen, not a grey frame
    env.close()
