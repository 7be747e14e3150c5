"""Unit tests for ``alignbench.ops``, pinned against values worked out by hand.

Every expected number is derived in a comment next to it; ``math.exp`` / ``math.log`` only evaluate
the closed forms. Padded positions hold large values so that any leak through the mask shows up.
"""

from __future__ import annotations

import math

import pytest
import torch

from alignbench.ops import (
    demonstration_nll,
    gae,
    gather_last,
    kl_penalty,
    last_positions,
    masked_mean,
    masked_whiten,
    policy_loss,
    random_argmax,
    rank_loss,
    ranking_rm_loss,
    sequence_scores,
    value_loss,
)

DTYPES = [torch.float32, torch.float64]
NAN = float("nan")
BIG = 1.0e6  # stored in padded positions; must never reach a result


def check(actual: torch.Tensor, expected, dtype: torch.dtype, tol: float = 1e-5) -> None:
    """Assert ``actual`` equals the hand-computed ``expected`` and has dtype ``dtype``."""
    want = torch.tensor(expected, dtype=dtype)
    assert actual.dtype == dtype
    torch.testing.assert_close(actual, want, rtol=tol, atol=tol)


# --------------------------------------------------------------------------- masked_mean


@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_mean_ignores_padding(dtype):
    """masked_mean averages only valid positions, over everything or along a dim."""
    x = torch.tensor([[1.0, 2.0, 3.0, BIG], [4.0, 6.0, BIG, -BIG]], dtype=dtype)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    # all: (1 + 2 + 3 + 4 + 6) / 5 = 16 / 5 = 3.2
    check(masked_mean(x, mask), 3.2, dtype)
    # per row: (1 + 2 + 3) / 3 = 2; (4 + 6) / 2 = 5
    check(masked_mean(x, mask, dim=1), [2.0, 5.0], dtype)


def test_masked_mean_empty_mask_is_zero():
    """An all-zero mask gives 0, not NaN."""
    x = torch.tensor([[BIG, 1.0], [2.0, 3.0]])
    mask = torch.zeros(2, 2)
    check(masked_mean(x, mask), 0.0, torch.float32)


# --------------------------------------------------------------------------- last token


def test_last_positions_and_gather_last():
    """The last 1 of each row (a gap inside a row counts, as a user turn does); -1 / position 0
    for a row without one."""
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    assert last_positions(mask).tolist() == [1, 2, 3, -1]
    values = torch.tensor([[1.0, 2.0, BIG, BIG], [3.0, BIG, 4.0, BIG], [5.0, 6.0, 7.0, 8.0]])
    check(gather_last(values, mask[:3]), [2.0, 4.0, 8.0], torch.float32)
    assert gather_last(torch.tensor([[9, 8]]), torch.tensor([[0, 0]])).tolist() == [9]


@pytest.mark.parametrize("dtype", DTYPES)
def test_demonstration_nll_is_the_token_mean(dtype):
    """-(sum of valid log-probs) / (valid tokens): (0.5 + 1 + 1.5) / 3 = 1, padding ignored."""
    logprobs = torch.tensor([[-0.5, -1.0, -BIG], [-1.5, -BIG, -BIG]], dtype=dtype)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    check(demonstration_nll(logprobs, mask), 1.0, dtype)


# --------------------------------------------------------------------------- masked_whiten


@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_whiten_hand_values(dtype):
    """Whitening uses the masked mean and unbiased variance and zeroes padding."""
    x = torch.tensor([[1.0, 2.0, 3.0, BIG], [4.0, 5.0, BIG, BIG]], dtype=dtype)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    # valid values 1..5: mean = 3; unbiased var = (4 + 1 + 0 + 1 + 4) / (5 - 1) = 2.5
    s = math.sqrt(2.5)  # = 1.5811; the 1e-8 epsilon is far below the tolerance
    out = masked_whiten(x, mask)
    check(out, [[-2 / s, -1 / s, 0.0, 0.0], [1 / s, 2 / s, 0.0, 0.0]], dtype)
    valid = out[mask.bool()]
    check(valid.mean(), 0.0, dtype)
    check(valid.std(), 1.0, dtype)  # torch.std is Bessel-corrected (unbiased)


