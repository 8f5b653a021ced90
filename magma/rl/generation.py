"""Rollout sampling: completions drawn at a temperature, with the log-probability of every drawn token
under the distribution it was drawn from (what importance sampling and the clipped ratio need).

The decoding is ``MagmaForCausalLM.generate`` itself (transformers' generate: prefill, KV-cache steps,
stop tokens); the sampling distribution is built by logits processors we pass (allowed tokens, then
temperature and top-p), and a last processor, :class:`DrawnTokenLogProbs`, keeps the log-prob of the
token each step draws, so no (steps x batch x vocab) scores are kept.

Rows that share a prompt (a GRPO group's completions) are prefilled once: the distinct prompts, but for
their last token, run in one forward pass, their keys and values are repeated for the rows that share
them, and ``generate`` continues from that cache (:func:`shared_prompt_cache`). TRL's rollout, like a
plain ``generate`` with repeated rows, prefills every row.

With one generator per row (``row_generators``), a row's draws depend on its own generator and logits
only, never on the other rows of the batch: a step's token is drawn by an exponential race
(:class:`PerRowSampler`), an exact draw from the softmax. Rollouts use it so that an episode samples the
same actions whether it runs in one batch with every other episode of the step or on a rollout worker
that holds only its own group.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessor, TemperatureLogitsWarper, TopPLogitsWarper

from magma.model import MagmaForCausalLM, left_align
from magma.processor import ModelInputs
from magma.sampling import AllowedTokensLogitsProcessor, allowed_tokens

MIN_LOG_PROB = math.log(1e-30)  # a floor, so a log-prob is always finite
MIN_TEMPERATURE = 1e-6  # sampling and scoring divide by at least this: logits stay finite at any temperature


def sampling_temperature(temperature: float) -> float:
    """The temperature the logits are divided by, for drawing and for scoring alike (> 0 only)."""
    return max(float(temperature), MIN_TEMPERATURE)


class DrawnTokenLogProbs(LogitsProcessor):
    """The last logits processor of a rollout: it leaves the scores as they are and keeps, step by step,
    the log-prob (under those final scores) of the token the step then draws. The drawn token is known
    only at the next call (the last column of ``input_ids``) or, for the last step, from the returned
    sequences (:meth:`finish`)."""

    def __init__(self) -> None:
        self.pending: torch.Tensor | None = None
        self.log_probs: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.settle(input_ids[:, -1])
        self.pending = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def settle(self, drawn: torch.Tensor) -> None:
        if self.pending is not None:
            self.log_probs.append(self.pending.gather(-1, drawn[:, None]).squeeze(-1).clamp(min=MIN_LOG_PROB))
            self.pending = None

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        """(batch, steps) log-probs of the drawn tokens."""
        self.settle(sequences[:, -1])
        return torch.stack(self.log_probs, dim=1)


class PerRowSampler(LogitsProcessor):
    """After every other processor: adds to each row's scores ``-log E`` with ``E ~ Exp(1)`` drawn from
    that row's own generator, so the argmax that greedy decoding then takes is a draw from the row's
    softmax (argmax of ``log p - log E`` is the exponential race of ``p``). Finished rows draw too: a row's
    stream never depends on how long the other rows run, within one call."""

    def __init__(self, generators: list[torch.Generator]) -> None:
        self.generators = generators

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        vocab = scores.shape[-1]
        noise = torch.stack(
            [
                torch.empty(vocab, device=scores.device, dtype=torch.float32).exponential_(generator=generator)
                for generator in self.generators
            ]
        )
        return scores.float() - noise.clamp(min=torch.finfo(torch.float32).tiny).log()


class InverseCdfSampler(LogitsProcessor):
    """After every other processor: draws each row's token from the softmax of its scores by inverse
    transform sampling (one uniform per row from ``generator``; None: torch's global generator) and leaves
    only that token's score finite, so that greedy decoding takes it. An exact draw from the softmax, as
    ``torch.multinomial``'s, at a tenth of its cost on CPU (which draws an exponential for every entry of
    the vocabulary: 1.6 ms a step for 64 rows of magma-tiny's 1034, 7 % of a GRPO step)."""

    def __init__(self, generator: torch.Generator | None) -> None:
        self.generator = generator

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        cumulative = torch.softmax(scores.float(), dim=-1).cumsum(dim=-1)
        total = cumulative[:, -1:]
        uniform = torch.rand(total.shape, generator=self.generator, device=scores.device, dtype=torch.float32)
        # below the total, so the first entry the cumulative sum passes has a probability above zero
        target = torch.minimum(uniform * total, torch.nextafter(total, torch.zeros_like(total)))
        drawn = torch.searchsorted(cumulative, target, right=True).clamp_(max=scores.shape[-1] - 1)
        broken = ~torch.isfinite(total).squeeze(-1)  # a row with NaN or +inf scores has no softmax to draw from
        if bool(broken.any()):  # its largest score, as greedy decoding (and PerRowSampler) would take
            drawn[broken] = scores[broken].float().nan_to_num(nan=float("-inf")).argmax(dim=-1, keepdim=True)
        return torch.full_like(scores, float("-inf")).scatter_(-1, drawn, 0.0)


def call_generators(row_generators: Sequence[torch.Generator], device: torch.device) -> list[torch.Generator]:
    """One fresh generator per row for one call, each seeded by one draw from the row's own generator:
    a row's generator advances by one draw per call, whatever the number of decoding steps."""
    seeds = [int(torch.randint(0, 2**62, (1,), generator=g, device=g.device)) for g in row_generators]
    return [torch.Generator(device=device).manual_seed(seed) for seed in seeds]


def distinct_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(first, inverse)`` for the distinct rows of a 2-D tensor: ``first`` (U,) the index of one row of each
    distinct value, ``inverse`` (B,) each row's place in ``first``; None when every row is distinct."""
    distinct, inverse = torch.unique(rows, dim=0, return_inverse=True)
    if len(distinct) == len(rows):
        return None
    first = torch.empty(len(distinct), dtype=torch.long, device=rows.device)
    first.scatter_(0, inverse, torch.arange(len(rows), device=rows.device))
    return first, inverse


def shared_prompt_cache(model: MagmaForCausalLM, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
    """The KV cache of every row's prompt but its last token, computed once per distinct prompt and repeated
    for the rows that share it (left-padded rows, no images); ``generate`` given this cache and the whole
    prompts runs only the last tokens before decoding. None when no two rows share a prompt."""
    if input_ids.shape[1] < 2:
        return None
    shared = distinct_rows(torch.cat([input_ids, attention_mask], dim=-1))
    if shared is None:
        return None
    first, inverse = shared
    prefix = model(
        input_ids=input_ids[first, :-1], attention_mask=attention_mask[first, :-1], use_cache=True, logits_to_keep=1
    )
    cache = prefix.cache
    cache.reorder_cache(inverse)  # (U, ...) -> (B, ...)
    return cache


@dataclass
class Completion:
    """One sampled completion: its token ids (the stop token included when one was drawn) and the
    log-prob of each under the sampling distribution."""

    token_ids: list[int]
    log_probs: list[float]
    stopped: bool  # ended with a stop token (False: cut at max_new_tokens)


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
    row_generators: Sequence[torch.Generator] | None = None,
) -> list[Completion]:
    """One completion per row of ``inputs`` (left- or right-padded prompts, images allowed).

    ``temperature <= 0`` decodes greedily (log-probs are then those of the temperature-1 softmax).
    ``stop_token_ids`` defaults to the model's end-of-sequence ids; ``[]`` never stops early.
    ``allowed`` (V,) bool restricts the tokens drawn (default :func:`allowed_tokens`). ``generator``
    seeds the draws (:class:`InverseCdfSampler`; the same generator state gives the same completions,
    and torch's global generator is left as it was; without it the draws come from the global one).
    ``row_generators`` (one per row, instead of ``generator``) draws each row from its own generator
    (:class:`PerRowSampler`), independently of the other rows.
    """
    batch = inputs.input_ids.shape[0]
    if max_new_tokens <= 0:
        return [Completion([], [], False) for _ in range(batch)]
    device = model.device
    stops = list(model.config.tokens.eos_token_ids if stop_token_ids is None else stop_token_ids)
    allowed = allowed_tokens(model.config) if allowed is None else allowed
    recorder = DrawnTokenLogProbs()
    processors: list[LogitsProcessor] = [AllowedTokensLogitsProcessor(allowed)]
    if temperature > 0:  # the warpers are ours, so that the recorder runs after them
        if temperature != 1.0:  # dividing by 1 changes nothing: one op less per decoding step
            processors.append(TemperatureLogitsWarper(sampling_temperature(temperature)))
        if top_p < 1.0:
            processors.append(TopPLogitsWarper(float(top_p)))
    processors.append(recorder)
    per_row = row_generators is not None and temperature > 0
    if row_generators is not None and len(row_generators) != batch:
        raise ValueError(f"row_generators has {len(row_generators)} generators for {batch} rows")
    if per_row:
        processors.append(PerRowSampler(call_generators(row_generators, device)))  # type: ignore[arg-type]
    elif temperature > 0:  # seeded from ``generator``: the same state gives the same completions
        processors.append(InverseCdfSampler(None if generator is None else call_generators([generator], device)[0]))
    given = inputs.to(device, pixel_dtype=model.dtype).generation_kwargs()
    if set(given) == {"input_ids", "attention_mask"}:  # text only: no images, action slots or states
        given["input_ids"], given["attention_mask"] = left_align(given["input_ids"], given["attention_mask"])
        cache = shared_prompt_cache(model, given["input_ids"], given["attention_mask"])
        if cache is not None:
            given["cache"] = cache
    sequences = model.generate(
        **given,
        max_new_tokens=max_new_tokens,
        do_sample=False,  # the last processor draws (or, at temperature 0, none does); argmax takes its token
        temperature=None,
        top_p=None,
        top_k=None,
        eos_token_id=stops,
        pad_token_id=model.config.tokens.pad_token_id,
        logits_processor=processors,
    )
    new_tokens = sequences[:, inputs.input_ids.shape[1] :]
    log_probs = recorder.finish(sequences).tolist()
    completions = []
    for row, ids in enumerate(new_tokens.tolist()):
        stop_at = next((index for index, token in enumerate(ids) if token in stops), None)
        length = len(ids) if stop_at is None else stop_at + 1
        completions.append(Completion(ids[:length], log_probs[row][:length], stop_at is not None))
    return completions
