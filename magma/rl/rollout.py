"""The rollout layer: what a rollout produced, how samples form groups, and the padded batch the loss sees.

- :class:`Sample`: one prompt and one sampled completion with the sampling log-probs, a per-token
  loss mask, the group it belongs to, its trajectory and its reward (and the prompt's images).
- Groups: text samples of the same prompt share a ``group_id``; agent and robot episodes started
  from the same environment seed / initial state share one.
- Multi-turn episodes: :func:`episode_samples` turns an episode's steps into step-level samples that
  all carry the episode's reward and its ``trajectory_id``; each step's observation is its prompt, so
  observation tokens never enter the loss. Advantages are computed per trajectory
  (:func:`assign_advantages`), so a long episode does not outweigh a short one in its group's statistics.
- :func:`collate_samples`: prompts left-padded, completions right-padded after them, so one forward
  pass with ``logits_to_keep`` scores exactly the completion tokens.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from magma.model import positions_from_mask
from magma.rl.generation import distinct_rows, sampling_temperature
from magma.sampling import mask_logits

if TYPE_CHECKING:
    from magma.model import MagmaForCausalLM
from magma.rl.algorithms import AdvantageScale, entropy_from_logits, group_advantages, zero_variance_groups


@dataclass
class Sample:
    prompt_ids: list[int]
    completion_ids: list[int]
    sampling_log_probs: list[float]
    group_id: int
    trajectory_id: int
    reward: float = 0.0
    loss_mask: list[int] | None = None  # per completion token; None: every token counts
    crops: list[torch.Tensor] = field(default_factory=list)  # the prompt's images, as MagmaProcessor encodes them
    grids: list[tuple[int, int]] = field(default_factory=list)
    advantage: float = 0.0
    old_log_probs: list[float] | None = None  # the policy before this step's updates (None: sampling_log_probs)
    ref_log_probs: list[float] | None = None  # the reference model's, when there is one
    meta: dict[str, Any] = field(default_factory=dict)

    def mask(self) -> list[int]:
        return [1] * len(self.completion_ids) if self.loss_mask is None else list(self.loss_mask)


@dataclass
class EpisodeStep:
    """One turn of an episode: the observation as prompt tokens (with images) and the action sampled."""

    prompt_ids: list[int]
    completion_ids: list[int]
    sampling_log_probs: list[float]
    crops: list[torch.Tensor] = field(default_factory=list)
    grids: list[tuple[int, int]] = field(default_factory=list)


def episode_samples(
    steps: Sequence[EpisodeStep], reward: float, group_id: int, trajectory_id: int, meta: dict | None = None
) -> list[Sample]:
    """Step-level samples of one episode, each carrying the episode's reward and trajectory."""
    return [
        Sample(
            prompt_ids=step.prompt_ids,
            completion_ids=step.completion_ids,
            sampling_log_probs=step.sampling_log_probs,
            group_id=group_id,
            trajectory_id=trajectory_id,
            reward=reward,
            crops=step.crops,
            grids=step.grids,
            meta={**(meta or {}), "step": index},
        )
        for index, step in enumerate(steps)
    ]


class SkipCounter(Counter):
    """Samples left out of training, by reason (``reward_error``, ``reward_nan``, ``empty_completion``,
    ``singleton_group``, ``zero_variance_group``, ...)."""