@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_whiten_keep_mean(dtype):
    """shift_mean=False rescales around the mean but keeps it; padding is still 0."""
    x = torch.tensor([[1.0, 2.0, 3.0, BIG], [4.0, 5.0, BIG, BIG]], dtype=dtype)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    s = math.sqrt(2.5)  # as above: mean 3, unbiased std sqrt(2.5)
    out = masked_whiten(x, mask, shift_mean=False)
    # (x - 3) / s + 3
    check(out, [[3 - 2 / s, 3 - 1 / s, 3.0, 0.0], [3 + 1 / s, 3 + 2 / s, 0.0, 0.0]], dtype)
    valid = out[mask.bool()]
    check(valid.mean(), 3.0, dtype)
    check(valid.std(), 1.0, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_masked_whiten_of_a_tiny_spread_in_half_precision_is_finite(dtype):
    """Values 1e-4 apart in fp16: the variance underflows to 0 there (and so does the 1e-8),
    which divided by zero; whitened in fp32, the result is fp32's, in the input's dtype."""
    x = torch.tensor([[0.0, 1e-4, 2e-4, 0.0]], dtype=dtype)
    mask = torch.tensor([[1, 1, 1, 0]])
    out = masked_whiten(x, mask)
    assert out.dtype == dtype and torch.isfinite(out).all()
    expected = masked_whiten(x.float(), mask).to(dtype)
    assert torch.equal(out, expected)


# --------------------------------------------------------------------------- gae


@pytest.mark.parametrize("dtype", DTYPES)
def test_gae_hand_values(dtype):
    """GAE with gamma=0.9, lam=0.8 on a short and a full row; padding stays 0."""
    # gamma * lam = 0.72. Row 0 has 3 valid tokens; its pad holds r=5, V=9 which must not leak.
    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0], [0.5, 0.0, 0.0, 1.0]], dtype=dtype)
    values = torch.tensor([[0.5, 0.4, 0.2, 9.0], [1.0, 0.5, 0.5, 0.5]], dtype=dtype)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # Row 0 (V after t=2 is 0):
    #   t=2: delta = 1 + 0.9*0 - 0.2 = 0.8;              A2 = 0.8
    #   t=1: delta = 0 + 0.9*0.2 - 0.4 = -0.22;          A1 = -0.22 + 0.72*0.8 = 0.356
    #   t=0: delta = 0 + 0.9*0.4 - 0.5 = -0.14;          A0 = -0.14 + 0.72*0.356 = 0.11632
    # Row 1 (V after t=3 is 0):
    #   t=3: delta = 1 + 0 - 0.5 = 0.5;                  A3 = 0.5
    #   t=2: delta = 0 + 0.9*0.5 - 0.5 = -0.05;          A2 = -0.05 + 0.72*0.5 = 0.31
    #   t=1: delta = -0.05;                              A1 = -0.05 + 0.72*0.31 = 0.1732
    #   t=0: delta = 0.5 + 0.9*0.5 - 1.0 = -0.05;        A0 = -0.05 + 0.72*0.1732 = 0.074704
    check(adv, [[0.11632, 0.356, 0.8, 0.0], [0.074704, 0.1732, 0.31, 0.5]], dtype)
    # returns = A + V: row 0 [0.61632, 0.756, 1.0], row 1 [1.074704, 0.6732, 0.81, 1.0]
    check(ret, [[0.61632, 0.756, 1.0, 0.0], [1.074704, 0.6732, 0.81, 1.0]], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gae_gamma_lam_one_is_reward_to_go_minus_value(dtype):
    """With gamma = lam = 1 the deltas telescope: A_t = sum_{k>=t} r_k - V_t."""
    rewards = torch.tensor([[1.0, 2.0, 3.0, BIG], [1.0, 1.0, 1.0, 1.0]], dtype=dtype)
    values = torch.tensor([[0.5, 1.0, 2.0, BIG], [1.0, 2.0, 3.0, 4.0]], dtype=dtype)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    # reward-to-go: row 0 [6, 5, 3]; row 1 [4, 3, 2, 1]
    # minus values: row 0 [5.5, 4, 1]; row 1 [3, 1, -1, -3]
    check(adv, [[5.5, 4.0, 1.0, 0.0], [3.0, 1.0, -1.0, -3.0]], dtype)
    # returns = A + V = reward-to-go
    check(ret, [[6.0, 5.0, 3.0, 0.0], [4.0, 3.0, 2.0, 1.0]], dtype)


# --------------------------------------------------------------------------- policy_loss

# Tokens (clip_range c = 0.2, so the ratio is clipped to [0.8, 1.2]):
#   a: logp - old =  0.5, ratio = e^0.5 = 1.6487, A = +1: unclipped -1.6487, clipped -1.2
#      -> max = -1.2 (clipped term wins: counts for clipfrac)
#   b: logp - old = -0.5, ratio = e^-0.5 = 0.6065, A = -1: unclipped 0.6065, clipped 0.8
#      -> max = 0.8 (clipped term wins)
#   c: logp - old =  0.5, ratio = 1.6487, A = -1: unclipped 1.6487, clipped 1.2
#      -> max = 1.6487 (pessimistic unclipped term; not clipped)
#   d: logp - old =  0.1, ratio = e^0.1 = 1.1052 (in range), A = 2 -> -2 e^0.1 = -2.2103
#   e: logp - old =  0, ratio = 1, A = 0.5 -> -0.5
#   pad: logp - old = 3, A = 100 (would dominate if it leaked)
# loss = (-1.2 + 0.8 + e^0.5 - 2 e^0.1 - 0.5) / 5 = -1.46162 / 5 = -0.292324; clipfrac = 2 / 5
PL_OLD = [[-1.0, -1.0, -1.0], [-2.0, -0.5, -1.0]]
PL_NEW = [[-0.5, -1.5, -0.5], [-1.9, -0.5, 2.0]]
PL_ADV = [[1.0, -1.0, -1.0], [2.0, 0.5, 100.0]]
PL_MASK = [[1, 1, 1], [1, 1, 0]]


@pytest.mark.parametrize("dtype", DTYPES)
def test_policy_loss_clipping(dtype):
    """PPO loss picks the pessimistic term per token; clipfrac counts active clips."""
    logp = torch.tensor(PL_NEW, dtype=dtype)
    old = torch.tensor(PL_OLD, dtype=dtype)
    adv = torch.tensor(PL_ADV, dtype=dtype)
    loss, clipfrac = policy_loss(logp, old, adv, torch.tensor(PL_MASK), clip_range=0.2)
    check(loss, (-1.2 + 0.8 + math.exp(0.5) - 2 * math.exp(0.1) - 0.5) / 5, dtype)
    check(clipfrac, 0.4, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_policy_loss_ratio_one(dtype):
    """With logp == old_logp the loss is -mean(A) over valid tokens and nothing is clipped."""
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.7, -0.9]], dtype=dtype)
    adv = torch.tensor([[1.0, -2.0, 3.0], [0.5, 4.0, 99.0]], dtype=dtype)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    loss, clipfrac = policy_loss(logp, logp.clone(), adv, mask, clip_range=0.2)
    # -(1 - 2 + 3 + 0.5 + 4) / 5 = -6.5 / 5 = -1.3
    check(loss, -1.3, dtype)
    check(clipfrac, 0.0, dtype)


