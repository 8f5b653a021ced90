"""``UnicodeText``: a gymnasium ``Text`` space over every Unicode character, for the web and Android environments.

Web pages, app screens, task intents and model replies hold any Unicode (accents, CJK, emoji, newlines), so
gymnasium's default alphanumeric charset rejects nearly every real observation and action. Passing the whole
of Unicode as ``charset=`` works but costs seconds and ~200 MB per space (``Text`` builds a set, a tuple and
an index of all 1,112,064 characters), so this subclass keeps the same contract with the charset implicit:
membership is a code-point test, ``character_index`` is arithmetic, and the character tuple is built only if a
gymnasium utility asks for it. ``bounded_listing`` keeps the environments' listings within a declared bound.
"""

from __future__ import annotations

from collections.abc import Iterator, Set
from functools import cached_property
from typing import Any

import numpy as np
from gymnasium.spaces import Space, Text
from numpy.typing import NDArray

from data_tools.errors import UserFacingError

SURROGATES = range(0xD800, 0xE000)  # not characters: a str holding one cannot be encoded, sent or stored
UNICODE_CHARACTER_COUNT = 0x110000 - len(SURROGATES)


class UnicodeCharacters(Set):
    """Every Unicode scalar value (U+0000..U+10FFFF without the surrogates), as a read-only set of 1-char strings."""

    def __contains__(self, character: object) -> bool:
        return isinstance(character, str) and len(character) == 1 and ord(character) not in SURROGATES

    def __len__(self) -> int:
        return UNICODE_CHARACTER_COUNT

    def __iter__(self) -> Iterator[str]:
        yield from map(chr, range(SURROGATES.start))
        yield from map(chr, range(SURROGATES.stop, 0x110000))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, UnicodeCharacters):
            return True
        return Set.__eq__(self, other)  # another set: equal only with the same 1,112,064 members

    def __hash__(self) -> int:
        return hash(UnicodeCharacters)


ALL_UNICODE = UnicodeCharacters()


class UnicodeText(Text):
    """Strings of ``min_length``..``max_length`` Unicode characters (any scalar value; no lone surrogates).

    A ``gymnasium.spaces.Text`` in every respect (``isinstance``, ``contains``, ``sample``, flattening), with
    the charset held implicitly; ``min_length`` defaults to 0 because an empty listing or URL is a real value.
    """

    def __init__(self, max_length: int, *, min_length: int = 0, seed: int | np.random.Generator | None = None) -> None:
        if not isinstance(max_length, int | np.integer) or not isinstance(min_length, int | np.integer):
            raise TypeError(f"UnicodeText lengths must be integers, got {min_length!r}..{max_length!r}")
        if not 0 <= min_length <= max_length:
            raise ValueError(f"UnicodeText needs 0 <= min_length <= max_length, got {min_length}..{max_length}")
        self.min_length = int(min_length)
        self.max_length = int(max_length)
        # Text.__init__ would materialise the charset (see the module docstring); everything it sets is
        # provided below from ALL_UNICODE instead.
        Space.__init__(self, dtype=str, seed=seed)

    @property
    def character_set(self) -> frozenset[str]:
        return ALL_UNICODE  # type: ignore[return-value]  (a Set with frozenset's read-only interface)

    @cached_property
    def character_list(self) -> tuple[str, ...]:
        return tuple(ALL_UNICODE)

    def character_index(self, char: str) -> np.int32:
        if char not in ALL_UNICODE:
            raise KeyError(char)
        point = ord(char)
        return np.int32(point if point < SURROGATES.start else point - len(SURROGATES))

    @property
    def characters(self) -> str:
        return "".join(ALL_UNICODE)

    def contains(self, x: Any) -> bool:
        if not isinstance(x, str) or not self.min_length <= len(x) <= self.max_length:
            return False
        if x.isascii():
            return True
        try:
            x.encode("utf-8")  # fails exactly on a lone surrogate
        except UnicodeEncodeError:
            return False
        return True

    def sample(
        self,
        mask: tuple[int | None, NDArray[np.int8] | None] | None = None,
        probability: tuple[int | None, NDArray[np.float64] | None] | None = None,
    ) -> str:
        """A random string, its characters uniform over all of Unicode; a charset mask or probability (an
        array over 1,112,064 characters) goes through ``Text.sample`` unchanged."""
        length: int | None = None
        for given in (mask, probability):
            if given is not None:
                length, weights = given
                if weights is not None:
                    return super().sample(mask=mask, probability=probability)
        if length is None:
            length = int(self.np_random.integers(self.min_length, self.max_length + 1))
        elif not self.min_length <= length <= self.max_length:
            raise ValueError(f"sample length {length} is outside {self.min_length}..{self.max_length}")
        indices = self.np_random.integers(0, UNICODE_CHARACTER_COUNT, size=length)
        points = np.where(indices >= SURROGATES.start, indices + len(SURROGATES), indices)
        return "".join(map(chr, points.tolist()))

    def __repr__(self) -> str:
        return f"UnicodeText({self.min_length}, {self.max_length})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, UnicodeText):
            return (self.min_length, self.max_length) == (other.min_length, other.max_length)
        return super().__eq__(other)

    def __hash__(self) -> int:
        return hash((UnicodeText, self.min_length, self.max_length))


def bounded_listing(listing: str, max_length: int) -> str:
    """``listing`` unchanged when it fits ``max_length``; otherwise cut after its last whole line that fits,
    with a final line saying how many lines were left out, so an observation never leaves its space."""
    if len(listing) <= max_length:
        return listing
    lines = listing.split("\n")
    kept: list[str] = []
    used = 0
    for line in lines:
        note = f"[...] {len(lines) - len(kept)} more lines not listed (the listing is cut at {max_length} characters)"
        if used + len(line) + 1 + len(note) > max_length:
            return "\n".join([*kept, note])[:max_length]
        kept.append(line)
        used += len(line) + 1
    return listing[:max_length]  # not reached: the whole listing would have fitted


def refuse_long_instruction(task_id: str, field: str, text: str, limit: int, where: str) -> None:
    """UserFacingError when a task's instruction (``field``: intent, goal) is longer than the observation
    space allows; ``where`` names the file to shorten it in."""
    if len(text) > limit:
        raise UserFacingError(
            f"task {task_id}'s {field} is {len(text)} characters; the observation space allows {limit}; "
            f"shorten the {field} in the {where}"
        )


def action_space_problem(action: Any, limit: int, expected: str, what_counts: str) -> str:
    """Why ``action`` lies outside a ``UnicodeText(limit)`` action space, in words for ``info["action_error"]``
    (``expected`` describes a good action, ``what_counts`` the part of a reply the env reads)."""
    if not isinstance(action, str):
        return f"the action must be a str ({expected}), got {type(action).__name__}"
    if len(action) > limit:
        return (
            f"the action is {len(action)} characters, over the {limit} the action space allows; "
            f"send a shorter reply ({what_counts} is what counts)"
        )
    return "the action holds a lone surrogate code point, which is not text; send valid Unicode"
