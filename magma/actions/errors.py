"""Typed errors of the action codecs, so callers can count bad model output instead of crashing."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from data_tools.errors import UserFacingError

_MAX_SHOWN_CHARS = 200


def _shorten(text: str, limit: int = _MAX_SHOWN_CHARS) -> str:
    """`text` cut to `limit` characters, with a marker saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more chars]"


class ActionParseError(UserFacingError, ValueError):
    """Model output that is not a valid action in the expected grammar or token range.

    `text` is the offending output (for token ids, their printed list and `token_ids` the ids);
    `reason` says what was wrong with it.
    """

    def __init__(self, text: str, reason: str, *, token_ids: Sequence[int] | None = None) -> None:
        self.text = text
        self.reason = reason
        self.token_ids = None if token_ids is None else tuple(int(i) for i in token_ids)
        super().__init__(text, reason)

    def __str__(self) -> str:
        return f"cannot parse action: {self.reason}; model output: {_shorten(self.text)!r}"


class ActionStatisticsError(UserFacingError, KeyError, ValueError):
    """Missing or invalid action normalisation statistics.

    A KeyError (a statistics key or dataset key is missing) and a ValueError (values are invalid),
    so callers catching either see it. `key` names what is missing or wrong, `available` lists the
    keys that do exist, `fix` says how to repair it.
    """

    def __init__(
        self,
        reason: str,
        *,
        key: str | None = None,
        available: Iterable[str] = (),
        fix: str | None = None,
    ) -> None:
        self.reason = reason
        self.key = key
        self.available = tuple(available)
        self.fix = fix
        super().__init__(reason)

    def __str__(self) -> str:
        # KeyError.__str__ would print repr(reason) with quotes; say it plainly instead.
        message = self.reason
        if self.available:
            message += f" (available: {', '.join(repr(k) for k in self.available)})"
        if self.fix:
            message += f". Fix: {self.fix}"
        return message
