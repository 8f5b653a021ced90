"""Device shell command lines, built in one place: every argument is one POSIX-quoted word.

adb runs a command line through the device's ``sh`` (mksh, or toybox sh), so a value spliced into the
line unquoted is shell syntax: an app name holding ``; input text X; am force-stop Y`` would run three
commands. ``shell_command`` quotes each argument with ``shlex.quote`` (single quotes, which mksh and toybox
sh read as POSIX does), so ``;``, ``&&``, ``|``, ``$(...)``, backticks, quotes, ``#`` and newlines stay
literal. Values with a known shape (package and activity names, key codes, screen coordinates, durations)
are also checked against that shape before anything is sent, so a malformed one is a typed, counted
failed step with a message the policy's author can act on, not a command the device half-understands.
"""

from __future__ import annotations

import math
import re
import shlex

from envs.android.adb_client import DeviceActionError

# Android package names: two or more dot-separated Java identifiers (ASCII letters, digits, '_').
_PACKAGE = re.compile(r"[A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z][A-Za-z0-9_]*)+")
# Activity class names: a Java class name, relative (".Main") or absolute, inner classes with '$'.
_ACTIVITY = re.compile(r"\.?[A-Za-z_$][A-Za-z0-9_$]*(?:\.[A-Za-z_$][A-Za-z0-9_$]*)*")
_KEYCODE = re.compile(r"KEYCODE_[A-Z0-9_]+|[0-9]{1,3}")
MAX_NAME_LENGTH = 255
MAX_DURATION_MS = 60_000


class InvalidDeviceArgumentError(DeviceActionError, ValueError):
    """A value for a device command that does not have the shape it must have (sent nowhere)."""


def shell_command(*argv: str | int) -> str:
    """The device shell command line that runs ``argv`` as given: each argument one quoted word."""
    if not argv:
        raise InvalidDeviceArgumentError("a device command needs a program name")
    words = [str(argument) for argument in argv]
    for word in words:
        if "\0" in word:
            raise InvalidDeviceArgumentError(
                f"{word[:40]!r}... holds a NUL character, which no device command can receive; remove it"
            )
    return " ".join(shlex.quote(word) for word in words)


def checked_package(package: str) -> str:
    """``package`` when it is an Android package name (``com.example.app``); else InvalidDeviceArgumentError."""
    if not isinstance(package, str) or len(package) > MAX_NAME_LENGTH or not _PACKAGE.fullmatch(package):
        raise InvalidDeviceArgumentError(
            f"{str(package)[:80]!r} is not an Android package name (dot-separated letters, digits and '_', "
            "like com.example.app); name an installed app by its package, or map its name to one in the "
            "environment's `apps` setting"
        )
    return package


def checked_component(component: str) -> str:
    """``package/activity`` (activity relative ``.Main`` or absolute) when both parts have their shape."""
    package, slash, activity = str(component).partition("/")
    if not slash or len(activity) > MAX_NAME_LENGTH or not _ACTIVITY.fullmatch(activity):
        raise InvalidDeviceArgumentError(
            f"{str(component)[:80]!r} is not an activity component; write it as package/.ActivityName or "
            "package/full.class.Name (Java identifiers only)"
        )
    checked_package(package)
    return component


def checked_keycode(keycode: str) -> str:
    """``keycode`` when it is an Android key code (``KEYCODE_BACK`` or a number up to 999)."""
    if not isinstance(keycode, str) or not _KEYCODE.fullmatch(keycode):
        raise InvalidDeviceArgumentError(
            f"{str(keycode)[:80]!r} is not an Android key code; use back, home, enter, a KEYCODE_NAME or its number"
        )
    return keycode


def checked_coordinate(value: float, screen_size: tuple[int, int]) -> int:
    """``value`` rounded to a pixel, when it is a finite number on the screen (either orientation)."""
    longest = max(screen_size) if screen_size and max(screen_size) > 0 else 1_000_000
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidDeviceArgumentError(f"{value!r} is not a screen coordinate; give finite pixel numbers")
    if not 0 <= value <= longest:
        raise InvalidDeviceArgumentError(
            f"{value!r} is off the screen (0..{longest} pixels); give a point on the screen or a mark"
        )
    return round(value)


def checked_duration_ms(duration_ms: int) -> int:
    """A gesture duration in milliseconds, 1 to ``MAX_DURATION_MS``."""
    if isinstance(duration_ms, bool) or not isinstance(duration_ms, int) or not 0 < duration_ms <= MAX_DURATION_MS:
        raise InvalidDeviceArgumentError(
            f"{duration_ms!r} is not a gesture duration; give whole milliseconds from 1 to {MAX_DURATION_MS}"
        )
    return duration_ms
