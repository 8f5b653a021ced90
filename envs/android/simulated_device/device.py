"""One simulated phone behind the adb server: its properties and the shell commands it answers.

The shell parses a command line as the device's ``sh`` does (``shell``: POSIX quoting, ``;``, newline, ``&&``,
``||``, ``|``, ``&``, ``$(...)``, redirections) and runs
the programs an agent uses, printing what real devices print: ``input tap|swipe|text|keyevent``,
``screencap [-p]``, ``uiautomator dump [FILE|/dev/tty]``, ``wm size|density``, ``getprop``,
``dumpsys window|activity``, ``am start|force-stop|broadcast``, ``pm clear|list packages|path``,
``monkey -p PKG -c android.intent.category.LAUNCHER 1``, ``settings get|put``, ``cat``, ``rm``, ``echo``.
``input text`` follows Android's rule: ``%s`` becomes a space, and a character the virtual keyboard map has
no key for (anything outside printable ASCII) aborts with the NullPointerException real devices throw.
"""

from __future__ import annotations

import base64
import threading
from dataclasses import dataclass

from envs.android.simulated_device.rendering import hierarchy_xml, render_png
from envs.android.simulated_device.screens import (
    ACTIVITIES,
    ADB_KEYBOARD_PACKAGE,
    APP_PACKAGE,
    LAUNCHER_ACTIVITY,
    LAUNCHER_PACKAGE,
    Phone,
)
from envs.android.simulated_device.shell import Command, ShellSyntaxError, expand, parse

KEYCODES = {
    "3": "KEYCODE_HOME",
    "4": "KEYCODE_BACK",
    "66": "KEYCODE_ENTER",
    "67": "KEYCODE_DEL",
    "187": "KEYCODE_APP_SWITCH",
}
_NPE = (
    "Exception occurred while executing 'text':\njava.lang.NullPointerException: Attempt to get length of null array\n"
    "\tat com.android.server.input.InputShellCommand.sendText(InputShellCommand.java:356)\n"
)


def _unescape_input_text(argument: str) -> str:
    """What ``input text ARG`` types: Android's InputShellCommand turns each ``%s`` into a space, scanning
    left to right (a ``%`` that follows an escaping ``%`` can start the next escape)."""
    characters, index, escape = list(argument), 0, False
    while index < len(characters):
        if escape:
            escape = False
            if characters[index] == "s":
                characters[index] = " "
                del characters[index - 1]
                index -= 1
        if characters[index] == "%":
            escape = True
        index += 1
    return "".join(characters)


@dataclass
class ShellResult:
    returncode: int
    stdout: bytes = b""
    stderr: bytes = b""


