"""The math every alignment algorithm shares, as pure tensor functions.

Conventions (part of the public API):

* ``[B, T]`` per-token tensors come with a right-padded 0/1 ``mask`` of the same shape
  (1 = a real response token, 0 = padding after the response ended).
* ``[B, K]`` tensors hold one value per response for K responses to each of B prompts.
* Every function is dtype-agnostic: it computes in the dtype of its inputs and returns that dtype
  (booleans and counts aside).

Nothing here touches a model; the plugins compose these functions, and ``tests/test_ops.py``
pins each of them against values worked out by hand.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "aggregate_loss",
    "best_worst_pairs",
    "clipped_surrogate",
    "demonstration_nll",
    "discounted_returns",
    "dpo_loss",
    "gae",
    "gather_last",
    "group_advantages",
    "kl_penalty",
    "kl_shaped_rewards",
    "last_positions",
    "leave_one_out_advantages",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "policy_loss",
    "preference_pairs",
    "random_argmax",
    "rank_loss",
    "ranking_rm_loss",
    "reinforce_pp_advantages",
    "sequence_scores",
    "token_entropy",
    "value_loss",
]

KL_KINDS = ("k1", "k2", "k3")


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1.

    ``sum(x * mask) / sum(mask)``; over all elements when ``dim`` is None, else along ``dim``.
    An all-zero mask gives 0 rather than NaN, so an empty batch cannot poison a loss.
    """
    valid = mask.bool()
    # Select rather than multiply, so inf or NaN in padding cannot leak into the mean.
    kept = torch.where(valid, x, torch.zeros_like(x))
    count = valid.to(x.dtype)
    total = kept.sum() if dim is None else kept.sum(dim)
    count = count.sum() if dim is None else count.sum(dim)
    return total / count.clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over the positions where ``mask`` is 1 (Bessel-corrected by default)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum().to(x.dtype)
        # With a single valid element the unbiased variance is undefined; 0 keeps whitening finite.
        var = var * n / (n - 1) if n > 1 else torch.zeros_like(var)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise ``x`` to unit variance (and zero mean) over the masked positions.

    ``(x - mean) / sqrt(var + 1e-8)`` with mean and unbiased variance taken over ``mask == 1``;
    with ``shift_mean=False`` the mean is added back, so only the scale changes (used for
    rewards, whose sign carries meaning). Padded positions are returned as 0.
    Source: the advantage whitening of Ziegler et al. 2019 / TRL ``masked_whiten``. Half
    precision inputs are whitened in fp32 and returned in their dtype: in fp16 a small variance
    underflows to 0 and the 1e-8 is 0 too, so the division was by zero (inf advantages).
    """
    if x.dtype in (torch.float16, torch.bfloat16):
        return masked_whiten(x.float(), mask, shift_mean).to(x.dtype)
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


def last_positions(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of ``mask`` ``[N, L]`` -> ``[N]``; -1 where a row has none.

    ``max(i for i in range(L) if mask[n, i])``: a response's last token (its eos when it ended),
    in a conversation the last assistant reply's (user tokens sit between the masked ones), or a
    whole sequence's last real token under an attention mask.
    """
    valid = mask.bool()
    positions = torch.arange(valid.shape[-1], device=valid.device).expand_as(valid)
    return torch.where(valid, positions, -1).max(-1).values


