"""Online (iterative) DPO: preference pairs sampled from the current policy, labelled by the reward.

Offline DPO learns from a fixed set of pairs of another model's answers; online DPO (Guo et al.
2024, "Direct Language Model Alignment from Online AI Feedback"; Dong et al. 2024, "RLHF
Workflow") keeps sampling from the policy being trained, so it competes with PPO on the same
reward signal: whatever ``reward=`` is (a rule reward, the learned reward model, ...). One step:

* rollout: K samples per prompt from the current policy;
* score: the configured reward of every sample (the core's default);
* update: per prompt, the best sample is chosen and the worst rejected (ties at random,
  ``ops.best_worst_pairs``); prompts whose K rewards all tie teach nothing and are skipped
  (``online_dpo/tied_share``); one step on ``ops.dpo_loss`` against the frozen SFT reference,
  whose log-probabilities are computed for the kept pairs only. On several processes each rank
  keeps the pairs of its own prompts; the loss is a mean over every rank's pairs, and a rank
  whose prompts all tie still takes part in the step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
class OnlineDPOConfig(AlgorithmConfig):
    """Online DPO: best vs worst of K policy samples per prompt, by the run's reward."""

    # K >= 2. Guo et al. 2024 sample 2 and let the annotator pick; Dong et al. 2024 take the best
    # and worst of 8. 4 = PPO's and RRHF's samples per prompt here (the same samples per step).
    samples_per_prompt: int = 4
    # 0.1, the value of most of Rafailov et al. 2023's experiments (sec. 6), as offline DPO here.
    beta: float = 0.1
    # sigmoid: DPO (Rafailov et al. 2023, eq. 7); ipo: Azar et al. 2023 (eq. 17), as online IPO
    # in Guo et al. 2024; conservative: cDPO (Mitchell 2023), labels flipped w.p. label_smoothing.
    loss_type: str = field(default="sigmoid", metadata={"choices": ops.PREFERENCE_LOSSES})
    # cDPO's epsilon, conservative only, in (0, 0.5).
    label_smoothing: float = 0.0
    # AdamW at RRHF's 1e-4 for this small model (the papers' 1e-6-5e-7 are for billions of
    # parameters); gradient clipping at 1.0 as every algorithm here.
    lr: float = 1e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0

    def validate(self) -> None:
        """Refuse values online DPO cannot run with (one line naming the key and the fix)."""
        if self.samples_per_prompt < 2:
            raise ConfigError(
                f"algo.samples_per_prompt={self.samples_per_prompt} — a preference pair needs "
                "K >= 2 samples per prompt"
            )
        if not self.beta > 0:
            raise ConfigError(f"algo.beta={self.beta} — beta must be > 0 (0.1 is the paper's)")
        if self.loss_type == "conservative" and not 0 < self.label_smoothing < 0.5:
            raise ConfigError(
                f"algo.label_smoothing={self.label_smoothing} — loss_type=conservative needs "
                "a label-flip rate in (0, 0.5), e.g. 0.1"
            )
        if self.loss_type != "conservative" and self.label_smoothing:
            raise ConfigError(
                f"algo.label_smoothing={self.label_smoothing} applies only to "
                "loss_type=conservative — set algo.loss_type=conservative or leave it at 0"
            )


def sequence_logprobs(model: Any, batch: Batch, rows: torch.Tensor) -> torch.Tensor:
    """Sum of the response tokens' log-probabilities under ``model`` of ``batch``'s ``rows``."""
    logprobs = response_logprobs(
        model, batch.input_ids[rows], batch.attention_mask[rows], batch.prompt_length
    )
    return ops.sequence_scores(logprobs, batch.response_mask[rows], length_penalty=0.0)


