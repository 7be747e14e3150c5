"""GRPO: Group Relative Policy Optimization (Shao et al. 2024, "DeepSeekMath", sec. 4.1).

PPO without a critic. K responses are sampled for every prompt; a response's advantage is its
reward relative to the others of its group (``ops.group_advantages``), the same for all its tokens.
The policy takes PPO's clipped step on it, and the KL to the frozen SFT reference is a term of the
*loss* (k3 estimator), not a reward penalty as in PPO. Two hooks, in the order they run:

* rollout: sample K responses per prompt; the reference's log-probs when ``beta > 0`` (with
  ``beta = 0`` no reference model exists: nothing is loaded, run or charged);
* update: group-relative advantages, then ``ppo_epochs`` passes over shuffled mini-batches of the
  clipped loss plus ``beta * KL``, reduced over tokens as ``loss_type`` says.

Scoring is the core's default (the configured reward); the recipe card is :class:`GRPOConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

import alignbench
from alignbench import (
    AlgorithmConfig,
    Batch,
    ConfigError,
    Run,
    SamplingParams,
    distributed,
    ops,
    response_logits,
    response_logprobs,
    token_logprobs,
)

#: The ``+ eps`` under the std of ``ops.group_advantages`` (its default), also used with the
#: std of every rank's rewards (``scale_rewards=batch``).
ADVANTAGE_EPS = 1e-4


@dataclass
class GRPOConfig(AlgorithmConfig):
    """GRPO recipe card: what each key does and where its default comes from.

    [S24] Shao et al. 2024, "DeepSeekMath" (GRPO); [Y25] Yu et al. 2025, "DAPO"; [L25] Liu et al.
    2025, "Understanding R1-Zero-Like Training" (Dr. GRPO); [TRL] Hugging Face TRL's GRPOConfig.
    """

    # K, the group: [S24] samples 64 per question; 4 gives a step the same 64 sequences as PPO's
    # default (16 prompts x 4), so the two compare at equal batch size.
    samples_per_prompt: int = 4
    # Advantage = (r - group mean) / scale: `group` std [S24], `batch` std [TRL scale_rewards],
    # `none` = Dr. GRPO [L25] (the division favours groups that are all right or all wrong).
    scale_rewards: str = "group"
    # PPO clip epsilon [S24, TRL: 0.2]; clip_eps_high > 0 is DAPO's "clip-higher" upper bound
    # ([Y25] 0.28); 0 = symmetric.
    clip_eps: float = 0.2
    clip_eps_high: float = 0.0
    # KL-to-reference weight in the loss [S24: 0.04]. 0 = no reference model is loaded (TRL's
    # default today): the policy is then anchored only by the clip.
    beta: float = 0.04
    # [S24] eq. 4 uses k3 (unbiased, never negative), as TRL does.
    kl_estimator: str = "k3"
    # How per-token losses become one number: `seq_mean` (mean per response, then over
    # responses: [S24] eq. 3), `token_mean` (over all tokens of the batch: [Y25] eq. 8, TRL's
    # "dapo"), `dr_grpo` (sum / (max_new_tokens x responses): [L25], no length bias).
    loss_type: str = "seq_mean"
    # [S24]: "the policy model only has a single update following each exploration stage";
    # TRL num_iterations=1. More epochs or mini-batches make the clipped ratio bite.
    ppo_epochs: int = 1
    num_minibatches: int = 1
    # The PPO policy lr tuned on this task (README; [S24] used 1e-6 on a 7B model).
    lr: float = 3e-4
    # [TRL] max_grad_norm 1.0, no weight decay.
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    # `sampling` (AlgorithmConfig): temperature 1 from the full distribution [S24, TRL], as the
    # ratio assumes.

    # true = the reference's and the policy's forwards of Llama-shaped models run
    # alignbench.lean_forward (the response's outputs only, the last layer only where it is
    # read, oneDNN's kernels on the CPU), and so does the rollout's prompt pass: equal within
    # rounding, not bit for bit, so off by default (tests/test_lean_forward.py).
    lean_forward: bool = False

    def validate(self) -> None:
        """Refuse option values GRPO cannot run with (one line naming the key and the fix)."""
        if self.samples_per_prompt < 2:
            raise ConfigError(
                f"algo.samples_per_prompt={self.samples_per_prompt} — group-relative advantages "
                "need K >= 2 responses per prompt"
            )
        for key, value, allowed in (
            ("scale_rewards", self.scale_rewards, ops.SCALE_KINDS),
            ("loss_type", self.loss_type, ops.LOSS_TYPES),
            ("kl_estimator", self.kl_estimator, ops.KL_KINDS),
        ):
            if value not in allowed:
                raise ConfigError(f"algo.{key}={value!r} — use one of {', '.join(allowed)}")
        if not self.clip_eps > 0 or self.clip_eps_high < 0 or self.beta < 0:
            raise ConfigError(
                f"algo.clip_eps={self.clip_eps}, clip_eps_high={self.clip_eps_high}, "
                f"beta={self.beta} — clip_eps must be > 0, clip_eps_high and beta >= 0"
            )


class GRPO:
    """GRPO as a run-hook implementer (rollout and update; the default score)."""

    #: Runs on multi-turn tasks: every loss and advantage goes through ``response_mask`` (user
    #: turns are context) and the reward sits where the batch says a dialogue ends.
    multi_turn = True
    #: Runs on several processes (``accelerate launch``): a prompt's K responses stay on one rank,
    #: the loss is normalised and the metrics averaged over the global batch
    #: (alignbench.distributed).
    data_parallel = True

    @classmethod
    def model_roles(cls, config: GRPOConfig) -> frozenset[str]:
        """What ``placement.*`` may move: the reference, when there is a KL term (``beta > 0``)."""
        return frozenset({"reference"} if config.beta > 0 else ())

    def __init__(self, run: Run, config: GRPOConfig) -> None:
        config.validate()
        self.config = config
        # beta = 0: no reference at all, so it costs neither memory nor FLOPs.
        self.reference = run.load_sft_model("reference") if config.beta > 0 else None
        # foreach: one fused kernel per step instead of a loop over tensors (same numbers).
        self.optimizer = torch.optim.AdamW(
            run.policy.parameters(), lr=config.lr, weight_decay=config.weight_decay, foreach=True
        )
        self.params = SamplingParams.from_config(config.sampling)
        if config.lean_forward:  # the rollout's prompt pass too (lean_forward.prefill)
            self.params = replace(self.params, lean_prefill=True)
        # Dr. GRPO's constant normaliser: the most trained tokens a sequence can have (in a
        # conversation, every assistant turn's).
        self.max_tokens = config.sampling.max_new_tokens * max(1, getattr(run.task, "max_turns", 1))

    @alignbench.hookimpl
    def alignbench_rollout(self, run: Run, prompts: list[dict[str, Any]]) -> Batch:
        """K samples per prompt with the sampler's log-probs (the "old" policy of the ratio)."""
        c = self.config
        batch = run.sample(run.policy, prompts, c.samples_per_prompt, self.params)
        if self.reference is not None:
            with torch.no_grad():
                batch.extras["ref_logprobs"] = response_logprobs(
                    self.reference,
                    batch.input_ids,
                    batch.attention_mask,
                    batch.prompt_length,
                    c.sampling.temperature,
                    lean=c.lean_forward,
                )
        return batch

    @alignbench.hookimpl
    def alignbench_update(self, run: Run, batch: Batch) -> dict[str, float]:
        """Group-relative advantages, then clipped-ratio epochs with the KL term in the loss."""
        c, mask = self.config, batch.response_mask
        rewards = batch.grouped(batch.rewards.float())
        # One advantage per response, shared by all of its tokens. A group is one prompt's K
        # responses, all on this rank; only the `batch` scale needs every rank's rewards.
        if c.scale_rewards == "batch":
            centered = ops.group_advantages(rewards, "none")
            advantages = centered / (distributed.mean_std(rewards)[1] + ADVANTAGE_EPS)
        else:
            advantages = ops.group_advantages(rewards, c.scale_rewards, ADVANTAGE_EPS)
        advantages = advantages.view(-1, 1).expand(mask.shape)
        ref = batch.extras.get("ref_logprobs")
        n = batch.num_sequences
        stats: dict[str, list[float]] = {}
        run.policy.train()
        for _ in range(c.ppo_epochs):
            # The global batch's mini-batches, shuffled as one process shuffles it (this rank's
            # rows of each; a stand-in row, not present, where it has none).
            for rows, present in distributed.minibatches(n, c.num_minibatches, run.generator):
                m, old = mask[rows], batch.logprobs[rows]
                if not present:  # the stand-in row counts for nothing (masked out)
                    m = torch.zeros_like(m)
                logits = response_logits(
                    run.policy,
                    batch.input_ids[rows],
                    batch.attention_mask[rows],
                    batch.prompt_length,
                    lean=c.lean_forward,
                )
                logprobs = token_logprobs(logits, batch.response_ids[rows], c.sampling.temperature)
                per_token, clipped = ops.clipped_surrogate(
                    logprobs, old, advantages[rows], c.clip_eps, c.clip_eps_high or None
                )
                pg_loss = ops.aggregate_loss(per_token, m, c.loss_type, self.max_tokens)
                loss, parts = pg_loss, {"loss/policy": pg_loss.item()}
                if ref is not None:
                    kl = ops.kl_penalty(logprobs, ref[rows], c.kl_estimator)
                    kl_loss = ops.aggregate_loss(kl, m, c.loss_type, self.max_tokens)
                    loss = loss + c.beta * kl_loss
                    parts["loss/kl"] = kl_loss.item()
                run.check_finite(**{"loss/total": loss})
                # This rank's part of the global mini-batch's normaliser (1.0 in one process):
                # tokens for token_mean, responses for seq_mean and dr_grpo (whose constant
                # denominator is max_tokens x responses); the gradients are then summed.
                tokens = distributed.share(m.sum())
                share = (
                    tokens
                    if c.loss_type == "token_mean"
                    else distributed.share(len(rows) if present else 0)
                )
                self.optimizer.zero_grad(set_to_none=True)
                run.backward(loss * share)  # scaled under fp16
                distributed.sum_gradients(run.policy.parameters())  # before clipping
                grad_norm = run.optimizer_step(
                    self.optimizer, run.policy.parameters(), c.max_grad_norm
                )
                parts["loss/total"] = loss.item()
                with torch.no_grad():
                    delta = logprobs - old
                    entropy = ops.token_entropy(logits / c.sampling.temperature)
                    token_means = {
                        "policy/clipfrac": ops.masked_mean(clipped, m).item(),
                        "policy/approxkl": 0.5 * ops.masked_mean(delta**2, m).item(),
                        "policy/ratio": ops.masked_mean(delta.exp(), m).item(),
                        "objective/entropy": ops.masked_mean(entropy, m).item(),
                    }
                # The global mini-batch's losses and token means (grad_norm is already global).
                parts = distributed.weighted_sum(parts, share)
                parts.update(distributed.weighted_sum(token_means, tokens))
                parts["policy/grad_norm"] = grad_norm.item()
                for key, value in parts.items():
                    stats.setdefault(key, []).append(value)
        run.policy.eval()
        out = {key: sum(values) / len(values) for key, values in stats.items()}
        # Groups whose rewards are all equal have zero advantage: no signal (only the KL term).
        out.update(
            distributed.weighted_sum(
                {"grpo/frac_reward_zero_std": (rewards.std(dim=1) == 0).float().mean().item()},
                distributed.share(rewards.shape[0]),
            )
        )
        # Means over every rank's responses (an advantage is repeated over a response's tokens).
        per_response = {"grpo/advantage_abs": advantages.abs().mean().item()}
        if ref is not None:
            k1 = ops.kl_penalty(batch.logprobs, ref, "k1")
            k3 = ops.kl_penalty(batch.logprobs, ref, "k3")
            per_response["objective/kl"] = ops.sequence_scores(k1, mask, 0.0).mean().item()
            per_response["objective/kl_k3"] = ops.sequence_scores(k3, mask, 0.0).mean().item()
        out.update(distributed.weighted_sum(per_response, distributed.share(n)))
        if ref is not None:
            out["objective/kl_coef"] = c.beta
        return out


@alignbench.hookimpl
def alignbench_register_algorithms(register: alignbench.Register) -> None:
    """Register ``grpo``."""
    register("grpo", GRPO, GRPOConfig)