def gather_last(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values[n, last_positions(mask)[n]]`` ``[N, L]`` -> ``[N]``: the value at each row's last
    masked position (position 0 for a row with none).

    The one last-token readout: a reward model's score of a sequence (its scalar at the last real
    token), whether a response ended with eos (its token there).
    """
    last = last_positions(mask).clamp(min=0)
    return values.gather(-1, last[:, None]).squeeze(-1)


def demonstration_nll(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The SFT loss: token-mean negative log-likelihood of demonstrations, ``[N, T]`` -> ``[]``.

    ``-sum(logprobs * mask) / sum(mask)`` (:func:`masked_mean`): every token of the batch weighs
    the same, so a long demonstration counts more than a short one. Stage 1, PPO-ptx (Ouyang et
    al. 2022, eq. 2) and RRHF's / RFT's / SFT's loss on the best candidate all use it.
    """
    return -masked_mean(logprobs, mask)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
    turn_index: torch.Tensor | None = None,
    turn_gamma: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over token sequences, skipping masked positions.

    ``delta_t = r_t + g_t * V_next - V_t`` and ``A_t = delta_t + g_t * lam * A_next``, where
    "next" is the next position where ``mask`` is 1: positions where it is 0 (padding, and the
    user's messages inside a conversation) are skipped, and the value after the last valid
    token is 0 (the episode has ended). ``g_t`` is ``gamma`` within a turn; with
    ``turn_index`` ``[B, T]`` (the assistant turn of each token, see :class:`alignbench.Turns`)
    it is ``turn_gamma`` from a turn's last token to the next turn's first, so rewards placed at
    later turns reach earlier ones discounted per turn, separately from the per-token gamma.
    Returns ``(advantages, returns)`` with ``returns = advantages + values``, both ``[B, T]``
    and 0 where ``mask`` is 0. On a right-padded single response it is the textbook recursion.
    Source: Schulman et al. 2016, "High-Dimensional Continuous Control Using GAE", eq. 16.
    """
    valid = mask.bool()
    rewards = torch.where(valid, rewards, torch.zeros_like(rewards))
    values = torch.where(valid, values, torch.zeros_like(values))
    advantages = torch.zeros_like(values)
    last = torch.zeros_like(values[:, 0])
    next_value = torch.zeros_like(last)
    next_turn = torch.full_like(valid[:, 0], -1, dtype=torch.long)
    for t in reversed(range(values.shape[1])):
        here = valid[:, t]
        discount: torch.Tensor | float = gamma
        if turn_index is not None:
            crossing = (next_turn >= 0) & (turn_index[:, t] != next_turn)
            discount = torch.where(crossing, turn_gamma, gamma).to(values.dtype)
            next_turn = torch.where(here, turn_index[:, t], next_turn)
        delta = rewards[:, t] + discount * next_value - values[:, t]
        advantage = delta + discount * lam * last
        advantages[:, t] = torch.where(here, advantage, torch.zeros_like(advantage))
        last = torch.where(here, advantage, last)
        next_value = torch.where(here, values[:, t], next_value)
    returns = (advantages + values) * valid.to(values.dtype)
    return advantages, returns


def place_turn_rewards(turn_rewards: torch.Tensor, turn_index: torch.Tensor) -> torch.Tensor:
    """Per-token rewards ``[N, T]`` with turn t's reward ``turn_rewards[n, t]`` on the last
    token of assistant turn t (``turn_index`` ``[N, T]``: each token's turn, -1 elsewhere) and
    0 everywhere else: the dense reward a per-turn critic credits turn by turn."""
    out = torch.zeros(turn_index.shape, dtype=turn_rewards.dtype, device=turn_rewards.device)
    rows = torch.arange(turn_index.shape[0], device=turn_index.device)
    for t in range(turn_rewards.shape[1]):
        end = last_positions(turn_index == t)
        present = end >= 0
        out[rows[present], end[present]] += turn_rewards[present, t]
    return out


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate loss and the share of tokens where clipping was active.

    ``ratio = exp(logp - old_logp)``; per token ``max(-A * ratio, -A * clip(ratio, 1 - c, 1 + c))``;
    the loss is its token mean over all valid tokens of the batch. ``clipfrac`` is the token mean
    of ``[clipped term > unclipped term]``. Source: Schulman et al. 2017, eq. 7.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).to(logprobs.dtype), mask)
    return loss, clipfrac


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> torch.Tensor:
    """Clipped value loss: ``0.5 * mean(max((V - R)^2, (V_clip - R)^2))`` over valid tokens.

    ``V_clip = old_V + clip(V - old_V, -c, c)`` keeps the critic from moving far in one update.
    Source: the OpenAI baselines PPO2 value clipping, as used by Ziegler et al. 2019.
    """
    clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    per_token = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return 0.5 * masked_mean(per_token, mask)


def kl_penalty(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1"
) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from log-probabilities of sampled tokens.

    With ``d = logp - ref_logp``: ``k1 = d`` (unbiased, can be negative), ``k2 = d^2 / 2``,
    ``k3 = exp(-d) - 1 + d`` (unbiased and never negative). Elementwise; mask it yourself.
    Source: J. Schulman, "Approximating KL divergence" (2020).
    """
    delta = logprobs - ref_logprobs
    if kind == "k1":
        return delta
    if kind == "k2":
        return 0.5 * delta**2
    if kind == "k3":
        return torch.exp(-delta) - 1.0 + delta
    raise ValueError(f"unknown KL estimator {kind!r}: use one of {', '.join(KL_KINDS)}")


def sequence_scores(
    logprobs: torch.Tensor, mask: torch.Tensor, length_penalty: float = 1.0
) -> torch.Tensor:
    """Length-normalised log-probability of each sequence: ``sum(logp) / length ** length_penalty``.

    ``logprobs`` and ``mask`` are ``[B, T]``; returns ``[B]``. ``length_penalty=0`` gives the
    plain sum, ``1`` the mean log-probability per token (RRHF's ``p_i``, Yuan et al. 2023, eq. 1).
    """
    valid = mask.bool()
    lengths = valid.to(logprobs.dtype).sum(-1).clamp(min=1)
    total = torch.where(valid, logprobs, torch.zeros_like(logprobs)).sum(-1)
    return total / lengths**length_penalty


def random_argmax(values: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Index ``[B]`` of each row's largest value in ``values`` ``[B, K]``, ties broken at random.

    ``torch.argmax`` returns the *first* maximum, which silently favours whatever candidate comes
    first in a group (a fairness bug: a fixed candidate listed first wins every tie). Here every
    maximum of a row is equally likely: ``argmax(where(values == max, u, -1))`` with ``u ~
    U[0, 1)`` drawn from ``generator``. NaN marks an absent candidate and is never chosen (a row
    of NaNs gives index 0).
    """
    present = ~torch.isnan(values)
    filled = values.masked_fill(~present, float("-inf"))
    top = filled.max(dim=1, keepdim=True).values
    noise = torch.rand(values.shape, generator=generator)
    tied = (filled == top) & present
    return torch.where(tied, noise, torch.full_like(noise, -1.0)).argmax(dim=1)


def rank_loss(scores: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """RRHF ranking loss: make the model's scores follow the order of the rewards.

    For each prompt b, ``sum over (i, j) with rewards[b, i] < rewards[b, j] of
    relu(scores[b, i] - scores[b, j])``; the result is the mean over prompts. Ties add nothing,
    and a NaN reward marks an absent candidate (it takes part in no pair).
    Source: Yuan et al. 2023, "RRHF: Rank Responses to Align Language Models", eq. 2.
    """
    worse = rewards.unsqueeze(2) < rewards.unsqueeze(1)  # [B, K, K]: i ranked below j
    gaps = torch.relu(scores.unsqueeze(2) - scores.unsqueeze(1))
    per_prompt = torch.where(worse, gaps, torch.zeros_like(gaps)).sum(dim=(1, 2))
    return per_prompt.mean()


def ranking_rm_loss(rewards: torch.Tensor, preference: torch.Tensor) -> torch.Tensor:
    """Reward-model loss for K ranked responses per prompt (pairwise Bradley-Terry).

    ``rewards`` are the model's scalar scores ``[B, K]``; ``preference`` is ``[B, K]`` with a higher
    value for a better-ranked response. The loss is the mean, over every strictly ordered pair
    (i better than j) of every prompt in the batch, of ``-logsigmoid(rewards_i - rewards_j)``;
    0 when no pair is ordered. Source: Ouyang et al. 2022, eq. 1 (all C(K, 2) pairs of a group).
    """
    better = preference.unsqueeze(2) > preference.unsqueeze(1)  # [B, K, K]: i preferred to j
    margins = rewards.unsqueeze(2) - rewards.unsqueeze(1)
    losses = -F.logsigmoid(margins)
    return masked_mean(losses, better)


# --- critic-free policy gradient (GRPO, RLOO, REINFORCE++) ---

SCALE_KINDS = ("group", "batch", "none")
LOSS_TYPES = ("seq_mean", "token_mean", "dr_grpo")


def group_advantages(
    rewards: torch.Tensor, scale: str = "group", eps: float = 1e-4
) -> torch.Tensor:
    """GRPO's group-relative advantage of each of K responses to each of B prompts.

    ``A[b, k] = (r[b, k] - mean_k r[b]) / (std + eps)`` with ``std`` the unbiased standard deviation
    of the prompt's group (``scale="group"``, the paper), of the whole batch (``"batch"``), or no
    division at all (``"none"``: Dr. GRPO, Liu et al. 2025, which finds the division biases
    updates towards questions that are too easy or too hard). ``rewards`` ``[B, K]``, K >= 2;
    returns ``[B, K]``. Source: Shao et al. 2024, "DeepSeekMath", sec. 4.1.2 (outcome supervision).
    """
    if rewards.shape[1] < 2:
        raise ValueError(f"group advantages need K >= 2 responses per prompt, got {rewards.shape}")
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    if scale == "group":
        return centered / (rewards.std(dim=1, keepdim=True) + eps)
    if scale == "batch":
        return centered / (rewards.std() + eps)
    if scale == "none":
        return centered
    raise ValueError(f"unknown advantage scale {scale!r}: use one of {', '.join(SCALE_KINDS)}")


def leave_one_out_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """RLOO: each response's reward minus the mean reward of the other K - 1 responses.

    ``A[b, i] = r[b, i] - (sum_k r[b, k] - r[b, i]) / (K - 1) = K / (K - 1) * (r[b, i] - mean_k
    r[b])``: an unbiased baseline, since it does not depend on response i. ``rewards`` ``[B, K]``,
    K >= 2; returns ``[B, K]``. Source: Ahmadian et al. 2024, "Back to Basics: Revisiting
    REINFORCE Style Optimization for Learning from Human Feedback in LLMs", eq. 5 (after Kool
    et al. 2019).
    """
    k = rewards.shape[1]
    if k < 2:
        raise ValueError(f"a leave-one-out baseline needs K >= 2 responses, got {rewards.shape}")
    baseline = (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)
    return rewards - baseline


def clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float,
    clip_high: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, elementwise (per token ``[N, T]`` or per sequence ``[N]``).

    ``ratio = exp(logp - old_logp)``; loss ``= max(-A * ratio, -A * clip(ratio, 1 - clip_low,
    1 + clip_high))`` (``clip_high`` defaults to ``clip_low``; DAPO's "clip-higher" raises it).
    Returns ``(loss, clipped)``, both shaped like ``logprobs``; ``clipped`` is 1 where the clipped
    term was the active one. Unreduced, so the caller chooses how to aggregate (see
    :func:`aggregate_loss`); :func:`policy_loss` is its token mean. Source: Schulman et al. 2017,
    eq. 7; Yu et al. 2025 (DAPO), sec. 3.1.
    """
    high = clip_low if clip_high is None else clip_high
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + high)
    return torch.maximum(unclipped, clipped), (clipped > unclipped).to(logprobs.dtype)


def aggregate_loss(
    per_token: torch.Tensor, mask: torch.Tensor, loss_type: str, max_tokens: int | None = None
) -> torch.Tensor:
    """Reduce a per-token loss ``[N, T]`` to a scalar, the three ways GRPO variants do.

    * ``seq_mean``: mean over each sequence's tokens, then over sequences (GRPO, Shao et al.
      2024, eq. 3: ``1/G sum_i 1/|o_i| sum_t``); a long response's tokens weigh less.
    * ``token_mean``: mean over every valid token of the batch (DAPO, Yu et al. 2025, eq. 8).
    * ``dr_grpo``: sum over every valid token divided by the constant ``N * max_tokens``
      (Dr. GRPO, Liu et al. 2025, "Understanding R1-Zero-Like Training"): no length bias at all.
    """
    if loss_type == "seq_mean":
        return masked_mean(per_token, mask, dim=1).mean()
    if loss_type == "token_mean":
        return masked_mean(per_token, mask)
    if loss_type == "dr_grpo":
        if not max_tokens:
            raise ValueError("loss_type dr_grpo needs max_tokens (the generation limit)")
        kept = torch.where(mask.bool(), per_token, torch.zeros_like(per_token))
        return kept.sum() / (per_token.shape[0] * max_tokens)
    raise ValueError(f"unknown loss_type {loss_type!r}: use one of {', '.join(LOSS_TYPES)}")


def kl_shaped_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """Per-token rewards: ``-beta * kl_t`` on every valid token, plus the score on the last one.

    ``scores`` ``[N]`` (one reward per response), ``kl`` ``[N, T]`` (a per-token KL estimate, see
    :func:`kl_penalty`); returns ``[N, T]``, 0 on padding. Source: Ziegler et al. 2019, eq. 2 (the
    KL-shaped reward PPO and REINFORCE++ optimise).
    """
    valid = mask.bool()
    rewards = torch.where(valid, -beta * kl, torch.zeros_like(kl))
    last = last_positions(valid).clamp(min=0)
    rows = torch.arange(rewards.shape[0], device=valid.device)
    rewards[rows, last] = rewards[rows, last] + scores.to(rewards.dtype)
    return rewards


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Reward-to-go ``G_t = sum_{s >= t} gamma^(s - t) r_s`` within each response, ``[N, T]``.

    No critic: this is :func:`gae` with values 0 and lambda 1. 0 on padding.
    """
    returns, _ = gae(rewards, torch.zeros_like(rewards), mask, gamma, 1.0)
    return returns


def reinforce_pp_advantages(
    scores: torch.Tensor,
    kl: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    gamma: float = 1.0,
    subtract_mean: bool = True,
) -> torch.Tensor:
    """REINFORCE++ advantages: KL-shaped returns, normalised over the whole batch.

    ``r_t = -beta * kl_t (+ score on the last token)``, ``G_t = sum_{s >= t} gamma^(s - t) r_s``,
    then ``A = (G - mean(G)) / std(G)`` over every valid token of the batch: the batch mean is the
    global baseline that replaces GRPO's per-prompt one. ``subtract_mean=False`` only divides by
    ``std(G)``, for a baseline already subtracted from ``scores`` (ReMax's greedy reward, Li et al.
    2024). Unbiased std, ``+ 1e-8`` inside the square root. ``scores`` ``[N]``, ``kl`` and
    ``mask`` ``[N, T]``; returns ``[N, T]``, 0 on padding. Source: Hu 2025, "REINFORCE++: A
    Simple and Efficient Approach for Aligning Large Language Models", sec. 3 (token-level KL
    penalty; global advantage normalisation).
    """
    returns = discounted_returns(kl_shaped_rewards(scores, kl, mask, beta), mask, gamma)
    if subtract_mean:
        return masked_whiten(returns, mask)
    scaled = returns * torch.rsqrt(masked_var(returns, mask) + 1e-8)
    return torch.where(mask.bool(), scaled, torch.zeros_like(scaled))


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy ``-sum_v p_v log p_v`` of each position: ``[N, T, V]`` logits -> ``[N, T]``."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


# --- preference optimisation (DPO, IPO, cDPO) ---

PREFERENCE_LOSSES = ("sigmoid", "ipo", "conservative")


def preference_pairs(preference: torch.Tensor) -> torch.Tensor:
    """Every strictly ordered pair of every group: ``[P, 3]`` rows ``(b, i, j)``, i preferred to j.

    ``preference`` ``[B, K]`` is higher for a better-ranked response; ties and NaN (an absent or
    unlabelled response) make no pair. These are exactly the pairs :func:`ranking_rm_loss`
    averages over (all C(K, 2) pairs of a fully ranked group), in row-major order of ``(b, i, j)``.
    Source: Ouyang et al. 2022 (InstructGPT), eq. 1: all C(K, 2) comparisons of a ranked group.
    """
    better = preference.unsqueeze(2) > preference.unsqueeze(1)  # [B, K, K]: i preferred to j
    return torch.nonzero(better)


def best_worst_pairs(
    rewards: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The chosen (best) and rejected (worst) response of each group of K scored responses.

    ``rewards`` ``[B, K]`` (NaN = absent); returns ``(chosen [B], rejected [B], decided [B])``:
    indices of a maximum and of a minimum of each row, each tie broken at random by
    :func:`random_argmax`, and ``decided = max > min`` (False where every reward ties: such a
    group has no preference to learn from, and its indices are meaningless). Source: the
    best-vs-worst pair of online iterative DPO, Dong et al. 2024, "RLHF Workflow: From Reward
    Modeling to Online RLHF".
    """
    chosen = random_argmax(rewards, generator)
    rejected = random_argmax(-rewards, generator)
    rows = torch.arange(rewards.shape[0])
    decided = rewards[rows, chosen] > rewards[rows, rejected]
    return chosen, rejected, decided


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss of B preference pairs and the implicit rewards of both sides.

    Inputs are sequence log-probabilities ``[B]`` (sums over response tokens) of the chosen and
    rejected responses under the policy and the frozen reference. With
    ``h = (pi_c - ref_c) - (pi_r - ref_r)`` and ``s = log sigmoid``, the loss is the mean over
    pairs of:

    * ``sigmoid``: ``-s(beta * h)`` (Rafailov et al. 2023, "Direct Preference Optimization", eq. 7);
    * ``conservative``: ``-(1 - eps) * s(beta * h) - eps * s(-beta * h)`` with
      ``eps = label_smoothing`` in [0, 0.5), the chance a label is flipped (cDPO: Mitchell 2023,
      "A note on DPO with noisy preferences and relationship to IPO");
    * ``ipo``: ``(h - 1 / (2 * beta)) ** 2``, beta playing IPO's tau (Azar et al. 2023, "A General
      Theoretical Paradigm to Understand Learning from Human Preferences", eq. 17). On sequence
      sums, as in the paper (TRL divides the log-probabilities by the length first).

    Returns ``(loss, chosen_rewards [B], rejected_rewards [B])`` where the implicit reward is
    ``beta * (pi - ref)``, detached (for logging: accuracy is ``chosen > rejected``).
    """
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    chosen_logratio = policy_chosen - ref_chosen
    rejected_logratio = policy_rejected - ref_rejected
    h = chosen_logratio - rejected_logratio
    if loss_type not in PREFERENCE_LOSSES:
        raise ValueError(
            f"unknown loss_type {loss_type!r}: use one of {', '.join(PREFERENCE_LOSSES)}"
        )
    if loss_type != "conservative" and label_smoothing != 0:
        raise ValueError(f"label_smoothing applies to loss_type conservative, not {loss_type}")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if loss_type == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    else:
        eps = label_smoothing
        losses = -(1.0 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    return (
        losses.mean(),
        beta * chosen_logratio.detach(),
        beta * rejected_logratio.detach(),
    )