class SimulatedDevice:
    """A phone as adb sees it: ``state`` is "device", "unauthorized" or "offline" and may change at any time."""

    features = "shell_v2,cmd,stat_v2,ls_v2,fixed_push_mkdir,apex,abb,abb_exec"

    def __init__(
        self,
        serial: str = "emulator-5554",
        width: int = 540,
        height: int = 960,
        density: int = 240,
        state: str = "device",
        model: str = "SimPhone",
        adb_keyboard: bool = False,
        booted: bool = True,
    ) -> None:
        self.serial = serial
        self.state = state
        self.model = model
        self.density = density
        self.booted = booted
        self.transport_id = 1
        self.phone = Phone(width, height, adb_keyboard)
        self.files: dict[str, bytes] = {}
        self.commands: list[str] = []  # every shell command line received, for inspection
        self.executed_substitutions: list[str] = []  # every $(...) / backtick the shell ran
        self.executed: list[list[str]] = []  # every program the shell ran, as its argv after expansion
        self._lock = threading.RLock()
        self._png_cache: tuple[int, bytes] | None = None

    def device_details(self) -> str:
        return f"product:sdk_gphone64_x86_64 model:{self.model} device:emu64xa transport_id:{self.transport_id}"

    # -- shell ---------------------------------------------------------------------------------------

    def run_shell(self, command_line: str) -> ShellResult:
        """Run a command line as the device's ``sh`` would (see ``shell``): unquoted separators and
        substitutions take effect, quoted ones stay literal."""
        with self._lock:
            self.commands.append(command_line)
            try:
                commands = parse(command_line)
            except ShellSyntaxError as error:
                return ShellResult(2, stderr=f"/system/bin/sh: syntax error: {error}\n".encode())
            stdout, stderr, returncode, skip = b"", b"", 0, False
            for command in commands:
                if not skip:
                    result = self._run_command(command)
                    stdout, stderr, returncode = stdout + result.stdout, stderr + result.stderr, result.returncode
                skip = (command.separator == "&&" and returncode != 0) or (
                    command.separator == "||" and returncode == 0
                )
            return ShellResult(returncode, stdout, stderr)

    def _substitute(self, command_line: str) -> str:
        self.executed_substitutions.append(command_line)
        return self.run_shell(command_line).stdout.decode("utf-8", "replace")

    def _run_command(self, command: Command) -> ShellResult:
        """One simple command: expand its words, run it, apply its redirections."""
        argv = [field for word in command.words for field in expand(word, self._substitute)]
        result = self._run(argv) if argv else ShellResult(0)
        for operator, fd, target_word in command.redirections:
            target = " ".join(expand(target_word, self._substitute))
            if operator == "<":
                continue  # stdin is not simulated
            data = result.stdout if fd == 1 else result.stderr
            if target != "/dev/null":
                self.files[target] = (self.files.get(target, b"") if operator == ">>" else b"") + data
            result = ShellResult(
                result.returncode, b"" if fd == 1 else result.stdout, b"" if fd == 2 else result.stderr
            )
        return result

    def _run(self, argv: list[str]) -> ShellResult:
        self.executed.append(list(argv))
        program, args = argv[0], argv[1:]
        handler = getattr(self, f"_cmd_{program}", None)
        if handler is None:
            return ShellResult(127, stderr=f"/system/bin/sh: {program}: inaccessible or not found\n".encode())
        if not self.booted and program not in ("getprop", "echo"):
            return ShellResult(1, stderr=b"Error: system not ready\n")
        return handler(args)

    @staticmethod
    def _ok(text: str = "") -> ShellResult:
        return ShellResult(0, text.encode())

    def _cmd_echo(self, args: list[str]) -> ShellResult:
        return self._ok(" ".join(args) + "\n")

    def _cmd_id(self, args: list[str]) -> ShellResult:
        return self._ok("uid=2000(shell) gid=2000(shell) groups=2000(shell) context=u:r:shell:s0\n")

    def _cmd_getprop(self, args: list[str]) -> ShellResult:
        props = {
            "sys.boot_completed": "1" if self.booted else "",
            "ro.product.model": self.model,
            "ro.build.version.sdk": "34",
            "ro.build.version.release": "14",
            "ro.serialno": self.serial,
        }
        if args:
            return self._ok(props.get(args[0], "") + "\n")
        return self._ok("".join(f"[{key}]: [{value}]\n" for key, value in props.items()))

    def _cmd_wm(self, args: list[str]) -> ShellResult:
        if args[:1] == ["size"]:
            width, height = self.phone.physical
            return self._ok(f"Physical size: {width}x{height}\n")
        if args[:1] == ["density"]:
            return self._ok(f"Physical density: {self.density}\n")
        return ShellResult(255, stderr=b"Unknown command\n")

    def _cmd_settings(self, args: list[str]) -> ShellResult:
        if args[:3] == ["get", "system", "user_rotation"]:
            return self._ok(f"{self.phone.rotation}\n")
        if args[:3] == ["put", "system", "user_rotation"] and len(args) == 4:
            self.phone.rotation = int(args[3]) % 4
            self.phone.version += 1
            return self._ok()
        if args[:1] == ["get"]:
            return self._ok("null\n")
        return self._ok() if args[:1] == ["put"] else ShellResult(255, stderr=b"Invalid command\n")

    def _cmd_input(self, args: list[str]) -> ShellResult:
        if args and args[0] in ("touchscreen", "keyboard"):
            args = args[1:]
        verb, rest = (args[0], args[1:]) if args else ("", [])
        phone = self.phone
        try:
            if verb == "tap":
                phone.tap(float(rest[0]), float(rest[1]))
            elif verb == "swipe":
                duration = int(rest[4]) if len(rest) > 4 else 300
                phone.swipe(*(float(value) for value in rest[:4]), duration)
            elif verb == "keyevent":
                for code in rest:
                    phone.key(KEYCODES.get(code, code if code.startswith("KEYCODE_") else f"KEYCODE_{code}"))
            elif verb == "text":
                text = _unescape_input_text(rest[0])
                if any(not (32 <= ord(character) < 127) for character in text):
                    return ShellResult(255, stderr=_NPE.encode())
                phone.type_text(text)
            else:
                return ShellResult(1, stderr=f"Error: Unknown command: {verb}\n".encode())
        except (IndexError, ValueError):
            return ShellResult(1, stderr=f"Error: bad arguments for input {verb}: {rest}\n".encode())
        return self._ok()

    def _screen_png(self) -> bytes:
        phone = self.phone
        if self._png_cache is None or self._png_cache[0] != phone.version:
            png = render_png(phone.layers(), phone.size, dark=phone.data.dark_mode, black=phone.secure)
            self._png_cache = (phone.version, png)
        return self._png_cache[1]

    def _cmd_screencap(self, args: list[str]) -> ShellResult:
        files = [arg for arg in args if not arg.startswith("-")]
        png = self._screen_png()
        if files:
            self.files[files[0]] = png
            return self._ok()
        return ShellResult(0, png)

    def _cmd_uiautomator(self, args: list[str]) -> ShellResult:
        if args[:1] != ["dump"]:
            return ShellResult(1, stderr=b"Usage: uiautomator <subcommand> [options]\n")
        target = next((arg for arg in args[1:] if not arg.startswith("--")), "/sdcard/window_dump.xml")
        if self.phone.secure:
            return self._ok("ERROR: null root node returned by UiTestAutomationBridge.\n")
        xml = hierarchy_xml(self.phone.layout(), self.phone.rotation)
        message = f"UI hierchary dumped to: {target}\n"  # sic: uiautomator's own spelling
        if target == "/dev/tty":
            return self._ok(xml + message)
        self.files[target] = xml.encode()
        return self._ok(message)

    def _cmd_cat(self, args: list[str]) -> ShellResult:
        if not args or args[0] not in self.files:
            return ShellResult(1, stderr=f"cat: {args[0] if args else ''}: No such file or directory\n".encode())
        return ShellResult(0, self.files[args[0]])

    def _cmd_rm(self, args: list[str]) -> ShellResult:
        for path in args:
            self.files.pop(path, None)
        return self._ok()

    def _cmd_dumpsys(self, args: list[str]) -> ShellResult:
        package, activity = self.phone.activity
        record = f"ActivityRecord{{8c3f2a1 u0 {package}/{activity} t{17 if package == APP_PACKAGE else 1}}}"
        if args[:1] == ["window"]:
            return self._ok(
                "WINDOW MANAGER WINDOWS (dumpsys window windows)\n"
                f"  mCurrentFocus=Window{{4f5e2a1 u0 {package}/{activity}}}\n"
                f"  mFocusedApp={record}\n"
                f"  mTopFullscreenOpaqueWindowState=Window{{4f5e2a1 u0 {package}/{activity}}}\n"
            )
        if args[:1] == ["activity"]:
            return self._ok(
                "ACTIVITY MANAGER ACTIVITIES (dumpsys activity activities)\n"
                "Display #0 (activities from top to bottom):\n"
                f"  * Task{{a12b34c #17 type=standard A=10123:{package}}}\n"
                f"    topResumedActivity={record}\n"
                f"  ResumedActivity: {record}\n"
            )
        return self._ok()

    def _component(self, component: str) -> tuple[str, str]:
        package, _, activity = component.partition("/")
        return package, (package + activity if activity.startswith(".") else activity)

    def _cmd_am(self, args: list[str]) -> ShellResult:
        verb = args[0] if args else ""
        if verb == "force-stop" and len(args) > 1:
            if args[1] == APP_PACKAGE:
                self.phone.force_stop()
            return self._ok()
        if verb in ("start", "start-activity"):
            options = args[1:]
            if "-S" in options and APP_PACKAGE in " ".join(options):
                self.phone.force_stop()
            component = options[options.index("-n") + 1] if "-n" in options else ""
            package, activity = self._component(component)
            screens = {APP_PACKAGE + name: key for key, name in ACTIVITIES.items()}
            if package == LAUNCHER_PACKAGE:
                self.phone.key("KEYCODE_HOME")
            elif package not in self.phone.installed or activity not in screens:
                return self._ok(
                    f"Starting: Intent {{ cmp={component} }}\nError type 3\n"
                    f"Error: Activity class {{{package}/{activity}}} does not exist.\n"
                )
            else:
                self.phone.launch(screens[activity])
            return self._ok(f"Starting: Intent {{ cmp={component} }}\n")
        if verb == "broadcast" and "ADB_INPUT_B64" in args and ADB_KEYBOARD_PACKAGE in self.phone.installed:
            message = args[args.index("msg") + 1] if "msg" in args else ""
            self.phone.type_text(base64.b64decode(message).decode("utf-8"))
            return self._ok(
                "Broadcasting: Intent { act=ADB_INPUT_B64 flg=0x400000 (has extras) }\nBroadcast completed: result=0\n"
            )
        if verb == "broadcast":
            return self._ok("Broadcasting: Intent { flg=0x400000 (has extras) }\nBroadcast completed: result=0\n")
        return ShellResult(255, stderr=f"Error: unknown command '{verb}'\n".encode())

    def _cmd_pm(self, args: list[str]) -> ShellResult:
        verb = args[0] if args else ""
        if verb == "clear" and len(args) > 1:
            if args[-1] not in self.phone.installed:
                return ShellResult(255, b"Failed\n")
            if args[-1] == APP_PACKAGE:
                self.phone.clear_data()
            return self._ok("Success\n")
        if verb == "list" and args[1:2] == ["packages"]:
            wanted = args[2] if len(args) > 2 else ""
            return self._ok("".join(f"package:{name}\n" for name in sorted(self.phone.installed) if wanted in name))
        if verb == "path" and len(args) > 1:
            if args[1] not in self.phone.installed:
                return ShellResult(1)
            return self._ok(f"package:/data/app/~~x7Qw==/{args[1]}-1/base.apk\n")
        return ShellResult(255, stderr=f"Unknown command: {verb}\n".encode())

    def _cmd_monkey(self, args: list[str]) -> ShellResult:
        package = args[args.index("-p") + 1] if "-p" in args else ""
        if package not in self.phone.installed or package == ADB_KEYBOARD_PACKAGE:
            return ShellResult(252, b"  bash arg: -p\n", b"** No activities found to run, monkey aborted.\n")
        if package == APP_PACKAGE:
            self.phone.launch()
        else:
            self.phone.key("KEYCODE_HOME")
        return self._ok("  bash arg: -p\n  bash arg: 1\nEvents injected: 1\n## Network stats: elapsed time=12ms\n")


__all__ = ["LAUNCHER_ACTIVITY", "ShellResult", "SimulatedDevice"]
