"""Rollout sampling: completions drawn at a temperature, with the log-probability of every drawn token
under the distribution it was drawn from (what importance sampling and the clipped ratio need).

The decoding loop is ``MagmaForCausalLM.generate``'s (prefill, then KV-cache steps with positions from
the attention mask); it differs only in keeping each token's log-prob and each row's length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from magma.model import MagmaForCausalLM, left_align, positions_from_mask
from magma.processor import ModelInputs
from magma.sampling import allowed_tokens, mask_logits, top_p_filter


@dataclass
class Completion:
    """One sampled completion: its token ids (the stop token included when one was drawn) and the
    log-prob of each under the sampling distribution."""

    token_ids: list[int]
    log_probs: list[float]
    stopped: bool  # ended with a stop token (False: cut at max_new_tokens)


def sampling_distribution(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """(B, V) logits -> the probabilities tokens are drawn from (temperature, then nucleus filter)."""
    probs = torch.softmax(logits.float() / max(temperature, 1e-6), dim=-1)
    return top_p_filter(probs, top_p)


@torch.no_grad()
def sample_completions(
    model: MagmaForCausalLM,
    inputs: ModelInputs,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    stop_token_ids: list[int] | None = None,
    generator: torch.Generator | None = None,
    allowed: torch.Tensor | None = None,
) -> list[Completion]:
    """One completion per row of ``inputs`` (left- or right-padded prompts, images allowed).

    ``temperature <= 0`` decodes greedily (log-probs are then those of the temperature-1 softmax).
    ``stop_token_ids`` defaults to the model's end-of-sequence ids; ``[]`` never stops early.
    ``allowed`` (V,) bool restricts the tokens drawn (default :func:`allowed_tokens`).
    """
    device = model.device
    input_ids, attention_mask = left_align(inputs.input_ids.to(device), inputs.attention_mask.to(device))
    pixel_values = None if inputs.pixel_values is None else inputs.pixel_values.to(device, model.dtype)
    image_grids = None if inputs.image_grids is None else inputs.image_grids.to(device)
    stops = torch.tensor(
        model.config.tokens.eos_token_ids if stop_token_ids is None else stop_token_ids, dtype=torch.long, device=device
    )
    batch = input_ids.shape[0]
    embeds = model.embed(input_ids, pixel_values, image_grids)
    position_ids = positions_from_mask(attention_mask)
    cache = DynamicCache(config=model.language_model.config)
    out = model(
        inputs_embeds=embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    last_position = position_ids[:, -1:]
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)
    tokens, log_probs = [], []
    allowed = allowed_tokens(model.config) if allowed is None else allowed
    for step in range(max_new_tokens):
        logits = mask_logits(out.logits[:, -1], allowed)
        if temperature > 0:
            probs = sampling_distribution(logits, temperature, top_p)
            token = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
        else:
            probs = torch.softmax(logits.float(), dim=-1)
            token = logits.argmax(dim=-1)
        tokens.append(token)
        log_probs.append(probs.gather(-1, token[:, None]).squeeze(-1).clamp(min=1e-30).log())
        lengths = torch.where(finished, lengths, lengths + 1)
        finished |= torch.isin(token, stops)
        if bool(finished.all()) or step + 1 == max_new_tokens:
            break
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
        last_position = last_position + 1
        out = model(
            inputs_embeds=model.language_model.get_input_embeddings()(token[:, None]),
            attention_mask=attention_mask,
            position_ids=last_position,
            cache=out.cache,
            use_cache=True,
            logits_to_keep=1,
        )
    if not tokens:
        return [Completion([], [], False) for _ in range(batch)]
    token_matrix = torch.stack(tokens, dim=1).tolist()
    log_prob_matrix = torch.stack(log_probs, dim=1).tolist()
    completions = []
    for row in range(batch):
        length = int(lengths[row])
        ids = token_matrix[row][:length]
        completions.append(Completion(ids, log_prob_matrix[row][:length], bool(ids) and ids[-1] in stops.tolist()))
    return completions
