"""JSON Lines files read one line at a time, with bounded memory, as corpus jobs read annotation files.

Lines are split at ``\\n`` only (bytes, so a file with bad UTF-8 or ``\\r`` in a value lists the same lines
that are later read), and a line's number is 1-based, as jobs name inputs (``file.jsonl:12``). Reading is
bounded against hostile files: the file is scanned in chunks (one 10 GB line does not have to fit in
memory to be listed), a line longer than ``MAX_JSON_LINE_BYTES`` is refused unread, and a line nested more
deeply than the JSON decoder can follow is a ``JsonLineError`` like any other malformed line, never a
``RecursionError`` that would end the job.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from data_tools.errors import UserFacingError

MAX_JSON_LINE_BYTES = 16 * 1024 * 1024  # an annotation with an inline view hierarchy is well under 1 MB
_CHUNK_BYTES = 4 * 1024 * 1024
_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[list(b" \t\r\n\f\v")] = True


class JsonLineError(UserFacingError, ValueError):
    """A line of a JSON Lines file that cannot be read; ``reason`` keys a job's failure counts."""

    def __init__(self, message: str, reason: str = "malformed_json") -> None:
        super().__init__(message)
        self.reason = reason


@lru_cache(maxsize=8)
def _index(path: str, modified_ns: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Start offsets of every line and whether each holds anything but whitespace (keyed by mtime, size)."""
    starts, has_content = [np.zeros(1, dtype=np.int64)], []
    content_in_current_line, offset = False, 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            data = np.frombuffer(chunk, dtype=np.uint8)
            newlines = np.flatnonzero(data == 10)
            content = np.cumsum(~_WHITESPACE[data], dtype=np.int64)
            # content of each line that ends in this chunk: content up to its newline, minus before its start
            ends = content[newlines] if len(newlines) else np.zeros(0, dtype=np.int64)
            before = np.concatenate(([0], ends[:-1]))
            ended = (ends - before) > 0
            if len(ended):
                ended[0] |= content_in_current_line
                content_in_current_line = bool(content[-1] - ends[-1] > 0)
            else:
                content_in_current_line |= bool(content[-1] > 0)
            has_content.append(ended)
            starts.append(newlines.astype(np.int64) + offset + 1)
            offset += len(chunk)
    all_starts = np.concatenate(starts)
    if all_starts[-1] == offset:  # the file ends with a newline (or is empty): no line starts there
        all_starts = all_starts[:-1]
    else:
        has_content.append(np.array([content_in_current_line]))
    return all_starts, np.concatenate(has_content) if has_content else np.zeros(0, dtype=bool)


def line_index(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(start offset of each line, whether it is non-blank) for ``path``, cached while the file is unchanged."""
    status = Path(path).stat()
    return _index(str(path), status.st_mtime_ns, status.st_size)


def non_blank_line_numbers(path: str | Path) -> list[int]:
    """The 1-based numbers of the lines of ``path`` that hold anything but whitespace."""
    _, has_content = line_index(path)
    return [int(number) + 1 for number in np.flatnonzero(has_content)]


def read_json_line(path: str | Path, number: int, max_bytes: int = MAX_JSON_LINE_BYTES) -> Any:
    """The JSON value on line ``number`` (1-based) of ``path``; JsonLineError when it is missing, too long,
    not UTF-8, not JSON or nested too deeply. OSError when the file cannot be read."""
    starts, _ = line_index(path)
    if not 1 <= number <= len(starts):
        raise JsonLineError(
            f"'{path}' has no line {number} (it has {len(starts)}); list the file again", "missing_line"
        )
    with open(path, "rb") as handle:
        handle.seek(int(starts[number - 1]))
        data = handle.readline(max_bytes + 1)
    if len(data.rstrip(b"\r\n")) > max_bytes:
        raise JsonLineError(
            f"{path}:{number} is longer than {max_bytes // (1024 * 1024)} MB; split it or leave it out",
            "line_too_long",
        )
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise JsonLineError(f"{path}:{number} is not UTF-8 ({error}); fix that line") from None
    except RecursionError:
        raise JsonLineError(f"{path}:{number} is nested too deeply to read as JSON; fix that line") from None
    except ValueError as error:  # JSONDecodeError, or an integer longer than Python reads
        raise JsonLineError(f"{path}:{number} is not valid JSON ({error}); fix that line") from None
