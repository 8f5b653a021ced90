"""The GRPO algorithm as pure tensor functions (the shape of verl's ``core_algos.py``).

Every function takes explicit masks and returns tensors (and, for the policy loss, a metrics dict);
nothing here knows about models, rollouts or processes. Shapes: ``(B,)`` per sequence, ``(B, T)``
per completion token with a ``(B, T)`` 0/1 ``mask`` marking the tokens that count.

- advantages: :func:`group_advantages` (scaled by group std as in GRPO, by batch std, or not at all
  as in Dr. GRPO); :func:`zero_variance_groups` for dynamic sampling (DAPO drops them);
- ratios: token level (PPO/GRPO) or sequence level (GSPO), :func:`log_ratios`;
- loss: :func:`policy_loss` (clip_low / clip_high as in DAPO's clip-higher, optional dual-clip),
  :func:`kl_penalty` (k1 / k2 / k3 estimators), :func:`entropy_from_logits`, and :func:`agg_loss`,
  the one place every normalisation choice lives;
- :func:`importance_weights`: truncated importance sampling between the sampling (rollout) and
  the training log-probs, when the two differ (another engine, another precision).
"""

from __future__ import annotations

from typing import Literal

import torch

AdvantageScale = Literal["group", "batch", "none"]
RatioLevel = Literal["token", "sequence"]
KLEstimator = Literal["k1", "k2", "k3"]
AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]

ADVANTAGE_SCALES = ("group", "batch", "none")
RATIO_LEVELS = ("token", "sequence")
KL_ESTIMATORS = ("k1", "k2", "k3")
AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
LOG_RATIO_LIMIT = 20.0  # exp(20) ~ 5e8: keeps a stale sample from overflowing the ratio


