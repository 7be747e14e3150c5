"""The critic-free policy-gradient math of ``alignbench.ops`` (GRPO, RLOO, REINFORCE++), pinned
against values worked out by hand.

Every expected number is derived in a comment next to it; ``math`` only evaluates the closed
forms. Padded positions hold large values so that any leak through the mask shows up.
"""

from __future__ import annotations

import math

import pytest
import torch

from alignbench.ops import (
    aggregate_loss,
    clipped_surrogate,
    discounted_returns,
    group_advantages,
    kl_shaped_rewards,
    leave_one_out_advantages,
    policy_loss,
    reinforce_pp_advantages,
    token_entropy,
)

DTYPES = [torch.float32, torch.float64]
BIG = 1.0e6  # stored in padded positions; must never reach a result


def check(actual: torch.Tensor, expected, dtype: torch.dtype, tol: float = 1e-5) -> None:
    """Assert ``actual`` equals the hand-computed ``expected`` and has dtype ``dtype``."""
    want = torch.tensor(expected, dtype=dtype)
    assert actual.dtype == dtype
    torch.testing.assert_close(actual, want, rtol=tol, atol=tol)


# --------------------------------------------------------------------------- group_advantages


@pytest.mark.parametrize("dtype", DTYPES)
def test_group_advantages_by_group_std(dtype):
    """(r - group mean) / (unbiased group std + 1e-4); a group of equal rewards gives 0, not NaN."""
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]], dtype=dtype)
    # row 0: mean 0.5, centred [0.5, -0.5, -0.5, 0.5]; unbiased var = 4 * 0.25 / 3 = 1/3
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)  # = 0.86588...
    # row 1: centred 0, std 0: 0 / (0 + 1e-4) = 0
    check(group_advantages(rewards), [[a, -a, -a, a], [0.0, 0.0, 0.0, 0.0]], dtype)
    # K = 3: [3, 1, 2], mean 2, centred [1, -1, 0], var (1 + 1 + 0) / 2 = 1
    three = torch.tensor([[3.0, 1.0, 2.0]], dtype=dtype)
    s = 1 / (1 + 1e-4)
    check(group_advantages(three), [[s, -s, 0.0]], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_group_advantages_batch_std_and_no_scaling(dtype):
    """``batch`` divides by the whole batch's std; ``none`` (Dr. GRPO) only centres per group."""
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]], dtype=dtype)
    # all 8 rewards: mean 10/8 = 1.25; squared deviations 2 * 0.0625 + 2 * 1.5625 + 4 * 0.5625
    # = 5.5; unbiased var 5.5 / 7
    a = 0.5 / (math.sqrt(5.5 / 7) + 1e-4)
    check(group_advantages(rewards, "batch"), [[a, -a, -a, a], [0.0] * 4], dtype)
    check(group_advantages(rewards, "none"), [[0.5, -0.5, -0.5, 0.5], [0.0] * 4], dtype)


def test_group_advantages_refuse_bad_input():
    """One response per prompt has no group to compare with; an unknown scale is named."""
    with pytest.raises(ValueError, match="K >= 2"):
        group_advantages(torch.ones(3, 1))
    with pytest.raises(ValueError, match="unknown advantage scale 'std'"):
        group_advantages(torch.ones(2, 2), "std")


# ---------------------------------------------------------------- leave_one_out_advantages


@pytest.mark.parametrize("dtype", DTYPES)
def test_leave_one_out_advantages(dtype):
    """Each reward minus the mean of the *other* rewards of its prompt."""
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0]], dtype=dtype)
    # i=0: 1 - (0 + 0 + 1) / 3 = 2/3; i=1: 0 - (1 + 0 + 1) / 3 = -2/3 (= 4/3 * (r - 0.5))
    t = 2 / 3
    check(leave_one_out_advantages(rewards), [[t, -t, -t, t]], dtype)
    # [3, 1, 2]: 3 - (1 + 2) / 2 = 1.5; 1 - (3 + 2) / 2 = -1.5; 2 - (3 + 1) / 2 = 0
    three = torch.tensor([[3.0, 1.0, 2.0], [5.0, 5.0, 5.0]], dtype=dtype)
    check(leave_one_out_advantages(three), [[1.5, -1.5, 0.0], [0.0, 0.0, 0.0]], dtype)
    with pytest.raises(ValueError, match="K >= 2"):
        leave_one_out_advantages(torch.ones(2, 1))


# --------------------------------------------------------------------- clipped_surrogate


@pytest.mark.parametrize("dtype", DTYPES)
def test_clipped_surrogate_elementwise(dtype):
    """max(-A * ratio, -A * clip(ratio)) per element, and where the clipped term was active."""
    ratios = [1.5, 0.5, 1.1, 1.5]
    advantages = torch.tensor([1.0, -1.0, -2.0, -1.0], dtype=dtype)
    logprobs = torch.tensor([math.log(r) for r in ratios], dtype=dtype)
    old = torch.zeros(4, dtype=dtype)
    loss, clipped = clipped_surrogate(logprobs, old, advantages, 0.2)
    # 1.5, A=1: max(-1.5, -1.2) = -1.2 (clipped); 0.5, A=-1: max(0.5, 0.8) = 0.8 (clipped);
    # 1.1, A=-2: inside the range, 2.2; 1.5, A=-1: max(1.5, 1.2) = 1.5 (pessimistic: unclipped)
    check(loss, [-1.2, 0.8, 2.2, 1.5], dtype)
    check(clipped, [1.0, 1.0, 0.0, 0.0], dtype)
    # clip-higher 0.6: ratio 1.5 < 1.6 is no longer clipped for A = 1: -1.5
    loss, clipped = clipped_surrogate(logprobs, old, advantages, 0.2, clip_high=0.6)
    check(loss, [-1.5, 0.8, 2.2, 1.5], dtype)
    check(clipped, [0.0, 1.0, 0.0, 0.0], dtype)


