"""The simulated phone's ``sh``: a command line read as the device's mksh reads it, so that a command an
environment sends unquoted does on the simulated phone what it would do on a real one.

POSIX quoting (``'...'`` literal, ``"..."`` with ``$``/backtick expansion and ``\\`` escapes, ``\\`` outside
quotes), ``#`` comments, the separators ``;``, newline, ``&&``, ``||``, ``|`` and ``&`` (a pipeline or a
background job runs its commands one after the other; stdin is not simulated), command substitution
(``$(...)`` and backticks, run by the same shell, unquoted results split into words), ``$NAME`` /
``${NAME}`` from a small environment, and the redirections ``>``, ``>>``, ``2>`` and ``<``.
Globbing and aliases are not simulated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

ENVIRONMENT = {"HOME": "/", "PATH": "/product/bin:/apex/com.android.runtime/bin:/system/bin", "USER": "shell"}
_SEPARATORS = ("&&", "||", ";", "|", "&")
_REDIRECTIONS = (">>", ">", "<")


class ShellSyntaxError(ValueError):
    """A command line the shell cannot parse (an unterminated quote or substitution)."""


@dataclass
class Word:
    """One word before expansion: literal text and command substitutions, each marked quoted or not."""

    parts: list[tuple[str, str, bool]] = field(default_factory=list)  # ("text" | "command", value, quoted)

    def add(self, kind: str, value: str, quoted: bool) -> None:
        self.parts.append((kind, value, quoted))


@dataclass
class Command:
    """One simple command: its words, its redirections (operator, fd, target word) and what follows it."""

    words: list[Word] = field(default_factory=list)
    redirections: list[tuple[str, int, Word]] = field(default_factory=list)
    separator: str = ";"


def _closing_parenthesis(line: str, index: int) -> int:
    """The index of the ``)`` that closes the ``$(`` whose body starts at ``index``."""
    depth, quote = 1, ""
    while index < len(line):
        character = line[index]
        if quote == "'":
            quote = "" if character == "'" else quote
        elif character == "\\":
            index += 1
        elif quote == '"':
            quote = "" if character == '"' else quote
        elif character in "'\"":
            quote = character
        elif character == "(":
            depth += 1
        elif character == ")":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    raise ShellSyntaxError("unterminated $( command substitution")


def _closing_backtick(line: str, index: int) -> int:
    while index < len(line):
        if line[index] == "\\":
            index += 2
            continue
        if line[index] == "`":
            return index
        index += 1
    raise ShellSyntaxError("unterminated ` command substitution")


def _variable(line: str, index: int) -> tuple[str, int]:
    """The value of ``$NAME`` or ``${NAME}`` at ``line[index]`` (just after ``$``), and where it ends."""
    if line.startswith("{", index):
        end = line.find("}", index)
        if end < 0:
            raise ShellSyntaxError("unterminated ${")
        return ENVIRONMENT.get(line[index + 1 : end], ""), end + 1
    end = index
    while end < len(line) and (line[end].isalnum() or line[end] == "_"):
        end += 1
    if end == index:
        return "$", index
    return ENVIRONMENT.get(line[index:end], ""), end


def parse(line: str) -> list[Command]:
    """The simple commands of ``line`` with the separator after each."""
    commands, command, word = [], Command(), None
    pending_redirection: tuple[str, int] | None = None

    def end_word() -> None:
        nonlocal word, pending_redirection
        if word is None:
            return
        if pending_redirection is not None:
            command.redirections.append((*pending_redirection, word))
            pending_redirection = None
        else:
            command.words.append(word)
        word = None

    index = 0
    while index < len(line):
        character = line[index]
        if character in " \t":
            end_word()
            index += 1
        elif character == "#" and word is None:
            index = line.find("\n", index) if "\n" in line[index:] else len(line)
        elif character == "\n" or line.startswith(_SEPARATORS, index):
            end_word()
            separator = ";" if character == "\n" else next(op for op in _SEPARATORS if line.startswith(op, index))
            if pending_redirection is not None:
                raise ShellSyntaxError(f"a redirection needs a target before {separator!r}")
            command.separator = separator
            commands.append(command)
            command = Command()
            index += len(separator) if character != "\n" else 1
        elif line.startswith(_REDIRECTIONS, index):
            operator = next(op for op in _REDIRECTIONS if line.startswith(op, index))
            fd = 0 if operator == "<" else 1
            if word is not None and all(kind == "text" and not quoted for kind, _, quoted in word.parts):
                text = "".join(value for _, value, _ in word.parts)
                if text.isdigit():
                    fd, word = int(text), None
            end_word()
            pending_redirection = (operator, fd)
            index += len(operator)
        else:
            word = word or Word()
            index = _word_piece(line, index, word)
    end_word()
    if pending_redirection is not None:
        raise ShellSyntaxError("a redirection needs a target")
    if command.words or command.redirections:
        commands.append(command)
    return commands


def _word_piece(line: str, index: int, word: Word) -> int:
    """Read one quoted string, escape, expansion or plain character into ``word``; returns the next index."""
    character = line[index]
    if character == "'":
        end = line.find("'", index + 1)
        if end < 0:
            raise ShellSyntaxError("unterminated quoted string")
        word.add("text", line[index + 1 : end], True)
        return end + 1
    if character == '"':
        index += 1
        text = ""
        while index < len(line) and line[index] != '"':
            if line[index] == "\\" and index + 1 < len(line) and line[index + 1] in '$`"\\\n':
                text += "" if line[index + 1] == "\n" else line[index + 1]
                index += 2
            elif line[index] in "$`":
                word.add("text", text, True)
                text = ""
                index = _expansion(line, index, word, quoted=True)
            else:
                text += line[index]
                index += 1
        if index >= len(line):
            raise ShellSyntaxError("unterminated quoted string")
        word.add("text", text, True)
        return index + 1
    if character == "\\":
        if index + 1 < len(line) and line[index + 1] != "\n":
            word.add("text", line[index + 1], True)
        return index + 2
    if character in "$`":
        return _expansion(line, index, word, quoted=False)
    word.add("text", character, False)
    return index + 1


def _expansion(line: str, index: int, word: Word, quoted: bool) -> int:
    """Read ``$(...)``, a backtick substitution or a variable at ``line[index]`` into ``word``."""
    if line[index] == "`":
        end = _closing_backtick(line, index + 1)
        word.add("command", line[index + 1 : end], quoted)
        return end + 1
    if line.startswith("$(", index):
        end = _closing_parenthesis(line, index + 2)
        word.add("command", line[index + 2 : end], quoted)
        return end + 1
    value, end = _variable(line, index + 1)
    word.add("text" if value == "$" else "variable", value, quoted)
    return end


def expand(word: Word, substitute: Callable[[str], str]) -> list[str]:
    """The fields of ``word``: substitutions run through ``substitute`` (a command line -> its stdout);
    unquoted substitution and variable results are split at whitespace, as sh does."""
    fields: list[str] = []
    current, started = "", False
    for kind, value, quoted in word.parts:
        text = substitute(value).rstrip("\n") if kind == "command" else value
        if kind == "text" or quoted:
            current += text
            started = True
            continue
        pieces = text.split()
        if not pieces:
            continue
        if text[:1].isspace() and started:
            fields.append(current)
            current = ""
        current += pieces[0]
        for piece in pieces[1:]:
            fields.append(current)
            current = piece
        started = True
        if text[-1:].isspace():
            fields.append(current)
            current, started = "", False
    if started:
        fields.append(current)
    return fields
