"""Checks shared by the codecs that decode a block of generated token ids (robot bins, latent codes)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from magma.actions.errors import ActionParseError


def validated_token_ids(
    token_ids: Sequence[int] | np.ndarray, group_size: int, token_range: tuple[int, int], what: str
) -> np.ndarray:
    """Token ids (..., n) as an integer array; ActionParseError unless n is a multiple of
    ``group_size`` and every id lies in ``token_range`` (inclusive)."""
    ids = np.asarray(token_ids)
    text = str(ids.tolist())
    if ids.ndim == 0 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise ActionParseError(text, "expected a non-empty sequence of integer token ids")
    flat_ids = ids.reshape(-1).tolist()
    n = ids.shape[-1]
    if n % group_size:
        raise ActionParseError(
            text, f"{n} {what} tokens is not a multiple of {group_size} tokens per step", token_ids=flat_ids
        )
    first, last = token_range
    outside = ids[(ids < first) | (ids > last)]
    if outside.size:
        raise ActionParseError(
            text,
            f"token ids {outside[:8].tolist()} are outside the {what} token range [{first}, {last}]",
            token_ids=flat_ids,
        )
    return ids


def group_steps(values: np.ndarray, group_size: int) -> np.ndarray:
    """(..., n) -> (..., n / group_size, group_size) when n holds several steps; unchanged for one step."""
    n = values.shape[-1]
    return values if n == group_size else values.reshape(*values.shape[:-1], n // group_size, group_size)