def test_policy_loss_is_the_token_mean_of_the_clipped_surrogate():
    """ops.policy_loss (PPO) and aggregate_loss(clipped_surrogate, token_mean) agree exactly."""
    g = torch.Generator().manual_seed(0)
    logprobs, old, adv = (torch.randn(3, 5, generator=g) for _ in range(3))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    per_token, clipped = clipped_surrogate(logprobs, old, adv, 0.2)
    loss, clipfrac = policy_loss(logprobs, old, adv, mask, 0.2)
    torch.testing.assert_close(aggregate_loss(per_token, mask, "token_mean"), loss)
    torch.testing.assert_close(aggregate_loss(clipped, mask, "token_mean"), clipfrac)


# ------------------------------------------------------------------------ aggregate_loss


@pytest.mark.parametrize("dtype", DTYPES)
def test_aggregate_loss_three_ways(dtype):
    """Per-sequence mean, per-token mean and Dr. GRPO's constant normaliser."""
    per_token = torch.tensor([[1.0, 2.0, 3.0, BIG], [4.0, BIG, BIG, -BIG]], dtype=dtype)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    # seq_mean: row means (1 + 2 + 3) / 3 = 2 and 4 / 1 = 4, then (2 + 4) / 2 = 3
    check(aggregate_loss(per_token, mask, "seq_mean"), 3.0, dtype)
    # token_mean: (1 + 2 + 3 + 4) / 4 tokens = 2.5
    check(aggregate_loss(per_token, mask, "token_mean"), 2.5, dtype)
    # dr_grpo: sum 10 / (2 sequences * 4 max tokens) = 1.25; with max_tokens 8: 10 / 16
    check(aggregate_loss(per_token, mask, "dr_grpo", max_tokens=4), 1.25, dtype)
    check(aggregate_loss(per_token, mask, "dr_grpo", max_tokens=8), 0.625, dtype)


def test_aggregate_loss_refuses_bad_input():
    """An unknown loss type is named; dr_grpo without its constant is an error."""
    x, m = torch.ones(1, 2), torch.ones(1, 2)
    with pytest.raises(ValueError, match="unknown loss_type 'grpo'"):
        aggregate_loss(x, m, "grpo")
    with pytest.raises(ValueError, match="max_tokens"):
        aggregate_loss(x, m, "dr_grpo")


# ------------------------------------------------------ kl_shaped_rewards / returns


@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_shaped_rewards(dtype):
    """-beta * kl on every valid token, the score added on the last valid one, 0 on padding."""
    scores = torch.tensor([1.0, -2.0], dtype=dtype)
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, BIG, BIG]], dtype=dtype)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # beta 0.5: row 0 [-0.05, -0.1, -0.15 + 1]; row 1 [-0.25 - 2, 0, 0]
    expected = [[-0.05, -0.1, 0.85], [-2.25, 0.0, 0.0]]
    check(kl_shaped_rewards(scores, kl, mask, 0.5), expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_discounted_returns(dtype):
    """G_t = r_t + gamma * G_{t+1} within each response; padding neither counts nor receives."""
    rewards = torch.tensor([[1.0, 2.0, 3.0], [4.0, BIG, BIG]], dtype=dtype)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # gamma 0.5: G2 = 3, G1 = 2 + 0.5 * 3 = 3.5, G0 = 1 + 0.5 * 3.5 = 2.75; row 1: G0 = 4
    check(discounted_returns(rewards, mask, 0.5), [[2.75, 3.5, 3.0], [4.0, 0.0, 0.0]], dtype)
    # gamma 1: plain reward-to-go 6, 5, 3
    check(discounted_returns(rewards, mask, 1.0), [[6.0, 5.0, 3.0], [4.0, 0.0, 0.0]], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_reinforce_pp_advantages(dtype):
    """KL-shaped reward-to-go, whitened over every valid token of the batch."""
    scores = torch.tensor([1.0, -2.0], dtype=dtype)
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, BIG, BIG]], dtype=dtype)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # shaped rewards (beta 0.5) [-0.05, -0.1, 0.85] and [-2.25]; returns (gamma 1):
    # G = [0.70, 0.75, 0.85] and [-2.25]; mean (0.70 + 0.75 + 0.85 - 2.25) / 4 = 0.0125
    returns = [0.70, 0.75, 0.85, -2.25]
    mean = sum(returns) / 4
    # unbiased var: sum of (G - 0.0125)^2 = 0.47265625 + 0.54390625 + 0.70140625 + 5.11890625
    # = 6.836875, / 3 = 2.278958...
    var = sum((g - mean) ** 2 for g in returns) / 3
    assert var == pytest.approx(6.836875 / 3)
    a = [(g - mean) / math.sqrt(var + 1e-8) for g in returns]
    expected = [[a[0], a[1], a[2]], [a[3], 0.0, 0.0]]
    check(reinforce_pp_advantages(scores, kl, mask, 0.5), expected, dtype)
    # subtract_mean=False (a baseline already in the scores): G / std, signs kept
    s = [g / math.sqrt(var + 1e-8) for g in returns]
    scaled = reinforce_pp_advantages(scores, kl, mask, 0.5, subtract_mean=False)
    check(scaled, [[s[0], s[1], s[2]], [s[3], 0.0, 0.0]], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_token_entropy(dtype):
    """Uniform over 2 tokens: ln 2; p = (1/4, 3/4): -(1/4 ln 1/4 + 3/4 ln 3/4)."""
    logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)]]], dtype=dtype)
    quarter = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))  # = 0.562335...
    check(token_entropy(logits), [[math.log(2.0), quarter]], dtype)