# --------------------------------------------------------------------------- value_loss


@pytest.mark.parametrize("dtype", DTYPES)
def test_value_loss_clipped_error_larger(dtype):
    """Value loss is 0.5 * mean of max(unclipped, clipped) squared errors over valid tokens."""
    # clip_range 0.2, V_clip = old + clip(V - old, -0.2, 0.2):
    #   t1: old 0, V 0.5, R 1:  V_clip 0.2;  (0.5-1)^2 = 0.25 < (0.2-1)^2 = 0.64  -> 0.64 (clipped)
    #   t2: old 0, V 0.1, R 1:  V_clip 0.1;  both (0.1-1)^2 = 0.81               -> 0.81
    #   t3: old 1, V 0,   R -1: V_clip 0.8;  (0+1)^2 = 1 < (0.8+1)^2 = 3.24      -> 3.24 (clipped)
    #   t4: old 0, V 1,   R 0:  V_clip 0.2;  1^2 = 1 > 0.2^2 = 0.04              -> 1.0
    #   pads: V 50, R -50 (error 10000 if it leaked)
    # loss = 0.5 * (0.64 + 0.81 + 3.24 + 1.0) / 4 = 0.5 * 5.69 / 4 = 0.71125
    values = torch.tensor([[0.5, 0.1, 0.0], [1.0, 50.0, 50.0]], dtype=dtype)
    old = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]], dtype=dtype)
    returns = torch.tensor([[1.0, 1.0, -1.0], [0.0, -50.0, -50.0]], dtype=dtype)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    check(value_loss(values, old, returns, mask, clip_range=0.2), 0.71125, dtype)


