"""Typing text on a device: the ``input text`` commands (argument lists) that type it, and what they cannot type.

The device runs the command line through its ``sh`` (mksh on Android); ``shell_arguments.shell_command``
quotes each argument into one POSIX single-quoted word, so spaces, quotes, ``&``, ``;``, ``|``, ``$``,
backticks, ``*`` and ``\\`` all reach ``input`` unchanged. ``input text`` itself then changes two things:

- ``%s`` becomes a space (Android's old escape for spaces). To type a literal ``%s`` the text is cut between
  ``%`` and ``s`` into two ``input text`` commands; spaces are sent as ``%s`` so that old Android versions,
  which split the argument at spaces, type them too.
- It types only what the virtual keyboard's key map has keys for: printable ASCII. Other characters (``é``,
  ``ß``, emoji, CJK) make it throw. Such text is sent through ADBKeyBoard (``com.android.adbkeyboard``,
  broadcast ``ADB_INPUT_B64`` with the text in base64) when that IME is installed and enabled; otherwise the
  step fails with a message saying so. A newline is sent as the Enter key, a tab as the Tab key.

One action types at most ``MAX_TYPED_TEXT_CHARS`` characters; longer text is a failed step (TypedTextTooLongError)
rather than a command longer than an adb request can carry.
"""

from __future__ import annotations

import base64

from envs.android.adb_client import DeviceActionError

ADB_KEYBOARD_PACKAGE = "com.android.adbkeyboard"
MAX_TYPED_TEXT_CHARS = 2000  # base64 of 2000 four-byte characters, or 2000 quoted %s, stays far under 64 kB
_KEYS = {"\n": "KEYCODE_ENTER", "\t": "KEYCODE_TAB"}


class TypedTextTooLongError(DeviceActionError, ValueError):
    """Text longer than one typing action may carry; a counted failed step."""


def checked_typed_text(text: str) -> str:
    """``text`` if one action may type it (at most ``MAX_TYPED_TEXT_CHARS`` characters), else TypedTextTooLongError."""
    if len(text) > MAX_TYPED_TEXT_CHARS:
        raise TypedTextTooLongError(
            f"the text to type has {len(text)} characters, more than the {MAX_TYPED_TEXT_CHARS} one action types; "
            "type it in several shorter input_text actions"
        )
    return text


def is_input_text_typable(text: str) -> bool:
    """Whether ``input text`` can type every character of ``text`` (printable ASCII, newline, tab)."""
    return all(32 <= ord(character) < 127 or character in _KEYS for character in text)


def _input_text_chunks(text: str) -> list[str]:
    """``text`` cut so that no chunk contains ``%s`` (a literal ``%`` then ``s`` goes in two commands)."""
    chunks, start = [], 0
    for index in range(len(text) - 1):
        if text[index] == "%" and text[index + 1] == "s":
            chunks.append(text[start : index + 1])
            start = index + 1
    chunks.append(text[start:])
    return [chunk for chunk in chunks if chunk]


def input_text_commands(text: str) -> list[list[str]]:
    """The commands (argument lists) that type ``text`` (printable ASCII, newlines, tabs) with ``input text``
    and ``input keyevent``; TypedTextTooLongError beyond ``MAX_TYPED_TEXT_CHARS``."""
    checked_typed_text(text)
    if not is_input_text_typable(text):
        raise ValueError(f"input text cannot type {text!r}: only printable ASCII; use adb_keyboard_command")
    commands: list[list[str]] = []
    piece = ""
    for character in [*text, None]:
        if character is None or character in _KEYS:
            for chunk in _input_text_chunks(piece):
                commands.append(["input", "text", chunk.replace(" ", "%s")])
            if character is not None:
                commands.append(["input", "keyevent", _KEYS[character]])
            piece = ""
        else:
            piece += character
    return commands


def adb_keyboard_command(text: str) -> list[str]:
    """The broadcast (an argument list) that makes ADBKeyBoard type ``text`` (any Unicode, at most
    ``MAX_TYPED_TEXT_CHARS`` characters)."""
    encoded = base64.b64encode(checked_typed_text(text).encode("utf-8")).decode("ascii")
    return ["am", "broadcast", "-a", "ADB_INPUT_B64", "--es", "msg", encoded]