class OnlineDPO:
    """Online DPO as a run-hook implementer (rollout, default score, update)."""

    #: Runs on multi-turn tasks: every loss and advantage goes through ``response_mask`` (user
    #: turns are context) and the reward sits where the batch says a dialogue ends.
    multi_turn = True
    #: Runs on several processes (``accelerate launch``): a prompt's K samples stay on one rank,
    #: the loss is a mean over every rank's pairs (alignbench.distributed).
    data_parallel = True

    @classmethod
    def model_roles(cls, config: OnlineDPOConfig) -> frozenset[str]:
        """What ``placement.*`` may move: the frozen reference of DPO's implicit reward."""
        return frozenset({"reference"})

    def __init__(self, run: Run, config: OnlineDPOConfig) -> None:
        self.config = config
        self.reference = run.load_sft_model("reference")
        self.optimizer = torch.optim.AdamW(
            run.policy.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.params = SamplingParams.from_config(config.sampling)

    @alignbench.hookimpl
    def alignbench_rollout(self, run: Run, prompts: list[dict[str, Any]]) -> Batch:
        """K samples per prompt from the current policy."""
        return run.sample(run.policy, prompts, self.config.samples_per_prompt, self.params)

    @alignbench.hookimpl
    def alignbench_update(self, run: Run, batch: Batch) -> dict[str, float]:
        """Best vs worst of each prompt's samples; one DPO step on the decided pairs."""
        c = self.config
        rewards = batch.grouped(batch.rewards.float())
        chosen, rejected, decided = ops.best_worst_pairs(rewards, run.generator)
        # Means over every rank's prompts.
        stats = distributed.weighted_sum(
            {
                "online_dpo/tied_share": 1.0 - decided.float().mean().item(),
                "objective/reward_chosen": rewards.max(dim=1).values.mean().item(),
                "objective/reward_rejected": rewards.min(dim=1).values.mean().item(),
            },
            distributed.share(len(batch.prompts)),
        )
        # Every prompt of every rank tied: no preference to learn from this step.
        if not distributed.any_rank(bool(decided.any())):
            return stats
        run.policy.train()
        self.optimizer.zero_grad(set_to_none=True)
        # A mean over the global batch's pairs: this rank's mean times its share of them (1.0
        # in one process), the gradients then summed over ranks.
        share = distributed.share(decided.sum())
        if decided.any():
            loss, means = self._pairs_loss(run, batch, chosen, rejected, decided)
            run.check_finite(**{"loss/dpo": loss})
            run.backward(loss * share)  # scaled under fp16
        else:  # this rank's prompts all tied: no loss here, but its part of every collective
            means = dict.fromkeys(PAIR_STATS, 0.0)
            run.check_finite(**{"loss/dpo": torch.zeros(())})
        distributed.sum_gradients(run.policy.parameters())  # before clipping
        grad_norm = run.optimizer_step(self.optimizer, run.policy.parameters(), c.max_grad_norm)
        run.policy.eval()
        return {
            **stats,
            **distributed.weighted_sum(means, share),
            "policy/grad_norm": grad_norm.item(),
        }

    def _pairs_loss(
        self,
        run: Run,
        batch: Batch,
        chosen: torch.Tensor,
        rejected: torch.Tensor,
        decided: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The DPO loss of the decided prompts' (best, worst) pairs and its statistics (means
        over those pairs)."""
        c = self.config
        offsets = torch.arange(len(batch.prompts))[decided] * batch.group_size
        rows = torch.stack([chosen[decided] + offsets, rejected[decided] + offsets], dim=1)
        with torch.no_grad():
            reference = sequence_logprobs(self.reference, batch, rows.flatten()).view(-1, 2)
        logprobs = sequence_logprobs(run.policy, batch, rows.flatten()).view(-1, 2)
        loss, chosen_rewards, rejected_rewards = ops.dpo_loss(
            logprobs[:, 0],
            logprobs[:, 1],
            reference[:, 0],
            reference[:, 1],
            c.beta,
            c.loss_type,
            c.label_smoothing,
        )
        margins = chosen_rewards - rejected_rewards
        means = {
            "loss/dpo": loss.item(),
            "rewards/chosen": chosen_rewards.mean().item(),
            "rewards/rejected": rejected_rewards.mean().item(),
            "rewards/margins": margins.mean().item(),
            "rewards/accuracies": (margins > 0).float().mean().item(),
        }
        return loss, means


#: The statistics of the pairs' loss, means over every rank's pairs.
PAIR_STATS = (
    "loss/dpo",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
)


@alignbench.hookimpl
def alignbench_register_algorithms(register: alignbench.Register) -> None:
    """Register ``online_dpo``."""
    register("online_dpo", OnlineDPO, OnlineDPOConfig)