def test_value_loss_single_clipped_token():
    """A lone token whose clipped prediction is further from the return uses that error."""
    # old 0, V 1, R 2, c 0.5: V_clip 0.5; (1-2)^2 = 1 < (0.5-2)^2 = 2.25 -> 0.5 * 2.25 = 1.125
    loss = value_loss(
        torch.tensor([[1.0]]),
        torch.tensor([[0.0]]),
        torch.tensor([[2.0]]),
        torch.tensor([[1]]),
        clip_range=0.5,
    )
    check(loss, 1.125, torch.float32)


# --------------------------------------------------------------------------- kl_penalty

KL_LOGP = [[-1.0, -2.0], [-0.5, -3.0]]
KL_REF = [[-1.5, -1.0], [-0.5, -1.0]]
# d = logp - ref = [[0.5, -1.0], [0.0, -2.0]]


@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_penalty_kinds(dtype):
    """k1 = d, k2 = d^2 / 2, k3 = exp(-d) - 1 + d, elementwise."""
    logp, ref = torch.tensor(KL_LOGP, dtype=dtype), torch.tensor(KL_REF, dtype=dtype)
    k1 = kl_penalty(logp, ref, "k1")
    check(k1, [[0.5, -1.0], [0.0, -2.0]], dtype)
    assert (k1 < 0).any()  # k1 is unbiased but not a pointwise bound: it can be negative
    # 0.5 * [0.25, 1, 0, 4]
    check(kl_penalty(logp, ref, "k2"), [[0.125, 0.5], [0.0, 2.0]], dtype)
    # d=0.5: e^-0.5 - 0.5 = 0.10653; d=-1: e^1 - 2 = 0.71828; d=0: 0; d=-2: e^2 - 3 = 4.38906
    k3 = [[math.exp(-0.5) - 0.5, math.e - 2.0], [0.0, math.exp(2.0) - 3.0]]
    check(kl_penalty(logp, ref, "k3"), k3, dtype)


def test_kl_k3_nonnegative():
    """k3 = e^x - 1 - x >= 0 for every x (tangent line of exp at 0)."""
    gen = torch.Generator().manual_seed(0)
    logp = torch.randn(8, 16, generator=gen, dtype=torch.float64) * 3
    ref = torch.randn(8, 16, generator=gen, dtype=torch.float64) * 3
    assert (kl_penalty(logp, ref, "k3") >= 0).all()


def test_kl_unknown_kind_raises():
    """An unknown estimator name raises ValueError."""
    with pytest.raises(ValueError):
        kl_penalty(torch.zeros(1, 2), torch.zeros(1, 2), "k4")


# --------------------------------------------------------------------------- sequence_scores