def valid_reward(value: Any) -> float | None:
    """``value`` as a finite float, or None (a reward function returned NaN, inf or a non-number)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def drop_empty_completions(samples: list[Sample], skipped: SkipCounter) -> list[Sample]:
    """Samples with at least one completion token that counts in the loss."""
    kept = [s for s in samples if s.completion_ids and any(s.mask())]
    skipped["empty_completion"] += len(samples) - len(kept)
    return kept


def drop_singleton_groups(samples: list[Sample], skipped: SkipCounter) -> list[Sample]:
    """Samples whose group has at least two trajectories (a group of one has no baseline)."""
    trajectories: dict[int, set[int]] = {}
    for sample in samples:
        trajectories.setdefault(sample.group_id, set()).add(sample.trajectory_id)
    kept = [s for s in samples if len(trajectories[s.group_id]) > 1]
    skipped["singleton_group"] += len(samples) - len(kept)
    return kept


def trajectory_table(samples: Sequence[Sample]) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """The trajectories of ``samples`` (ids in first-seen order) with their rewards and group ids."""
    first: dict[int, Sample] = {}
    for sample in samples:
        first.setdefault(sample.trajectory_id, sample)
    ids = list(first)
    rewards = torch.tensor([first[t].reward for t in ids], dtype=torch.float32)
    groups = torch.tensor([first[t].group_id for t in ids], dtype=torch.long)
    return ids, rewards, groups


def assign_advantages(samples: list[Sample], scale: AdvantageScale, epsilon: float = 1e-6) -> torch.Tensor:
    """Set every sample's advantage from its trajectory's reward against its group; returns the
    per-trajectory advantages."""
    if not samples:
        return torch.zeros(0)
    ids, rewards, groups = trajectory_table(samples)
    advantages = group_advantages(rewards, groups, scale, epsilon)
    by_trajectory = dict(zip(ids, advantages.tolist(), strict=True))
    for sample in samples:
        sample.advantage = by_trajectory[sample.trajectory_id]
    return advantages


def drop_zero_variance_groups(samples: list[Sample], skipped: SkipCounter) -> list[Sample]:
    """Dynamic sampling (DAPO): leave out groups whose trajectories all got the same reward."""
    if not samples:
        return samples
    ids, rewards, groups = trajectory_table(samples)
    flat = dict(zip(ids, zero_variance_groups(rewards, groups).tolist(), strict=True))
    kept = [s for s in samples if not flat[s.trajectory_id]]
    skipped["zero_variance_group"] += len(samples) - len(kept)
    return kept


@dataclass
class RolloutBatch:
    """Padded tensors of a list of samples: ``input_ids`` is [left-padded prompt | right-padded
    completion]; every (B, C) tensor is aligned with the completion part (its last C columns)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor  # 1 on tokens that count in the loss
    sampling_log_probs: torch.Tensor
    old_log_probs: torch.Tensor
    ref_log_probs: torch.Tensor | None
    advantages: torch.Tensor  # (B,)
    rewards: torch.Tensor  # (B,)
    group_ids: torch.Tensor  # (B,)
    pixel_values: torch.Tensor | None = None
    image_grids: torch.Tensor | None = None

    @property
    def completion_length(self) -> int:
        return self.completion_ids.shape[1]

    def model_kwargs(self, device: torch.device | str) -> dict[str, Any]:
        kwargs = {
            "input_ids": self.input_ids.to(device),
            "attention_mask": self.attention_mask.to(device),
            "position_ids": self.position_ids.to(device),
        }
        if self.pixel_values is not None:
            kwargs |= {"pixel_values": self.pixel_values.to(device), "image_grids": self.image_grids.to(device)}
        return kwargs


def collate_samples(samples: Sequence[Sample], pad_token_id: int) -> RolloutBatch:
    """Pad prompts on the left and completions on the right; position ids count attended tokens only."""
    prompt_length = max(len(s.prompt_ids) for s in samples)
    completion_length = max(1, max(len(s.completion_ids) for s in samples))
    rows = len(samples)
    # filled as numpy arrays (a row's slice assignment costs a fraction of torch's), then shared with torch
    ids = np.full((rows, prompt_length + completion_length), pad_token_id, dtype=np.int64)
    attention = np.zeros_like(ids)
    loss_mask = np.zeros((rows, completion_length), dtype=np.float32)
    log_probs = np.zeros((rows, completion_length), dtype=np.float32)
    old = np.zeros_like(log_probs)
    ref = np.zeros_like(log_probs) if all(s.ref_log_probs is not None for s in samples) else None
    for row, sample in enumerate(samples):
        p, c = len(sample.prompt_ids), len(sample.completion_ids)
        ids[row, prompt_length - p : prompt_length] = sample.prompt_ids
        attention[row, prompt_length - p : prompt_length + c] = 1
        if c:
            ids[row, prompt_length : prompt_length + c] = sample.completion_ids
            loss_mask[row, :c] = sample.mask()
            log_probs[row, :c] = sample.sampling_log_probs
            old[row, :c] = sample.sampling_log_probs if sample.old_log_probs is None else sample.old_log_probs
            if ref is not None:
                ref[row, :c] = sample.ref_log_probs
    ids, attention = torch.from_numpy(ids), torch.from_numpy(attention)
    crops = [crop for sample in samples for crop in sample.crops]
    grids = [grid for sample in samples for grid in sample.grids]
    return RolloutBatch(
        input_ids=ids,
        attention_mask=attention,
        position_ids=positions_from_mask(attention),
        completion_ids=ids[:, prompt_length:],
        completion_mask=torch.from_numpy(loss_mask),
        sampling_log_probs=torch.from_numpy(log_probs),
        old_log_probs=torch.from_numpy(old),
        ref_log_probs=None if ref is None else torch.from_numpy(ref),
        advantages=torch.tensor([s.advantage for s in samples], dtype=torch.float32),
        rewards=torch.tensor([s.reward for s in samples], dtype=torch.float32),
        group_ids=torch.tensor([s.group_id for s in samples], dtype=torch.long),
        pixel_values=torch.cat(crops) if crops else None,
        image_grids=torch.tensor(grids, dtype=torch.long) if grids else None,
    )


