"""``AndroidDevice``: one phone or emulator through an adb client, with the commands the environment needs,
each bounded by a timeout, and their output read in the formats real devices print.

Every command goes out through ``shell`` / ``exec_out``, which take an argument list and quote it with
``shell_arguments.shell_command``: no value (an app name from a model, typed text) is ever shell syntax.
The observation's reads are batched, fixed command lines joined with ``;``: ``screencap_pair`` (the settle
check's two screencaps) and ``read_hierarchy`` (the dump and the foreground query), one adb round trip each."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from envs.android.adb_client import (
    AdbClient,
    AndroidDeviceError,
    DeviceActionError,
    DeviceLostError,
    DeviceNotFoundError,
    DeviceOfflineError,
    DeviceUnauthorizedError,
    ShellOutput,
    make_client,
)
from envs.android.shell_arguments import (
    checked_component,
    checked_coordinate,
    checked_duration_ms,
    checked_keycode,
    checked_package,
    shell_command,
)
from envs.android.text_input import (
    ADB_KEYBOARD_PACKAGE,
    adb_keyboard_command,
    input_text_commands,
    is_input_text_typable,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SIZE = re.compile(r"(Override|Physical) size:\s*(\d+)x(\d+)")
_DENSITY = re.compile(r"(Override|Physical) density:\s*(\d+)")
_RESUMED = re.compile(
    r"(?:topResumedActivity|mResumedActivity|ResumedActivity)[:=]\s*ActivityRecord\{\S+ \S+ ([^\s/}]+)/([^\s}]+)"
)
_FOCUS = re.compile(r"mCurrentFocus=Window\{\S+ \S+ ([^\s/}]+)/([^\s}]+)\}")
_KEYCODES = {"back": "KEYCODE_BACK", "home": "KEYCODE_HOME", "enter": "KEYCODE_ENTER"}
_ACTIVITIES_HEADER = "ACTIVITY MANAGER ACTIVITIES"  # the first line of `dumpsys activity activities`
_DUMP_COMMAND = ("uiautomator", "dump", "/dev/tty")
_ACTIVITIES_COMMAND = ("dumpsys", "activity", "activities")


def split_pngs(data: bytes) -> list[bytes]:
    """The PNG files written one after another into ``data`` (``screencap -p; screencap -p``), split by
    walking each file's chunks to its IEND; ValueError when ``data`` is not a run of whole PNG files."""
    images, start = [], 0
    while start < len(data):
        if not data.startswith(PNG_SIGNATURE, start):
            raise ValueError(f"no PNG signature at byte {start} ({data[start : start + 80]!r})")
        position, kind = start + len(PNG_SIGNATURE), b""
        while kind != b"IEND":
            if position + 12 > len(data):
                raise ValueError(f"the PNG at byte {start} is cut short")
            length = int.from_bytes(data[position : position + 4], "big")
            kind = data[position + 4 : position + 8]
            position += 12 + length  # length, type, data, CRC
        if position > len(data):
            raise ValueError(f"the PNG at byte {start} is cut short")
        images.append(data[start:position])
        start = position
    return images


def split_dump_and_activities(text: str) -> tuple[str, str] | None:
    """``uiautomator dump /dev/tty; dumpsys activity activities`` output as (the dump, the dumpsys text), or
    None when the boundary cannot be found. The dump ends at the line holding the first ``</hierarchy>`` (view
    text is XML-escaped, so a screen cannot fake it, nor an activity line ahead of it), or, without one, where
    the dumpsys header starts (the dump is then uiautomator's own error message)."""
    end = text.find("</hierarchy>")
    if end >= 0:
        cut = text.find("\n", end)  # after the "UI hierchary dumped to: /dev/tty" uiautomator appends
        cut = len(text) if cut < 0 else cut + 1
    else:
        cut = text.find(_ACTIVITIES_HEADER)
        if cut < 0:
            return None
    return text[:cut], text[cut:]