@pytest.mark.parametrize("dtype", DTYPES)
def test_sequence_scores_length_penalty(dtype):
    """Sum of valid log-probs divided by length ** length_penalty."""
    logp = torch.tensor([[-1.0, -2.0, -3.0, -BIG], [-4.0, -2.0, -BIG, -BIG]], dtype=dtype)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    # sums: -6 (length 3) and -6 (length 2)
    check(sequence_scores(logp, mask), [-2.0, -3.0], dtype)  # default 1: -6/3, -6/2
    check(sequence_scores(logp, mask, length_penalty=0.0), [-6.0, -6.0], dtype)
    # 0.5: -6/sqrt(3) = -3.4641, -6/sqrt(2) = -4.2426
    half = [-6 / math.sqrt(3), -6 / math.sqrt(2)]
    check(sequence_scores(logp, mask, length_penalty=0.5), half, dtype)


# --------------------------------------------------------------------------- rank_loss


@pytest.mark.parametrize("dtype", DTYPES)
def test_rank_loss_hand_values(dtype):
    """Sum of relu(s_i - s_j) over pairs with r_i < r_j; ties add nothing; mean over prompts."""
    scores = torch.tensor([[-0.5, -1.0, -2.0], [-1.0, -2.0, -0.5]], dtype=dtype)
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, 1.0]], dtype=dtype)
    # prompt 0 (order 0 < 1 < 2): relu(-0.5+1) + relu(-0.5+2) + relu(-1+2) = 0.5 + 1.5 + 1 = 3
    # prompt 1: (0,1): relu(-1+2) = 1; (0,2): relu(-1+0.5) = 0; 1 and 2 tie -> nothing
    #           (counting the tie as (2,1) would add relu(-0.5+2) = 1.5)
    # mean over 2 prompts: (3 + 1) / 2 = 2
    check(rank_loss(scores, rewards), 2.0, dtype)


