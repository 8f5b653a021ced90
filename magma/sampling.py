"""Next-token selection for generation: greedy, temperature and nucleus (top-p) sampling, and the
mask of the token ids a completion may contain."""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import LogitsProcessor

from magma.configuration_magma import MagmaConfig

GREEDY_BELOW_TEMPERATURE = 1e-5  # smaller temperatures decode greedily (float32 cannot divide by them safely)


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero the tail of each distribution beyond cumulative mass ``top_p`` (always keeps the top token)."""
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    beyond = mass_before >= top_p
    beyond[..., 0] = False  # the most likely token stays, whatever top_p is
    sorted_probs = sorted_probs.masked_fill(beyond, 0.0)
    filtered = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return filtered / filtered.sum(dim=-1, keepdim=True)


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(batch, vocab) logits -> (batch,) token ids; ``temperature`` below 1e-5 (0 too) is greedy."""
    if not math.isfinite(temperature) or not 0.0 < top_p <= 1.0:
        raise ValueError(f"temperature must be finite and top_p in (0, 1]; got {temperature} and {top_p}")
    if temperature < GREEDY_BELOW_TEMPERATURE:  # the limit of sampling as temperature -> 0 is the argmax
        return logits.argmax(dim=-1)
    # shifted so the largest logit is 0 before dividing: a tiny temperature sends the others to -inf, never
    # to +inf (inf - inf would make the probabilities NaN); at any temperature the top token keeps mass
    logits = logits.float()
    shifted = logits - logits.max(dim=-1, keepdim=True).values
    probs = torch.softmax(torch.nan_to_num(shifted, nan=float("-inf")) / temperature, dim=-1)
    probs = top_p_filter(probs, top_p)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


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