@dataclass(frozen=True)
class ScreenInfo:
    """The display as the device reports it: physical (portrait) size, density and rotation (0..3)."""

    physical_size: tuple[int, int]
    density: int
    rotation: int = 0

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) as shown, which is what screenshots and ``input`` coordinates use."""
        width, height = self.physical_size
        return (height, width) if self.rotation % 2 else (width, height)


def select_serial(client_kind: str, host: str, port: int, serial: str | None, executable: str = "adb") -> str:
    """The serial to use: ``serial`` when it is attached and ready, or the only device when none is given."""
    listing = make_client(client_kind, host, port, serial or "", executable).devices()
    states = {entry.serial: entry.state for entry in listing}
    if serial is None:
        if not listing:
            raise DeviceNotFoundError(
                f"no Android device is attached to the adb server at {host}:{port}; start an emulator "
                "(`emulator -avd NAME`) or plug in a phone with USB debugging on, then check `adb devices`"
            )
        if len(listing) > 1:
            raise DeviceNotFoundError(
                f"{len(listing)} devices are attached ({', '.join(states)}); pick one with --device SERIAL"
            )
        serial = listing[0].serial
    if serial not in states:
        attached = ", ".join(f"{name} ({state})" for name, state in states.items()) or "none"
        raise DeviceNotFoundError(
            f"device {serial} is not attached to the adb server at {host}:{port} (attached: {attached}); "
            "check the serial with `adb devices`"
        )
    if states[serial] == "unauthorized":
        raise DeviceUnauthorizedError(
            f"device {serial} is unauthorized: unlock it and accept the 'Allow USB debugging?' prompt, then rerun"
        )
    if states[serial] != "device":
        raise DeviceOfflineError(
            f"device {serial} is {states[serial]}: wait for it to boot or reconnect it, then rerun"
        )
    return serial


class AndroidDevice:
    """Commands on one device; after ``connect`` a device that disappears raises DeviceLostError."""

    def __init__(self, client: AdbClient, command_timeout_s: float = 10.0) -> None:
        self.client = client
        self.serial = client.serial
        self.command_timeout_s = command_timeout_s
        self.screen = ScreenInfo((0, 0), 0)

    # -- plumbing ------------------------------------------------------------------------------------

    def shell(self, *argv: str | int, timeout: float | None = None) -> ShellOutput:
        """Run one command (``argv``, each argument passed as one word) in the device shell."""
        command = shell_command(*argv)
        try:
            return self.client.shell(command, timeout or self.command_timeout_s)
        except (DeviceNotFoundError, DeviceOfflineError) as error:
            raise self._lost(error) from None

    def exec_out(self, *argv: str | int, timeout: float | None = None) -> bytes:
        """Run one command (``argv``) and return its raw stdout (binary-safe, for screencaps)."""
        return self._exec_out_line(shell_command(*argv), timeout or self.command_timeout_s)

    def _exec_out_line(self, command_line: str, timeout: float) -> bytes:
        """Raw stdout of a command line built here from ``shell_command`` parts (never from outside values)."""
        try:
            return self.client.exec_out(command_line, timeout)
        except (DeviceNotFoundError, DeviceOfflineError) as error:
            raise self._lost(error) from None

    def _lost(self, error: Exception) -> DeviceLostError:
        return DeviceLostError(f"device {self.serial} went away ({error}); reconnect it and resume the run")

    # -- readiness and screen ------------------------------------------------------------------------

    def wait_until_booted(self, timeout_s: float = 60.0, poll_s: float = 0.5) -> None:
        """Poll ``getprop sys.boot_completed`` until it says 1 (an emulator that is still booting)."""
        deadline = time.monotonic() + timeout_s
        while self.shell("getprop", "sys.boot_completed").stdout.strip() != b"1":
            if time.monotonic() > deadline:
                raise DeviceOfflineError(f"device {self.serial} has not finished booting after {timeout_s:.0f} s")
            time.sleep(poll_s)

    def read_screen(self) -> ScreenInfo:
        """Size and density from ``wm size`` / ``wm density`` (an override wins), rotation from ``settings``."""
        size_text = self.shell("wm", "size").text
        sizes = {kind: (int(width), int(height)) for kind, width, height in _SIZE.findall(size_text)}
        density_text = self.shell("wm", "density").text
        densities = {kind: int(value) for kind, value in _DENSITY.findall(density_text)}
        if not sizes:
            raise AndroidDeviceError(
                f"cannot read the screen size of {self.serial} from `wm size`: {size_text.strip()!r}"
            )
        rotation_text = self.shell("settings", "get", "system", "user_rotation").stdout.strip()
        rotation = int(rotation_text) % 4 if rotation_text.isdigit() else 0
        self.screen = ScreenInfo(
            sizes.get("Override", sizes.get("Physical")),
            densities.get("Override", densities.get("Physical", 0)),
            rotation,
        )
        return self.screen

    def screencap_png(self) -> bytes:
        data = self.exec_out("screencap", "-p")
        if not data.startswith(PNG_SIGNATURE):
            raise AndroidDeviceError(f"screencap on {self.serial} returned no PNG ({data[:80]!r}); is the screen on?")
        return data

    def screencap_pair(self) -> tuple[bytes, bytes]:
        """Two screencaps taken back to back in one adb call: the settle check's "changed, then held" pair
        costs one round trip, not two (on a phone each screencap still takes its 100-400 ms)."""
        line = "; ".join([shell_command("screencap", "-p")] * 2)
        data = self._exec_out_line(line, 2 * self.command_timeout_s)
        try:
            first, second = split_pngs(data)
        except ValueError as error:  # also: not exactly two images
            raise AndroidDeviceError(
                f"screencap on {self.serial} returned no pair of PNGs ({error}); is the screen on?"
            ) from None
        return first, second

    def dump_hierarchy(self) -> str:
        """The ``uiautomator dump`` XML (through /dev/tty; a file and ``cat`` on devices that cannot)."""
        timeout = max(self.command_timeout_s, 20)
        text = self.exec_out(*_DUMP_COMMAND, timeout=timeout).decode("utf-8", "replace")
        return text if _is_dump(text) else self._dump_to_file(timeout)

    def _dump_to_file(self, timeout: float) -> str:
        path = "/sdcard/window_dump.xml"
        dumped = self.shell("uiautomator", "dump", path, timeout=timeout)
        if dumped.returncode != 0:
            return dumped.text
        return self.shell("cat", path, timeout=timeout).text

    def read_hierarchy(self) -> tuple[str, str]:
        """The ``uiautomator dump`` XML and the ``dumpsys activity activities`` text after it, read in one adb
        call (``foreground_from`` reads the second); each is read on its own where the output cannot be split
        or the device cannot dump through /dev/tty."""
        timeout = max(self.command_timeout_s, 20) + self.command_timeout_s
        line = f"{shell_command(*_DUMP_COMMAND)}; {shell_command(*_ACTIVITIES_COMMAND)}"
        parts = split_dump_and_activities(self._exec_out_line(line, timeout).decode("utf-8", "replace"))
        if parts is None:
            return self.dump_hierarchy(), self.shell(*_ACTIVITIES_COMMAND).text
        dump, activities = parts
        return (dump if _is_dump(dump) else self._dump_to_file(timeout)), activities

    def foreground(self) -> tuple[str, str]:
        """(package, activity) in front, from ``dumpsys activity activities`` (else ``dumpsys window``)."""
        return self.foreground_from(self.shell(*_ACTIVITIES_COMMAND).text)

    def foreground_from(self, activities: str) -> tuple[str, str]:
        """(package, activity) in front from ``dumpsys activity activities`` text, else from ``dumpsys window``
        (asked now); ("", "") when neither names one."""
        match = _RESUMED.search(activities)
        if match is None:
            match = _FOCUS.search(self.shell("dumpsys", "window").text)
        if match is None:
            return "", ""
        package, activity = match.groups()
        return package, (package + activity if activity.startswith(".") else activity)

    # -- input ---------------------------------------------------------------------------------------

    def tap(self, x: float, y: float) -> None:
        self._checked("input", "tap", *self._pixels(x, y))

    def swipe(self, start: tuple[float, float], end: tuple[float, float], duration_ms: int = 300) -> None:
        points = (*self._pixels(*start), *self._pixels(*end))
        self._checked("input", "swipe", *points, checked_duration_ms(duration_ms))

    def long_press(self, x: float, y: float, duration_ms: int = 1000) -> None:
        self.swipe((x, y), (x, y), duration_ms)

    def key(self, name: str) -> None:
        self._checked("input", "keyevent", checked_keycode(_KEYCODES.get(name, name)))

    def type_text(self, text: str, unicode_input: str = "adb_keyboard") -> None:
        """Type ``text`` into the focused field (see ``envs.android.text_input`` for what needs ADBKeyBoard)."""
        if is_input_text_typable(text):
            for command in input_text_commands(text):
                self._checked(*command)
            return
        if unicode_input == "adb_keyboard" and self.is_installed(ADB_KEYBOARD_PACKAGE):
            self._checked(*adb_keyboard_command(text))
            return
        raise DeviceActionError(
            f"`input text` cannot type {text!r} (only printable ASCII); install and enable ADBKeyBoard "
            f"({ADB_KEYBOARD_PACKAGE}) on {self.serial} to type other characters, or type ASCII"
        )

    def _pixels(self, x: float, y: float) -> tuple[int, int]:
        return checked_coordinate(x, self.screen.size), checked_coordinate(y, self.screen.size)

    def _checked(self, *argv: str | int) -> ShellOutput:
        result = self.shell(*argv)
        if result.returncode != 0 or b"Exception" in result.stderr:
            message = result.text.strip().splitlines()[:2]
            raise DeviceActionError(
                f"`{shell_command(*argv)[:80]}` failed on {self.serial}: {' '.join(message) or result.returncode}"
            )
        return result

    # -- apps ----------------------------------------------------------------------------------------

    def is_installed(self, package: str) -> bool:
        return self.shell("pm", "path", checked_package(package)).returncode == 0

    def launch_app(self, package: str) -> None:
        """Start ``package``'s launcher activity (as tapping its icon does)."""
        if not self.is_installed(package):
            raise DeviceActionError(f"app {package} is not installed on {self.serial}; install it or open another app")
        result = self.shell("monkey", "-p", package, "-c", "android.intent.category.LAUNCHER", 1)
        if "No activities found" in result.text or "monkey aborted" in result.text:
            raise DeviceActionError(f"app {package} on {self.serial} has no launcher activity to open")

    def start_activity(self, component: str) -> None:
        """``am start -W -n package/activity``; a missing activity or app raises DeviceActionError."""
        component = checked_component(component)
        result = self.shell("am", "start", "-W", "-n", component, timeout=max(self.command_timeout_s, 30))
        if "Error" in result.text:
            line = next(line for line in result.text.splitlines() if "Error" in line)
            raise DeviceActionError(f"cannot start {component} on {self.serial}: {line.strip()}; is the app installed?")

    def force_stop(self, package: str) -> None:
        self.shell("am", "force-stop", checked_package(package))

    def clear_data(self, package: str) -> None:
        result = self.shell("pm", "clear", checked_package(package), timeout=max(self.command_timeout_s, 30))
        if "Success" not in result.text:
            raise DeviceActionError(f"cannot clear the data of {package} on {self.serial}: {result.text.strip()!r}")


def _is_dump(text: str) -> bool:
    """Whether ``uiautomator dump /dev/tty`` answered (a hierarchy, or its ERROR for a secure screen)."""
    return "<hierarchy" in text or "ERROR" in text


def connect_device(
    client_kind: str = "adbutils",
    host: str = "127.0.0.1",
    port: int = 5037,
    serial: str | None = None,
    command_timeout_s: float = 10.0,
    boot_timeout_s: float = 60.0,
    executable: str = "adb",
) -> AndroidDevice:
    """A ready device: attached, authorised, online and booted, its screen read."""
    serial = select_serial(client_kind, host, port, serial, executable)
    device = AndroidDevice(make_client(client_kind, host, port, serial, executable), command_timeout_s)
    device.wait_until_booted(boot_timeout_s)
    device.read_screen()
    return device
