"""Latent actions (LAPA codes) <-> token ids.

A latent action is `num_codes` indices into a codebook of `codebook_size` entries, one
quantiser output per step. Code c is written as token id `first_token_id + c`; the ids are
either newly added tokens or, like the robot action bins, the last ids of the base vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from magma.actions.token_block import group_steps, validated_token_ids


class LatentActionCodec:
    """Latent codes of shape (..., num_codes) <-> token ids `first_token_id + code`."""

    def __init__(self, num_codes: int, codebook_size: int, first_token_id: int) -> None:
        if num_codes < 1 or codebook_size < 1:
            raise ValueError(f"num_codes and codebook_size must be positive, got {num_codes}, {codebook_size}")
        if first_token_id < 0:
            raise ValueError(f"first_token_id must be non-negative, got {first_token_id}")
        self.num_codes = num_codes
        self.codebook_size = codebook_size
        self.first_token_id = first_token_id

    @classmethod
    def reusing_base_vocab(cls, num_codes: int, codebook_size: int, base_vocab_size: int) -> LatentActionCodec:
        """A codec whose ids are the last `codebook_size` ids of the base vocabulary (no new tokens)."""
        if base_vocab_size <= codebook_size:
            raise ValueError(f"base_vocab_size ({base_vocab_size}) must exceed codebook_size ({codebook_size})")
        return cls(num_codes, codebook_size, first_token_id=base_vocab_size - codebook_size)

    @property
    def token_range(self) -> tuple[int, int]:
        """First and last latent token id, inclusive."""
        return self.first_token_id, self.first_token_id + self.codebook_size - 1

    def is_action_token(self, token_id: int) -> bool:
        first, last = self.token_range
        return first <= int(token_id) <= last

    def token_strings(self) -> list[str]:
        """Names of the latent tokens, `<latent_0>` ... `<latent_{V-1}>`, in id order."""
        return [f"<latent_{code}>" for code in range(self.codebook_size)]

    def encode(self, codes: Sequence[int] | np.ndarray) -> np.ndarray:
        """Codes of shape (..., num_codes) -> token ids of the same shape."""
        codes = np.asarray(codes)
        if codes.ndim == 0 or codes.shape[-1] != self.num_codes or not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"codes must be integers of shape (..., {self.num_codes}), got {codes.shape}")
        if np.any((codes < 0) | (codes >= self.codebook_size)):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got {codes.tolist()}")
        return (codes + self.first_token_id).astype(np.int64)

    def decode(self, token_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Token ids (..., n) -> codes; n == num_codes gives (..., k), a multiple gives (..., n/k, k)."""
        ids = validated_token_ids(token_ids, self.num_codes, self.token_range, "latent")
        return group_steps((ids - self.first_token_id).astype(np.int64), self.num_codes)