def shared_prompts(batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The distinct prompts of a text batch as ``(rows, inverse)``: ``rows`` (U,) one row index per distinct
    prompt, ``inverse`` (B,) each row's prompt in ``rows``; None when no two rows share a prompt or the batch
    has images (a group's samples share one prompt, so its forward pass can run once per group)."""
    if batch.pixel_values is not None:
        return None
    prompt_length = batch.input_ids.shape[1] - batch.completion_length
    return distinct_rows(torch.cat([batch.input_ids[:, :prompt_length], batch.attention_mask[:, :prompt_length]], -1))


def completion_logits(model: Any, batch: RolloutBatch, device: torch.device) -> torch.Tensor:
    """(B, C, V) logits of the positions that predict the completion tokens. Rows that share a prompt
    (a group) run the prompt once: its keys and values (with their gradient) are repeated for every
    row of the group, then the completions run on them. Otherwise (DDP, checkpointing): one plain pass."""
    length = batch.completion_length
    # a DDP wrapper (``module``) wants one forward per backward; activation checkpointing keeps no cache
    plain = not isinstance(model, torch.nn.Module) or hasattr(model, "module")
    plain = plain or (model.training and bool(getattr(model, "is_activation_checkpointing", False)))
    shared = None if plain else shared_prompts(batch)
    if shared is None:
        return model(**batch.model_kwargs(device), logits_to_keep=length + 1).logits[:, :-1]
    rows, inverse = (index.to(device) for index in shared)
    prompt_length = batch.input_ids.shape[1] - length
    kwargs = batch.model_kwargs(device)
    prefix = model(
        input_ids=kwargs["input_ids"][rows, :prompt_length],
        attention_mask=kwargs["attention_mask"][rows, :prompt_length],
        position_ids=kwargs["position_ids"][rows, :prompt_length],
        use_cache=True,
        logits_to_keep=1,
    )
    cache = prefix.cache
    cache.reorder_cache(inverse)  # (U, ...) -> (B, ...): each row gets its prompt's keys and values
    out = model(
        input_ids=kwargs["input_ids"][:, prompt_length:],
        attention_mask=kwargs["attention_mask"],
        position_ids=kwargs["position_ids"][:, prompt_length:],
        cache=cache,
        use_cache=True,
        logits_to_keep=length,
    )
    return torch.cat([prefix.logits[inverse], out.logits[:, :-1]], dim=1)


def completion_log_probs(
    model: Any,
    batch: RolloutBatch,
    allowed: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, C) log-probs of the completion tokens under ``model`` at the sampling temperature, over the
    ``allowed`` tokens as sampling saw them (and the per-token entropy): the LM head runs on the
    completion positions only (``logits_to_keep``), and each distinct prompt runs once."""
    device = batch.input_ids.device if not hasattr(model, "parameters") else next(model.parameters()).device
    logits = mask_logits(completion_logits(model, batch, device), allowed)
    if temperature > 0:
        logits = logits / sampling_temperature(temperature)  # as the draw divided them
    log_softmax = torch.log_softmax(logits, dim=-1)
    targets = batch.completion_ids.to(device)
    log_probs = log_softmax.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    # padding after a completion is a banned token (log-prob -inf): 0 there keeps every sum finite
    log_probs = torch.where(batch.completion_mask.to(device) > 0, log_probs, torch.zeros_like(log_probs))
    entropy = entropy_from_logits(logits) if with_entropy else None
    return log_probs, entropy


@dataclass
class RolloutResult:
    """What one rollout step produced: the samples (rewards set, advantages not yet), the samples it
    had to leave out by reason, and task metrics (e.g. ``success_rate``)."""

    samples: list[Sample]
    skipped: SkipCounter = field(default_factory=SkipCounter)
    metrics: dict[str, float] = field(default_factory=dict)


def episode_seed(seed: int, step: int, group: int, repeat: int) -> int:
    """The sampling seed of one episode: episode ``repeat`` of the ``group``-th group of rollout ``step``,
    a function of those numbers alone, so an episode draws the same actions on whichever worker plays it."""
    return int(np.random.SeedSequence([seed, step, group, repeat]).generate_state(1, np.uint64)[0] >> 1)


def episode_generator(seed: int, step: int, group: int, repeat: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(episode_seed(seed, step, group, repeat))


class RLTask(Protocol):
    """What the GRPO trainer needs from a use: rollouts of the current policy, grouped, with rewards,
    and an evaluation. ``step`` seeds the rollout, so a resumed run draws what the first one would."""

    allowed: torch.Tensor  # (V,) bool: the tokens completions are drawn from (see generation.allowed_tokens)

    def rollout(self, model: MagmaForCausalLM, step: int) -> RolloutResult: ...

    def evaluate(self, model: MagmaForCausalLM) -> dict[str, float]: ...

    def close(self) -> None: ...


class GroupedRLTask(RLTask, Protocol):
    """A use whose rollout splits into groups that any worker can play (web, robot): the plan of a step's
    groups, the play of some of them (each with its position in the plan, which seeds its episodes),
    and the gathering of every group's outcome, in plan order, into the step's :class:`RolloutResult`.
    ``rollout`` is ``gather(step, play_groups(model, step, enumerate(plan_groups(step))))``."""

    def plan_groups(self, step: int) -> list[Any]: ...

    def play_groups(self, model: MagmaForCausalLM, step: int, groups: list[tuple[int, Any]]) -> list[Any]: ...

    def gather(self, step: int, outcomes: list[Any]) -> RolloutResult: ...

    def replica_factory(self) -> Callable[[], GroupedRLTask]:
        """A picklable callable that builds this task's twin in another process, with its own environments."""
        ...
