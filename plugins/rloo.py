"""RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024, "Back to Basics").

A response is one action. K responses are sampled per prompt; the sequence-level KL to the frozen
SFT reference is folded into each one's reward (``r - beta * sum_t (log p - log p_ref)``, as in
the paper and TRL's RLOO), and the baseline of response i is the mean reward of the *other* K - 1
(``ops.leave_one_out_advantages``: unbiased, no critic). The loss is REINFORCE on the response's
log-probability ``-A * log p(y|x)``, written as PPO's clipped surrogate on the sequence ratio so
that extra epochs or mini-batches stay safe (with one pass the ratio is 1 and it *is* REINFORCE).

* rollout: sample K responses per prompt; the reference's log-probs when ``beta > 0``;
* update: KL-penalised rewards, leave-one-out advantages, ``ppo_epochs`` passes of the loss.

Scoring is the core's default (the configured reward); the recipe card is :class:`RLOOConfig`.
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
    response_logprobs,
)


@dataclass
class RLOOConfig(AlgorithmConfig):
    """RLOO recipe card: what each key does and where its default comes from.

    [A24] Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for
    Learning from Human Feedback in LLMs"; [K19] Kool et al. 2019, "Buy 4 REINFORCE Samples, Get a
    Baseline for Free!"; [TRL] Hugging Face TRL's RLOOConfig.
    """

    # K responses per prompt: [A24] compares k = 2 and 4 (4 better); 4 also gives a step the
    # same 64 sequences as PPO's default (16 prompts x 4).
    samples_per_prompt: int = 4
    # Sequence-level KL penalty in the reward [TRL beta 0.05; A24 tunes it per task]; 0 = no
    # reference model is loaded or charged.
    beta: float = 0.05
    # Divide the advantages by their batch std [TRL normalize_advantages, off by default].
    normalize_advantages: bool = False
    # Clip of the sequence-level ratio; inactive with one pass (ratio 1) [TRL epsilon 0.2].
    clip_eps: float = 0.2
    # One pass over each rollout = plain REINFORCE [A24, TRL num_iterations=1].
    ppo_epochs: int = 1
    num_minibatches: int = 1
    # The PPO policy lr tuned on this task (README; [A24] used ~1e-6 on billion-parameter models).
    lr: float = 3e-4
    # [TRL] max_grad_norm 1.0, no weight decay.
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    # `sampling` (AlgorithmConfig): temperature 1 from the full distribution, no top-k / top-p,
    # as REINFORCE assumes.

    # true = the reference's and the policy's forwards of Llama-shaped models run
    # alignbench.lean_forward (the response's outputs only, the last layer only where it is
    # read, oneDNN's kernels on the CPU), and so does the rollout's prompt pass: equal within
    # rounding, not bit for bit, so off by default (tests/test_lean_forward.py).
    lean_forward: bool = False

    def validate(self) -> None:
        """Refuse option values RLOO cannot run with (one line naming the key and the fix)."""
        if self.samples_per_prompt < 2:
            raise ConfigError(
                f"algo.samples_per_prompt={self.samples_per_prompt} — a leave-one-out baseline "
                "needs K >= 2 responses per prompt"
            )
        if not self.clip_eps > 0 or self.beta < 0:
            raise ConfigError(
                f"algo.clip_eps={self.clip_eps}, beta={self.beta} — clip_eps must be > 0, beta >= 0"
            )


class RLOO:
    """RLOO as a run-hook implementer (rollout and update; the default score)."""

    #: Runs on multi-turn tasks: every loss and advantage goes through ``response_mask`` (user
    #: turns are context) and the reward sits where the batch says a dialogue ends.
    multi_turn = True
    #: Runs on several processes (``accelerate launch``): a prompt's K responses stay on one rank,
    #: the loss is a mean over every rank's responses and the metrics are averaged over the
    #: global batch (alignbench.distributed).
    data_parallel = True

    @classmethod
    def model_roles(cls, config: RLOOConfig) -> frozenset[str]:
        """What ``placement.*`` may move: the reference, when there is a KL term (``beta > 0``)."""
        return frozenset({"reference"} if config.beta > 0 else ())

    def __init__(self, run: Run, config: RLOOConfig) -> None:
        config.validate()
        self.config = config
        self.reference = run.load_sft_model("reference") if config.beta > 0 else None
        # foreach: one fused kernel per step instead of a loop over tensors (same numbers).
        self.optimizer = torch.optim.AdamW(
            run.policy.parameters(), lr=config.lr, weight_decay=config.weight_decay, foreach=True
        )
        self.params = SamplingParams.from_config(config.sampling)
        if config.lean_forward:  # the rollout's prompt pass too (lean_forward.prefill)
            self.params = replace(self.params, lean_prefill=True)

    @alignbench.hookimpl
    def alignbench_rollout(self, run: Run, prompts: list[dict[str, Any]]) -> Batch:
        """K samples per prompt with the sampler's log-probs; the reference's when beta > 0."""
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
        """KL-penalised rewards, leave-one-out advantages, then the sequence-level loss."""
        c, mask = self.config, batch.response_mask
        rewards = batch.rewards.float()
        ref = batch.extras.get("ref_logprobs")
        kl = torch.zeros_like(rewards)
        if ref is not None:
            # Sequence KL, k1 summed over the response's tokens [A24, TRL].
            kl = ops.sequence_scores(ops.kl_penalty(batch.logprobs, ref, "k1"), mask, 0.0)
        shaped = rewards - c.beta * kl
        advantages = ops.leave_one_out_advantages(batch.grouped(shaped)).view(-1)
        if c.normalize_advantages:  # by every rank's advantages (the global batch's)
            mean, std = distributed.mean_std(advantages)
            advantages = (advantages - mean) / (std + 1e-4)
        # log p(y|x) of the sampler: the "old" policy of the sequence ratio.
        old = ops.sequence_scores(batch.logprobs, mask, 0.0)
        n = batch.num_sequences
        stats: dict[str, list[float]] = {}
        run.policy.train()
        for _ in range(c.ppo_epochs):
            # The global batch's mini-batches, shuffled as one process shuffles it (this rank's
            # rows of each; a stand-in row, not present, where it has none).
            for rows, present in distributed.minibatches(n, c.num_minibatches, run.generator):
                logprobs = response_logprobs(
                    run.policy,
                    batch.input_ids[rows],
                    batch.attention_mask[rows],
                    batch.prompt_length,
                    c.sampling.temperature,
                    lean=c.lean_forward,
                )
                sequence_logprobs = ops.sequence_scores(logprobs, mask[rows], 0.0)
                per_sequence, clipped = ops.clipped_surrogate(
                    sequence_logprobs, old[rows], advantages[rows], c.clip_eps
                )
                loss = per_sequence.mean()
                run.check_finite(**{"loss/policy": loss})
                # A mean over the global mini-batch's responses: this rank's mean times its share
                # of them (1.0 in one process), the gradients then summed over ranks.
                share = distributed.share(len(rows) if present else 0)
                self.optimizer.zero_grad(set_to_none=True)
                run.backward(loss * share)  # scaled under fp16
                distributed.sum_gradients(run.policy.parameters())  # before clipping
                grad_norm = run.optimizer_step(
                    self.optimizer, run.policy.parameters(), c.max_grad_norm
                )
                delta = sequence_logprobs.detach() - old[rows]
                # Means over the global mini-batch's responses (grad_norm is already global).
                parts = distributed.weighted_sum(
                    {
                        "loss/policy": loss.item(),
                        "policy/clipfrac": clipped.mean().item(),
                        "policy/approxkl": 0.5 * (delta**2).mean().item(),
                        "policy/ratio": delta.exp().mean().item(),
                    },
                    share,
                )
                parts["policy/grad_norm"] = grad_norm.item()
                for key, value in parts.items():
                    stats.setdefault(key, []).append(value)
        run.policy.eval()
        out = {key: sum(values) / len(values) for key, values in stats.items()}
        # Means over every rank's responses.
        per_response = {
            "rloo/advantage_abs": advantages.abs().mean().item(),
            "objective/scores": shaped.mean().item(),
        }
        if ref is not None:
            per_response["objective/kl"] = kl.mean().item()
            per_response["objective/non_score_reward"] = (-c.beta * kl).mean().item()
        out.update(distributed.weighted_sum(per_response, distributed.share(n)))
        if ref is not None:
            out["objective/kl_coef"] = c.beta
        return out


@alignbench.hookimpl
def alignbench_register_algorithms(register: alignbench.Register) -> None:
    """Register ``rloo``."""
    register("rloo", RLOO, RLOOConfig)
