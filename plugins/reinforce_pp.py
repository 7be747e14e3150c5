"""REINFORCE++ (Hu 2025): PPO's token-level machinery without the critic.

Every token pays ``-beta * KL`` to the frozen SFT reference and the last one also gets the
sequence reward (``ops.kl_shaped_rewards``, as in PPO); the return of a token is its reward-to-go
(no value function), and the advantages are the returns normalised over the *whole batch*
(``ops.reinforce_pp_advantages``): the batch mean is the baseline, so no per-prompt group is
needed. The policy takes PPO's clipped step (``ops.policy_loss``).

``baseline: greedy`` is ReMax's baseline instead (Li et al. 2024): each prompt's greedy answer is
decoded and scored too, its reward is subtracted from the sampled responses' rewards, and the
advantages are only rescaled by the batch std. The greedy decoding and its reward are charged.

* rollout: sample K responses per prompt; the reference's log-probs; the greedy answers (ReMax);
* update: shaped returns, global normalisation, ``ppo_epochs`` passes of the clipped loss.

Scoring is the core's default (the configured reward); the recipe card is
:class:`ReinforcePPConfig`.
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

BASELINES = ("global", "greedy")


@dataclass
class ReinforcePPConfig(AlgorithmConfig):
    """REINFORCE++ recipe card: what each key does and where its default comes from.

    [H25] Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language
    Models"; [L24] Li et al. 2024, "ReMax: A Simple, Effective, and Efficient Reinforcement
    Learning Method for Aligning LLMs"; [Z19] Ziegler et al. 2019.
    """

    # Responses per prompt. The global baseline needs no groups ([H25] samples 1); 4 gives a step
    # the same 64 sequences as PPO's default (16 prompts x 4).
    samples_per_prompt: int = 4
    # `global`: advantages whitened over the batch [H25]; `greedy`: minus the reward of the
    # prompt's greedy answer, then scaled by the batch std [L24] (one extra decoding per prompt).
    baseline: str = "global"
    # Token-level KL penalty in the reward [H25: 0.01 for general alignment, 0.001 for math];
    # 0 = no reference model is loaded or charged.
    beta: float = 0.01
    # [H25] KL_t = log pi(y_t) - log pi_sft(y_t), i.e. k1, as PPO here [Z19].
    kl_estimator: str = "k1"
    # No discounting within a response [H25, Z19].
    gamma: float = 1.0
    # PPO clip epsilon [H25: 0.2].
    clip_eps: float = 0.2
    # One pass over each rollout (the ratio starts at 1; more passes or mini-batches let the
    # clip bite, [H25] uses mini-batch updates on large batches).
    ppo_epochs: int = 1
    num_minibatches: int = 1
    # The PPO policy lr tuned on this task (README; [H25] 5e-7 on billion-parameter models).
    lr: float = 3e-4
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    # `sampling` (AlgorithmConfig): temperature 1 from the full distribution, no top-k / top-p,
    # as the ratio assumes.

    # true = the reference's and the policy's forwards of Llama-shaped models run
    # alignbench.lean_forward (the response's outputs only, the last layer only where it is
    # read, oneDNN's kernels on the CPU), and so does the rollout's prompt pass: equal within
    # rounding, not bit for bit, so off by default (tests/test_lean_forward.py).
    lean_forward: bool = False

    def validate(self) -> None:
        """Refuse option values REINFORCE++ cannot run with (one line naming the key and fix)."""
        for key, value, allowed in (
            ("baseline", self.baseline, BASELINES),
            ("kl_estimator", self.kl_estimator, ops.KL_KINDS),
        ):
            if value not in allowed:
                raise ConfigError(f"algo.{key}={value!r} — use one of {', '.join(allowed)}")
        if not self.clip_eps > 0 or self.beta < 0:
            raise ConfigError(
                f"algo.clip_eps={self.clip_eps}, beta={self.beta} — clip_eps must be > 0, beta >= 0"
            )


class ReinforcePP:
    """REINFORCE++ (or ReMax, with ``baseline=greedy``) as a run-hook implementer."""

    #: Runs on multi-turn tasks: every loss and advantage goes through ``response_mask`` (user
    #: turns are context) and the reward sits where the batch says a dialogue ends.
    multi_turn = True
    #: Runs on several processes (``accelerate launch``): the advantages are normalised over
    #: every rank's tokens, the loss is a token mean of the global batch and the metrics are
    #: averaged over it (alignbench.distributed).
    data_parallel = True

    @classmethod
    def model_roles(cls, config: ReinforcePPConfig) -> frozenset[str]:
        """What ``placement.*`` may move: the reference, when there is a KL term (``beta > 0``)."""
        return frozenset({"reference"} if config.beta > 0 else ())

    def __init__(self, run: Run, config: ReinforcePPConfig) -> None:
        config.validate()
        self.config = config
        self.reference = run.load_sft_model("reference") if config.beta > 0 else None
        self.optimizer = torch.optim.AdamW(
            run.policy.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.params = SamplingParams.from_config(config.sampling)
        if config.lean_forward:  # the rollout's prompt pass too (lean_forward.prefill)
            self.params = replace(self.params, lean_prefill=True)

    @alignbench.hookimpl
    def alignbench_rollout(self, run: Run, prompts: list[dict[str, Any]]) -> Batch:
        """K samples per prompt; the reference's log-probs; ReMax's greedy answers and rewards."""
        c = self.config
        batch = run.sample(run.policy, prompts, c.samples_per_prompt, self.params)
        with torch.no_grad():
            if self.reference is not None:
                batch.extras["ref_logprobs"] = response_logprobs(
                    self.reference,
                    batch.input_ids,
                    batch.attention_mask,
                    batch.prompt_length,
                    c.sampling.temperature,
                    lean=c.lean_forward,
                )
            if c.baseline == "greedy":
                greedy = run.sample(
                    run.policy,
                    prompts,
                    1,
                    SamplingParams(max_new_tokens=c.sampling.max_new_tokens, greedy=True),
                    source="greedy",
                )
                # Scored like every response, so a learned reward model's passes are charged.
                baseline = run.rewards(greedy).float()
                batch.extras["baseline"] = baseline.repeat_interleave(c.samples_per_prompt)
        return batch

    @alignbench.hookimpl
    def alignbench_update(self, run: Run, batch: Batch) -> dict[str, float]:
        """Globally normalised KL-shaped returns, then clipped-ratio passes (token mean)."""
        c, mask, x = self.config, batch.response_mask, batch.extras
        scores = batch.rewards.float()
        if c.baseline == "greedy":
            scores = scores - x["baseline"]
        ref = x.get("ref_logprobs")
        kl = (
            ops.kl_penalty(batch.logprobs, ref, c.kl_estimator)
            if ref is not None
            else torch.zeros_like(batch.logprobs)
        )
        advantages = self._advantages(scores, kl, mask)
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
                logprobs = response_logprobs(
                    run.policy,
                    batch.input_ids[rows],
                    batch.attention_mask[rows],
                    batch.prompt_length,
                    c.sampling.temperature,
                    lean=c.lean_forward,
                )
                loss, clipfrac = ops.policy_loss(logprobs, old, advantages[rows], m, c.clip_eps)
                run.check_finite(**{"loss/policy": loss})
                # A token mean of the global mini-batch: this rank's mean times its share of the
                # tokens (1.0 in one process), the gradients then summed over ranks.
                share = distributed.share(m.sum())
                self.optimizer.zero_grad(set_to_none=True)
                run.backward(loss * share)  # scaled under fp16
                distributed.sum_gradients(run.policy.parameters())  # before clipping
                grad_norm = run.optimizer_step(
                    self.optimizer, run.policy.parameters(), c.max_grad_norm
                )
                delta = logprobs.detach() - old
                # Token means of the global mini-batch (grad_norm is already global).
                parts = distributed.weighted_sum(
                    {
                        "loss/policy": loss.item(),
                        "policy/clipfrac": clipfrac.item(),
                        "policy/approxkl": 0.5 * ops.masked_mean(delta**2, m).item(),
                        "policy/ratio": ops.masked_mean(delta.exp(), m).item(),
                    },
                    share,
                )
                parts["policy/grad_norm"] = grad_norm.item()
                for key, value in parts.items():
                    stats.setdefault(key, []).append(value)
        run.policy.eval()
        out = {key: sum(values) / len(values) for key, values in stats.items()}
        # Means over every rank's responses.
        per_response: dict[str, float] = {}
        if c.baseline == "greedy":
            per_response["remax/greedy_reward"] = x["baseline"].mean().item()
        if ref is not None:
            sequence_kl = ops.sequence_scores(kl, mask, 0.0)
            per_response["objective/kl"] = sequence_kl.mean().item()
            per_response["objective/non_score_reward"] = (-c.beta * sequence_kl).mean().item()
            out["objective/kl_coef"] = c.beta
        if per_response:
            out.update(distributed.weighted_sum(per_response, distributed.share(n)))
        return out

    def _advantages(
        self, scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """``ops.reinforce_pp_advantages`` normalised by the mean and std of every rank's returns
        (the global batch's; its very operations in one process, where the helpers are ops')."""
        c = self.config
        returns = ops.discounted_returns(
            ops.kl_shaped_rewards(scores, kl, mask, c.beta), mask, c.gamma
        )
        if c.baseline == "global":
            return distributed.masked_whiten(returns, mask)
        # ReMax: the greedy baseline is already subtracted; only the scale is the batch's.
        scaled = returns * torch.rsqrt(distributed.masked_var(returns, mask) + 1e-8)
        return torch.where(mask.bool(), scaled, torch.zeros_like(scaled))


@alignbench.hookimpl
def alignbench_register_algorithms(register: alignbench.Register) -> None:
    """Register ``reinforce_pp``."""
    register("reinforce_pp", ReinforcePP, ReinforcePPConfig)