# ---- advantages and dynamic sampling ----------------------------------------------------------
def group_statistics(rewards: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample mean and (unbiased, 0 for a single member) std of the sample's group's rewards."""
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    rewards = rewards.double()
    sums = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, inverse, rewards)
    means = sums / counts
    squares = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, inverse, (rewards - means[inverse]) ** 2)
    stds = torch.where(counts > 1, (squares / (counts - 1).clamp(min=1)).sqrt(), torch.zeros_like(squares))
    return means[inverse], stds[inverse]


def group_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    scale: AdvantageScale = "group",
    epsilon: float = 1e-6,
) -> torch.Tensor:
    """(B,) rewards of (B,) group ids -> (B,) advantages: reward minus its group's mean, divided by
    the group's std (``"group"``, GRPO), the std of the whole batch's centred rewards (``"batch"``)
    or nothing (``"none"``, Dr. GRPO, which removes the difficulty bias of per-group scaling)."""
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"scale must be one of {ADVANTAGE_SCALES}, not {scale!r}")
    means, stds = group_statistics(rewards, group_ids)
    centred = rewards.double() - means
    # a zero std only meets zero centred rewards: divide those by 1, not by epsilon (0 / 0 with epsilon=0)
    if scale == "group":
        centred = centred / torch.where(stds > 0, stds + epsilon, torch.ones_like(stds))
    elif scale == "batch":
        batch_std = centred.std() if centred.numel() > 1 else centred.new_zeros(())
        centred = centred / (batch_std + epsilon if batch_std > 0 else 1.0)
    return centred.to(rewards.dtype if rewards.is_floating_point() else torch.float32)


def zero_variance_groups(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """(B,) bool: True where the sample's group has one reward for all members (no learning signal;
    DAPO's dynamic sampling drops these groups). A group of one member counts as zero-variance."""
    _, stds = group_statistics(rewards, group_ids)
    return stds == 0


# ---- ratios, KL, entropy ----------------------------------------------------------------------
def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1 (0 where nothing is selected)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def log_ratios(
    log_probs: torch.Tensor, old_log_probs: torch.Tensor, mask: torch.Tensor, level: RatioLevel = "token"
) -> torch.Tensor:
    """(B, T) log importance ratios of the current policy against the one that produced the data.

    ``"token"``: log pi(y_t) - log pi_old(y_t). ``"sequence"`` (GSPO): every token of a sequence
    carries the sequence's length-normalised log ratio, mean_t(log pi - log pi_old), in value, while
    its gradient still flows through the token's own log-prob (GSPO-token's stop-gradient form).
    """
    if level not in RATIO_LEVELS:
        raise ValueError(f"level must be one of {RATIO_LEVELS}, not {level!r}")
    token = log_probs - old_log_probs
    if level == "token":
        return token
    sequence = masked_mean(token, mask, dim=-1).detach().unsqueeze(-1)
    return sequence + log_probs - log_probs.detach()


def kl_penalty(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, estimator: KLEstimator = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman's estimators):
    k1 = log r', k2 = (log r')^2 / 2, k3 = exp(-log r') - 1 + log r' with log r' = log pi - log pi_ref.
    k3 is unbiased and never negative; it is clamped to [-10, 10] in log space as verl does."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"estimator must be one of {KL_ESTIMATORS}, not {estimator!r}")
    log_ratio = log_probs - ref_log_probs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    clamped = log_ratio.clamp(-10.0, 10.0)
    return (torch.exp(-clamped) - 1.0 + clamped).clamp(-10.0, 10.0)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """(..., V) logits -> (...) entropy of the softmax distribution, in nats."""
    probs = torch.softmax(logits.float(), dim=-1)
    return -torch.special.xlogy(probs, probs).sum(dim=-1)  # 0 log 0 = 0 for masked-out tokens


def importance_weights(
    old_log_probs: torch.Tensor, sampling_log_probs: torch.Tensor, mask: torch.Tensor, cap: float = 2.0
) -> torch.Tensor:
    """(B, T) truncated importance weights min(pi_old / pi_sampling, cap), detached and 0 off the
    mask: they correct a loss computed on the training engine's log-probs for tokens drawn from a
    slightly different sampling distribution (truncated IS, as in verl's rollout correction)."""
    log_weight = (old_log_probs - sampling_log_probs).clamp(max=LOG_RATIO_LIMIT)
    return torch.exp(log_weight).clamp(max=cap).detach() * mask.to(old_log_probs.dtype)


# ---- aggregation and the policy loss ----------------------------------------------------------
def agg_loss(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    mode: AggMode = "token-mean",
    num_tokens: float | None = None,
    num_sequences: float | None = None,
    norm_length: float | None = None,
) -> torch.Tensor:
    """(B, T) per-token losses -> a scalar, the one place every normalisation choice lives.

    ``token-mean``: sum over all tokens / number of tokens (DAPO); ``seq-mean-token-mean``: the mean
    of each sequence's token mean (the original GRPO); ``seq-mean-token-sum-norm``: each sequence's
    token sum divided by a constant ``norm_length`` (Dr. GRPO), then the mean over sequences.

    ``num_tokens`` / ``num_sequences`` are the denominators of the whole optimizer step when it is
    split over micro-batches, so that the micro-batch losses add up to the step's loss; by default
    they are this batch's own counts.
    """
    mask = mask.to(loss_mat.dtype)
    if mode == "token-mean":
        tokens = mask.sum() if num_tokens is None else torch.as_tensor(num_tokens, dtype=loss_mat.dtype)
        return (loss_mat * mask).sum() / tokens.clamp(min=1)
    sequences = (
        (mask.sum(-1) > 0).sum().to(loss_mat.dtype)
        if num_sequences is None
        else torch.as_tensor(num_sequences, dtype=loss_mat.dtype)
    )
    if mode == "seq-mean-token-mean":
        per_sequence = (loss_mat * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return per_sequence.sum() / sequences.clamp(min=1)
    if mode == "seq-mean-token-sum-norm":
        length = float(norm_length) if norm_length is not None else float(loss_mat.shape[-1])
        return (loss_mat * mask).sum() / length / sequences.clamp(min=1)
    raise ValueError(f"mode must be one of {AGG_MODES}, not {mode!r}")


def policy_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    ratio_level: RatioLevel = "token",
    agg_mode: AggMode = "token-mean",
    weights: torch.Tensor | None = None,
    **agg_kwargs: float | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped surrogate: max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)) per token, with
    dual-clip (for A < 0 the loss is at most -A * dual_clip, Ye et al. 2020) when ``dual_clip`` > 1.

    ``advantages`` is (B,) per sequence or (B, T) per token; ``weights`` (B, T) multiply the per-token
    loss (importance-sampling correction). Returns the aggregated loss and detached metrics:
    ``clip_fraction`` (tokens whose ratio was clipped, either side), ``clip_fraction_low`` /
    ``clip_fraction_high``, ``dual_clip_fraction``, ``approx_kl`` (mean (log r)^2 / 2, against the
    sampling policy), ``ratio_mean`` / ``ratio_max`` / ``ratio_min``.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1).expand_as(log_probs)
    log_ratio = log_ratios(log_probs, old_log_probs, mask, ratio_level).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss_mat = torch.maximum(unclipped, clipped)
    dual = torch.zeros_like(loss_mat, dtype=torch.bool)
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, not {dual_clip}")
        bound = -advantages * dual_clip
        dual = (advantages < 0) & (loss_mat > bound)
        loss_mat = torch.where(advantages < 0, torch.minimum(loss_mat, bound), loss_mat)
    if weights is not None:
        loss_mat = loss_mat * weights
    loss = agg_loss(loss_mat, mask, agg_mode, **agg_kwargs)

    with torch.no_grad():
        selected = mask.bool()
        active = clipped > unclipped  # the clip bound set the loss (the gradient through r is cut)
        low = active & (ratio < 1.0 - clip_low)
        high = active & (ratio > 1.0 + clip_high)
        token_log_ratio = (log_probs - old_log_probs).detach()
        ratios = ratio.detach()[selected]
        metrics = {
            "clip_fraction": masked_mean((low | high).float(), mask),
            "clip_fraction_low": masked_mean(low.float(), mask),
            "clip_fraction_high": masked_mean(high.float(), mask),
            "dual_clip_fraction": masked_mean(dual.float(), mask),
            "approx_kl": masked_mean(0.5 * token_log_ratio.square(), mask),
            "ratio_mean": ratios.mean() if ratios.numel() else ratio.new_ones(()),
            "ratio_max": ratios.max() if ratios.numel() else ratio.new_ones(()),
            "ratio_min": ratios.min() if ratios.numel() else ratio.new_ones(()),
        }
    return loss, metrics


def reward_metrics(rewards: torch.Tensor, group_ids: torch.Tensor, advantages: torch.Tensor) -> dict[str, float]:
    """Batch-level diagnostics of one rollout: reward mean/std/min/max, the advantage spread and the
    share of zero-variance groups (groups with no learning signal)."""
    groups, inverse = torch.unique(group_ids, return_inverse=True)
    flat = zero_variance_groups(rewards, group_ids)
    zero_groups = torch.zeros(len(groups), dtype=torch.bool).index_fill_(0, inverse[flat], True)
    rewards = rewards.float()
    return {
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
        "reward_min": float(rewards.min()),
        "reward_max": float(rewards.max()),
        "advantage_abs_mean": float(advantages.abs().mean()),
        "zero_variance_group_share": float(zero_groups.float().mean()),
    }
