"""Sampling settings for transformers' ``generate`` (greedy below a tiny temperature, else temperature and
nucleus sampling), and the mask of the token ids a completion may contain, applied as a logits processor."""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import LogitsProcessor

from magma.configuration_magma import MagmaConfig

GREEDY_BELOW_TEMPERATURE = 1e-5  # smaller temperatures decode greedily (float32 cannot divide by them safely)


def allowed_tokens(config: MagmaConfig, token_range: tuple[int, int] | None = None) -> torch.Tensor:
    """(V,) bool: the ids a completion may contain. Never padding or the image tokens (an ``<image>``
    token would need image features the model cannot produce); with ``token_range`` (first, last),
    only those ids (a robot action is made of action-bin tokens only). Sampling and training apply
    the same mask, so the log-probs of both are of one distribution."""
    allowed = torch.ones(config.text.vocab_size, dtype=torch.bool)
    if token_range is not None:
        allowed[:] = False
        allowed[token_range[0] : token_range[1] + 1] = True
    tokens = config.tokens
    structural = [tokens.pad_token_id, tokens.image_token_id, tokens.image_start_token_id, tokens.image_end_token_id]
    allowed[structural] = False
    return allowed


def mask_logits(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """``logits`` (..., V) as float, -inf where ``allowed`` is False."""
    return logits.float().masked_fill(~allowed.to(logits.device), float("-inf"))


class AllowedTokensLogitsProcessor(LogitsProcessor):
    """Constrained decoding for transformers' ``generate``: every token outside ``allowed`` ((V,) bool, from
    :func:`allowed_tokens`) gets -inf, before temperature and top-p, as the RL sampler masks them."""

    def __init__(self, allowed: torch.Tensor) -> None:
        self.allowed = allowed

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return mask_logits(scores, self.allowed).to(scores.dtype)


def sampling_settings(temperature: float = 0.0, top_p: float = 1.0) -> dict[str, Any]:
    """``generate`` keyword arguments for our sampling settings: greedy below a temperature of 1e-5 (as
    :func:`sample_next_token`), otherwise sampling at ``temperature`` with nucleus ``top_p``."""
    if not math.isfinite(temperature) or not 0.0 < top_p <= 1.0:
        raise ValueError(f"temperature must be finite and top_p in (0, 1]; got {temperature} and {top_p}")
    if temperature < GREEDY_BELOW_TEMPERATURE:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {"do_sample": True, "temperature": float(temperature), "top_p": float(top_p), "top_k": None}