def test_rank_loss_all_ties_is_zero():
    """A prompt whose rewards all tie contributes nothing, however the scores disagree."""
    scores = torch.tensor([[3.0, -3.0, 0.0]])
    rewards = torch.tensor([[1.0, 1.0, 1.0]])
    check(rank_loss(scores, rewards), 0.0, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rank_loss_nan_reward_is_absent(dtype):
    """A NaN reward takes part in no pair; the mean still runs over all prompts."""
    scores = torch.tensor([[-1.0, BIG, -3.0], [BIG, -BIG, 0.0]], dtype=dtype, requires_grad=True)
    rewards = torch.tensor([[1.0, NAN, 2.0], [NAN, NAN, 0.0]], dtype=dtype)
    # prompt 0: only (0, 2): relu(-1 + 3) = 2; prompt 1: one real candidate -> 0
    # mean over 2 prompts: (2 + 0) / 2 = 1
    loss = rank_loss(scores, rewards)
    check(loss, 1.0, dtype)
    loss.backward()
    # d/ds: prompt 0 pair (0, 2) active -> +1 on s0, -1 on s2, halved by the mean; absent ones 0
    check(scores.grad, [[0.5, 0.0, -0.5], [0.0, 0.0, 0.0]], dtype)


# --------------------------------------------------------------------------- ranking_rm_loss


@pytest.mark.parametrize("dtype", DTYPES)
def test_ranking_rm_loss_three_ordered_pairs(dtype):
    """K=3 fully ranked: mean of -logsigmoid(r_better - r_worse) over the 3 pairs."""
    # response 0 ranked best but scored lowest, so the direction of the margin matters.
    rewards = torch.tensor([[0.0, 1.0, 3.0]], dtype=dtype)
    preference = torch.tensor([[3, 2, 1]])
    # -logsigmoid(m) = log(1 + e^-m)
    # (0>1): m = -1 -> log(1 + e^1) = 1.313262
    # (0>2): m = -3 -> log(1 + e^3) = 3.048587
    # (1>2): m = -2 -> log(1 + e^2) = 2.126928
    # mean = 6.488777 / 3 = 2.162926
    want = (math.log1p(math.e) + math.log1p(math.exp(3)) + math.log1p(math.exp(2))) / 3
    check(ranking_rm_loss(rewards, preference), want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ranking_rm_loss_ties_pooled_over_batch(dtype):
    """Tied responses form no pair; the mean pools all ordered pairs of the batch."""
    rewards = torch.tensor([[0.5, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=dtype)
    preference = torch.tensor([[1.0, 1.0, 0.0], [2.0, 1.0, 0.0]], dtype=dtype)
    # prompt 0 (0 and 1 tie): (0>2): m = -0.5 -> log(1 + e^0.5) = 0.974077
    #                         (1>2): m = -1   -> log(1 + e^1)   = 1.313262
    # prompt 1: (0>1): m = 1 -> log(1 + e^-1) = 0.313262; (0>2): the same; (1>2): m = 0 -> log 2
    # 5 pairs: (0.974077 + 1.313262 + 2 * 0.313262 + 0.693147) / 5 = 3.607009 / 5 = 0.721402
    # (a per-prompt mean would give 0.79178 instead)
    want = (
        math.log1p(math.exp(0.5)) + math.log1p(math.e) + 2 * math.log1p(math.exp(-1)) + math.log(2)
    ) / 5
    check(ranking_rm_loss(rewards, preference), want, dtype)


def test_ranking_rm_loss_nothing_ordered_is_zero():
    """With every preference tied there is no pair and the loss is 0."""
    rewards = torch.tensor([[5.0, -3.0, 0.0], [1.0, 2.0, 3.0]])
    preference = torch.ones(2, 3)
    check(ranking_rm_loss(rewards, preference), 0.0, torch.float32)


# --------------------------------------------------------------------------- gradients


def test_gradients_flow():
    """rank_loss and policy_loss backpropagate finite gradients matching the hand derivatives."""
    scores = torch.tensor([[-0.5, -1.0, -2.0], [-1.0, -2.0, -0.5]], requires_grad=True)
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, 1.0]])
    rank_loss(scores, rewards).backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all()
    # prompt 0: (s0-s1) + (s0-s2) + (s1-s2), all active -> [2, 0, -2]
    # prompt 1: only (s0-s1) active -> [1, -1, 0]
    # halved by the mean over 2 prompts
    check(scores.grad, [[1.0, 0.0, -1.0], [0.5, -0.5, 0.0]], torch.float32)

    logp = torch.tensor(PL_NEW, requires_grad=True)
    loss, _ = policy_loss(
        logp, torch.tensor(PL_OLD), torch.tensor(PL_ADV), torch.tensor(PL_MASK), clip_range=0.2
    )
    loss.backward()
    assert logp.grad is not None and torch.isfinite(logp.grad).all()
    # d(-A * ratio)/dlogp = -A * ratio, / 5 tokens; clipped tokens (a, b) and the pad get 0:
    #   c: -(-1) e^0.5 / 5;  d: -2 e^0.1 / 5;  e: -0.5 / 5
    want = [[0.0, 0.0, math.exp(0.5) / 5], [-2 * math.exp(0.1) / 5, -0.1, 0.0]]
    check(logp.grad, want, torch.float32)


def test_random_argmax_breaks_ties_uniformly_and_skips_absent():
    """Every maximum is equally likely (no first-position bias); NaN is never picked."""
    values = torch.tensor([[1.0, 1.0, 0.0, 1.0], [float("nan"), 2.0, 2.0, -1.0]])
    generator = torch.Generator().manual_seed(0)
    picks = torch.stack([random_argmax(values, generator) for _ in range(3000)])
    first = torch.bincount(picks[:, 0], minlength=4).float() / 3000
    second = torch.bincount(picks[:, 1], minlength=4).float() / 3000
    assert first[2] == 0 and torch.allclose(first[[0, 1, 3]], torch.full((3,), 1 / 3), atol=0.04)
    assert second[0] == 0 and second[3] == 0
    assert torch.allclose(second[[1, 2]], torch.full((2,), 0.5), atol=0.04)
    # A unique maximum is always chosen.
    assert random_argmax(torch.tensor([[0.0, 3.0, 1.0]]), generator).item() == 1
