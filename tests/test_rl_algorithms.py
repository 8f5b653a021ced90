"""The GRPO algorithm layer against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from magma.rl.algorithms import (
    agg_loss,
    entropy_from_logits,
    group_advantages,
    importance_weights,
    kl_penalty,
    log_ratios,
    policy_loss,
    reward_metrics,
    zero_variance_groups,
)

REWARDS = torch.tensor([2.0, 0.0, 1.0, 1.0, 4.0])
GROUPS = torch.tensor([7, 7, 3, 3, 9])  # two pairs and a group of one


def test_group_advantages_by_group_std_batch_std_and_none():
    # group 7: mean 1, unbiased std sqrt(2); group 3: no spread; group 9: a single member
    by_group = group_advantages(REWARDS, GROUPS, "group", epsilon=0.0)
    torch.testing.assert_close(by_group, torch.tensor([1 / math.sqrt(2), -1 / math.sqrt(2), 0.0, 0.0, 0.0]))
    # centred rewards [1, -1, 0, 0, 0]; their unbiased std is sqrt(2 / 4)
    by_batch = group_advantages(REWARDS, GROUPS, "batch", epsilon=0.0)
    torch.testing.assert_close(by_batch, torch.tensor([math.sqrt(2), -math.sqrt(2), 0.0, 0.0, 0.0]))
    torch.testing.assert_close(group_advantages(REWARDS, GROUPS, "none"), torch.tensor([1.0, -1.0, 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="scale must be one of"):
        group_advantages(REWARDS, GROUPS, "rank")  # type: ignore[arg-type]


def test_zero_variance_groups_and_reward_metrics():
    assert zero_variance_groups(REWARDS, GROUPS).tolist() == [False, False, True, True, True]
    metrics = reward_metrics(REWARDS, GROUPS, group_advantages(REWARDS, GROUPS, "none"))
    assert metrics["zero_variance_group_share"] == pytest.approx(2 / 3)
    assert metrics["reward_mean"] == pytest.approx(1.6)
    assert metrics["advantage_abs_mean"] == pytest.approx(0.4)


def test_token_and_sequence_level_ratios():
    log_probs = torch.tensor([[-1.0, -2.0], [-0.5, -9.0]], requires_grad=True)
    old = torch.tensor([[-1.5, -1.0], [-1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    token = log_ratios(log_probs, old, mask, "token")
    torch.testing.assert_close(token, torch.tensor([[0.5, -1.0], [0.5, -9.0]]))
    sequence = log_ratios(log_probs, old, mask, "sequence")  # GSPO: the length-normalised sequence ratio
    torch.testing.assert_close(sequence, torch.tensor([[-0.25, -0.25], [0.5, 0.5]]))
    (sequence * mask).sum().backward()  # ...whose gradient flows through each token's own log-prob
    torch.testing.assert_close(log_probs.grad, mask)


def test_clipped_loss_with_clip_higher_and_dual_clip():
    # four tokens: clipped high (A>0), clipped low (A<0), dual-clipped (A<0, huge ratio), unclipped
    advantages = torch.tensor([1.0, -1.0, -1.0, 1.0])
    ratios = torch.tensor([1.5, 0.5, 5.0, 1.1])
    old = torch.zeros(4, 1)
    log_probs = ratios.log().unsqueeze(-1).clone().requires_grad_(True)
    mask = torch.ones(4, 1)
    loss, metrics = policy_loss(log_probs, old, advantages, mask, clip_low=0.2, clip_high=0.28, dual_clip=3.0)
    # per token: max(-1.5, -1.28) = -1.28; max(0.5, 0.8) = 0.8; min(max(5, 1.28), 3) = 3; -1.1
    assert loss.item() == pytest.approx((-1.28 + 0.8 + 3.0 - 1.1) / 4)
    assert float(metrics["clip_fraction"]) == pytest.approx(0.5)
    assert float(metrics["clip_fraction_high"]) == pytest.approx(0.25)
    assert float(metrics["clip_fraction_low"]) == pytest.approx(0.25)
    assert float(metrics["dual_clip_fraction"]) == pytest.approx(0.25)
    assert float(metrics["ratio_max"]) == pytest.approx(5.0)
    loss.backward()  # only the unclipped token passes a gradient: d(-A r)/d log p = -A r / 4
    torch.testing.assert_close(log_probs.grad.squeeze(-1), torch.tensor([0.0, 0.0, 0.0, -1.1 / 4]))

    without_dual, _ = policy_loss(log_probs, old, advantages, mask, clip_low=0.2, clip_high=0.28)
    assert without_dual.item() == pytest.approx((-1.28 + 0.8 + 5.0 - 1.1) / 4)
    with pytest.raises(ValueError, match="dual_clip must be > 1"):
        policy_loss(log_probs, old, advantages, mask, dual_clip=0.5)


def test_kl_estimators_and_entropy():
    log_probs, ref = torch.tensor([-1.0]), torch.tensor([-2.0])  # log(pi / pi_ref) = 1
    assert float(kl_penalty(log_probs, ref, "k1")) == pytest.approx(1.0)
    assert float(kl_penalty(log_probs, ref, "k2")) == pytest.approx(0.5)
    assert float(kl_penalty(log_probs, ref, "k3")) == pytest.approx(math.exp(-1.0))  # e^-1 - 1 + 1
    assert float(kl_penalty(ref, ref, "k3")) == 0.0
    assert float(entropy_from_logits(torch.zeros(4))) == pytest.approx(math.log(4))
    masked = torch.tensor([0.0, 0.0, 0.0, float("-inf")])  # a banned token: 0 log 0 counts as 0
    assert float(entropy_from_logits(masked)) == pytest.approx(math.log(3))


def test_agg_loss_modes_and_micro_batch_additivity():
    loss_mat = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert float(agg_loss(loss_mat, mask, "token-mean")) == pytest.approx(10 / 4)
    assert float(agg_loss(loss_mat, mask, "seq-mean-token-mean")) == pytest.approx((2 + 4) / 2)
    assert float(agg_loss(loss_mat, mask, "seq-mean-token-sum-norm", norm_length=3)) == pytest.approx((2 + 4 / 3) / 2)
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        whole = agg_loss(loss_mat, mask, mode, norm_length=4)
        # split into micro-batches with the whole batch's denominators: the parts add up to the whole
        parts = sum(
            agg_loss(loss_mat[i : i + 1], mask[i : i + 1], mode, num_tokens=4, num_sequences=2, norm_length=4)
            for i in range(2)
        )
        assert float(parts) == pytest.approx(float(whole))
    with pytest.raises(ValueError, match="mode must be one of"):
        agg_loss(loss_mat, mask, "sum")  # type: ignore[arg-type]


def test_truncated_importance_weights():
    old = torch.tensor([[math.log(3.0), math.log(0.5), 0.0]])
    sampling = torch.zeros(1, 3)
    weights = importance_weights(old, sampling, torch.tensor([[1.0, 1.0, 0.0]]), cap=2.0)
    torch.testing.assert_close(weights, torch.tensor([[2.0, 0.5, 0.0]]))
    # the weights scale the per-token loss (and are detached)
    log_probs = torch.zeros(1, 3, requires_grad=True)
    loss, _ = policy_loss(log_probs, log_probs.detach(), torch.tensor([1.0]), torch.ones(1, 3), weights=weights)
    assert loss.item() == pytest.approx(-(2.0 + 0.5 + 0.0) / 3)
