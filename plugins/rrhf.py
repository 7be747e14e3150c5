"""RRHF (Yuan et al. 2023), and its special cases SFT and rejection-sampling fine-tuning.

Per prompt, K candidate responses come from several sources: samples of the policy, the task's
demonstration where the prompt has one, samples of the frozen SFT model, and (opt-in only) fixed
strings the user declares. The reward ranks them; the policy is trained so that its
length-normalised log-probabilities follow that ranking (``ops.rank_loss``), plus cross-entropy
on the best-rewarded candidate, reward ties broken at random (``ops.random_argmax``).

* ``sft``: the demonstration as the only candidate, no ranking term.
* ``rft``: rejection-sampling fine-tuning (RAFT, Dong et al. 2023): the best of K policy samples
  by the reward, NLL on it, no ranking term, no demonstration: the supervised baseline that uses
  the same reward signal as RL.

The algorithm holds no task knowledge: a fixed candidate such as a task's abstention phrase
enters only through ``fixed_candidates``, and is reported as the source ``fixed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

import alignbench
from alignbench import (
    AlgorithmConfig,
    Batch,
    Run,
    SamplingParams,
    distributed,
    ops,
    response_logprobs,
)

ABSENT = "absent"


@dataclass
class RRHFConfig(AlgorithmConfig):
    """RRHF: ranking loss over K candidates from several sources plus SFT on the best."""

    # Candidate sources per prompt (the order does not matter: reward ties are broken at random).
    use_demonstration: bool = True
    # Fixed strings offered as candidates for every prompt (e.g. a task's abstention phrase).
    # Opt-in task knowledge: off by default, and reported as the source `fixed`.
    fixed_candidates: list[str] = field(default_factory=list)
    sft_model_samples: int = 0
    policy_samples: int = 4
    # Loss = rank_weight * rank_loss + sft_weight * NLL(best candidate).
    rank_weight: float = 1.0
    sft_weight: float = 1.0
    # Scores are sum(logp) / length ** length_penalty (1 = RRHF's mean log-prob per token).
    length_penalty: float = 1.0
    lr: float = 1e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # Optimisation passes over each step's batch.
    epochs: int = 1


@dataclass
class SFTConfig(RRHFConfig):
    """SFT: RRHF with the demonstration as the only candidate and no ranking term."""

    prompt_split: str = "sft"
    use_demonstration: bool = True
    sft_model_samples: int = 0
    policy_samples: int = 0
    rank_weight: float = 0.0


@dataclass
class RFTConfig(RRHFConfig):
    """Rejection-sampling fine-tuning: NLL on the best of K policy samples by the reward."""

    use_demonstration: bool = False
    policy_samples: int = 4
    rank_weight: float = 0.0


class RRHF:
    """RRHF (and SFT / RFT, through their configs) as a run-hook implementer."""

    #: Runs on multi-turn tasks: every loss and advantage goes through ``response_mask`` (user
    #: turns are context) and the reward sits where the batch says a dialogue ends.
    multi_turn = True
    #: Runs on several processes (``accelerate launch``): the ranking loss is a mean over every
    #: rank's prompts, the SFT loss over every rank's best tokens (alignbench.distributed).
    data_parallel = True

    @classmethod
    def model_roles(cls, config: RRHFConfig) -> frozenset[str]:
        """What ``placement.*`` may move: nothing (the SFT sampler of ``sft_model_samples`` is not a
        reference)."""
        return frozenset()

    def __init__(self, run: Run, config: RRHFConfig) -> None:
        self.config = config
        if self.group_size(run) < 1:
            raise alignbench.ConfigError(f"algo={config.name}: no candidate source is enabled")
        if config.rank_weight > 0 and self.group_size(run) < 2:
            raise alignbench.ConfigError(
                f"algo={config.name}: a ranking loss needs K >= 2 candidates per prompt, got "
                f"{self.group_size(run)} — add policy_samples or another source"
            )
        self.sft_model = run.load_sft_model("sft_sampler") if config.sft_model_samples else None
        self.optimizer = torch.optim.AdamW(
            run.policy.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.params = SamplingParams.from_config(config.sampling)

    def group_size(self, run: Run) -> int:
        """K: candidates per prompt."""
        c = self.config
        fixed = int(c.use_demonstration) + len(c.fixed_candidates)
        return fixed + c.sft_model_samples + c.policy_samples

    @alignbench.hookimpl
    def alignbench_rollout(self, run: Run, prompts: list[dict[str, Any]]) -> Batch:
        """Gather K candidates per prompt from every enabled source (whole conversations on a
        multi-turn task, ranked by their return)."""
        c = self.config
        parts = []
        if c.use_demonstration:
            # A prompt without a demonstration keeps its slot (K stays fixed) but ranks nowhere.
            has_demo = [bool(row.get("messages") or row.get("response")) for row in prompts]
            rows = [
                row if demo else {**row, "response": "", "messages": []}
                for row, demo in zip(prompts, has_demo, strict=True)
            ]
            demos = run.demonstrations(rows)
            demos.sources = ["demonstration" if d else ABSENT for d in has_demo]
            parts.append(demos)
        for text in c.fixed_candidates:
            fixed = [{**row, "response": text, "messages": []} for row in prompts]
            parts.append(run.demonstrations(fixed, source="fixed"))
        for source, model, count in (
            ("sft_model", self.sft_model, c.sft_model_samples),
            ("policy", run.policy, c.policy_samples),
        ):
            if count:
                parts.append(run.sample(model, prompts, count, self.params, source=source))
        return run.join(prompts, parts)

    @alignbench.hookimpl
    def alignbench_update(self, run: Run, batch: Batch) -> dict[str, float]:
        """Ranking loss on length-normalised log-probs plus NLL of the best-rewarded candidate."""
        c = self.config
        absent = batch.grouped(torch.tensor([s == ABSENT for s in batch.sources]))
        rewards = batch.grouped(batch.rewards.float()).masked_fill(absent, float("nan"))
        # Ties go to a random candidate: a first-maximum rule would favour one source.
        best = ops.random_argmax(rewards, run.generator)  # [B]
        best_rows = best + torch.arange(len(batch.prompts)) * batch.group_size
        # This rank's shares of the global normalisers: prompts (ranking) and best tokens (SFT).
        prompt_share = distributed.share(len(batch.prompts))
        token_share = distributed.share(batch.response_mask[best_rows].sum())
        run.policy.train()
        for _ in range(c.epochs):
            logprobs = response_logprobs(
                run.policy, batch.input_ids, batch.attention_mask, batch.prompt_length
            )
            scores = ops.sequence_scores(logprobs, batch.response_mask, c.length_penalty)
            rank = (
                ops.rank_loss(batch.grouped(scores), rewards)
                if c.rank_weight
                else scores.new_zeros(())
            )
            nll = ops.demonstration_nll(logprobs[best_rows], batch.response_mask[best_rows])
            loss = c.rank_weight * rank * prompt_share + c.sft_weight * nll * token_share
            run.check_finite(**{"loss/total": loss})
            self.optimizer.zero_grad(set_to_none=True)
            run.backward(loss)  # scaled under fp16
            distributed.sum_gradients(run.policy.parameters())  # the global batch's gradient
            grad_norm = run.optimizer_step(self.optimizer, run.policy.parameters(), c.max_grad_norm)
        run.policy.eval()
        best_sources = [batch.sources[i] for i in best_rows.tolist()]
        best_rewards = rewards.gather(1, best[:, None])
        if distributed.world_size() > 1:
            # Every rank's best candidates, and the losses of the global batch.
            every = [s for part in distributed.gather(best_sources) for s in part]
            sources = set().union(*distributed.gather(set(batch.sources)))
            found = best_rewards[~best_rewards.isnan()].tolist()
            best_rewards = torch.tensor([r for part in distributed.gather(found) for r in part])
            best_sources = every
            losses = distributed.weighted_sum({"rank": rank.item()}, prompt_share)
            losses.update(distributed.weighted_sum({"sft": nll.item()}, token_share))
            rank_value, nll_value = losses["rank"], losses["sft"]
            total = c.rank_weight * rank_value + c.sft_weight * nll_value
        else:
            sources = set(batch.sources)
            rank_value, nll_value, total = rank.item(), nll.item(), loss.item()
        shares = {
            f"rrhf/best_is_{source}": best_sources.count(source) / len(best_sources)
            for source in sorted(sources - {ABSENT})
        }
        return {
            **shares,
            "loss/rank": rank_value,
            "loss/sft": nll_value,
            "loss/total": total,
            "policy/grad_norm": grad_norm.item(),
            "objective/reward_best": float(best_rewards.nanmean()),
        }


@alignbench.hookimpl
def alignbench_register_algorithms(register: alignbench.Register) -> None:
    """Register ``rrhf`` and its special cases ``sft`` and ``rft``."""
    register("rrhf", RRHF, RRHFConfig)
    register("sft", RRHF, SFTConfig)
    register("rft", RRHF, RFTConfig)
