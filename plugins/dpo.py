"""DPO (Rafailov et al. 2023), offline, with the IPO and conservative (cDPO) losses as options.

The data: every strictly ordered pair of every ranked group of stage 2 (``run.ranked_groups``),
exactly the pairs the reward model trains on (``ops.preference_pairs``). Their source is
``feedback=``: simulated annotators (default) or ``feedback=file`` for a file of human rankings.
No reward is run: DPO learns from the labels, and the run's ``reward=`` only scores evaluations.

One step, through the hooks:

* rollout: the next ``prompts_per_step`` pairs of a seeded shuffled pass over all pairs (a new
  pass when one runs out; the loop's prompts are not used); the frozen reference's sequence
  log-probabilities of pairs seen for the first time are computed and cached, so the reference
  is run, and charged, once per pair however many passes the budget allows; on several
  processes every rank draws the same pairs and keeps its contiguous shard of them, and the
  reference values each rank computes are shared with every rank;
* score: the label is the reward (1 chosen, 0 rejected): no reward model is run for nothing;
* update: one optimiser step on ``ops.dpo_loss`` of the policy's sequence log-probabilities.

The run stops at the same budget as every other algorithm (FLOPs by default).
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
    DataError,
    PromptStream,
    Run,
    distributed,
    encode_responses,
    ops,
    response_logprobs,
)


@dataclass
class DPOConfig(AlgorithmConfig):
    """Offline DPO on stage 2's preference pairs; ``prompts_per_step`` = pairs per step."""

    # The KL strength: 0.1 in most of Rafailov et al. 2023's experiments (sec. 6, App. B); for
    # loss_type=ipo it is IPO's tau (Azar et al. 2023).
    beta: float = 0.1
    # sigmoid: DPO (Rafailov et al. 2023, eq. 7); ipo: squared loss (Azar et al. 2023, eq. 17);
    # conservative: cDPO, labels assumed flipped with probability label_smoothing (Mitchell 2023).
    loss_type: str = field(default="sigmoid", metadata={"choices": ops.PREFERENCE_LOSSES})
    # cDPO's epsilon, conservative only; must be in (0, 0.5) (Mitchell 2023 gives no default:
    # set it to the noise you believe the labels have, e.g. feedback.error_rate).
    label_smoothing: float = 0.0
    # Rafailov et al. 2023 (App. B) use RMSprop at 1e-6 for 1-6B-parameter models; this small
    # model, as every algorithm here, uses AdamW, at RRHF's 1e-4 (1e-6 barely moves it).
    lr: float = 1e-4
    weight_decay: float = 0.0
    # Gradient clipping at 1.0 as every algorithm here (TRL's default for DPO as well).
    max_grad_norm: float = 1.0

    def validate(self) -> None:
        """Refuse values DPO cannot run with (one line naming the key and the fix)."""
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


class ReferenceCache:
    """The reference's sequence log-probabilities ``[P, 2]`` (chosen, rejected) of every pair;
    NaN until a pair is first seen. Checkpointed, so a resumed run never pays for a pair twice."""

    def __init__(self, pairs: int) -> None:
        self.values = torch.full((pairs, 2), float("nan"))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The cached log-probabilities."""
        return {"values": self.values.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Continue with saved log-probabilities."""
        self.values = state["values"].clone()


def sequence_logprobs(model: Any, batch: Batch, rows: Any = slice(None)) -> torch.Tensor:
    """Sum of the response tokens' log-probabilities under ``model`` of ``batch``'s ``rows``."""
    logprobs = response_logprobs(
        model, batch.input_ids[rows], batch.attention_mask[rows], batch.prompt_length
    )
    return ops.sequence_scores(logprobs, batch.response_mask[rows], length_penalty=0.0)


class DPO:
    """Offline DPO as a run-hook implementer (rollout = the next pairs of the data)."""

    #: Trains on stage 2's ranked groups: the ``feedback=`` plugin's code is part of the job.
    uses_feedback = True
    #: Runs on several processes (``accelerate launch``): each rank takes its shard of a step's
    #: pairs, the loss is a mean over every rank's pairs (alignbench.distributed).
    data_parallel = True

    @classmethod
    def model_roles(cls, config: DPOConfig) -> frozenset[str]:
        """What ``placement.*`` may move: the frozen reference of DPO's implicit reward."""
        return frozenset({"reference"})

    def __init__(self, run: Run, config: DPOConfig) -> None:
        self.config = config
        self.rows, self.chosen, self.rejected = [], [], []
        # Several processes: rank 0 builds (or finds) stage 2's groups, the others then load them.
        with distributed.main_process_first():
            groups = run.ranked_groups("train")
        for group in groups:
            if group.preference is None:  # unlabelled: no pair
                continue
            ids = encode_responses(run.tokenizer, group.responses)
            for _, i, j in ops.preference_pairs(torch.tensor([group.preference])).tolist():
                self.rows.append(group.row)
                self.chosen.append(ids[i])
                self.rejected.append(ids[j])
        if not self.rows:
            raise DataError(
                "algo=dpo: stage 2's groups order no pair (every label a tie or missing) — "
                "raise feedback.labels or feedback.k, or set feedback.allow_ties=false"
            )
        # datasets costs about a second of CPU at import: only when DPO runs.
        from datasets import Dataset

        pairs = Dataset.from_dict({"pair": list(range(len(self.rows)))})
        # Its own seeded order over the pairs (checkpointed: a resumed run sees the same pairs).
        self.pairs = PromptStream(pairs, config.prompts_per_step, run.seed)
        self.reference = run.load_sft_model("reference")
        self.reference_cache = ReferenceCache(len(self.rows))
        # foreach: one fused kernel per step instead of a loop over tensors (same numbers).
        self.optimizer = torch.optim.AdamW(
            run.policy.parameters(), lr=config.lr, weight_decay=config.weight_decay, foreach=True
        )

    @alignbench.hookimpl
    def alignbench_rollout(self, run: Run, prompts: list[dict[str, Any]]) -> Batch:
        """This rank's share of the next pairs (chosen, rejected per prompt) with their cached
        reference log-probs."""
        # Every rank draws the step's pairs (the same seeded stream) and keeps its shard.
        index = [row["pair"] for row in self.pairs.next()]
        positions = distributed.shard(list(range(len(index))))
        mine = [index[b] for b in positions]
        responses = [ids for i in mine for ids in (self.chosen[i], self.rejected[i])]
        batch = run.collate(
            [self.rows[i] for i in mine], responses, 2, ["chosen", "rejected"] * len(mine)
        )
        cache = self.reference_cache.values
        # First sight of a pair in this step (once, even if a pass boundary puts it twice in the
        # step): computed by the rank that holds its first place.
        first = {i: b for b, i in reversed(list(enumerate(index))) if cache[i].isnan().any()}
        local = {i: b - positions[0] for i, b in first.items() if b in positions}
        computed = torch.empty(0, 2)
        if local:
            at = torch.tensor(list(local.values()))
            rows = torch.stack([2 * at, 2 * at + 1], dim=1).flatten()
            with torch.no_grad():
                computed = sequence_logprobs(self.reference, batch, rows).view(-1, 2).cpu()
        # Every rank's new values into every rank's cache, so the caches stay equal.
        for pairs, values in distributed.gather((list(local), computed)):
            if pairs:
                cache[torch.tensor(pairs)] = values
        batch.extras.update(
            pair_index=torch.tensor(mine),
            ref_logprobs=cache[torch.tensor(mine)].to(batch.input_ids.device),
            reference_forwards=len(first),
            step_pairs=len(index),
        )
        return batch

    @alignbench.hookimpl
    def alignbench_score(self, run: Run, batch: Batch) -> Batch:
        """The label as the reward (1 chosen, 0 rejected): offline DPO runs no reward."""
        batch.rewards = torch.tensor([1.0, 0.0] * len(batch.prompts))
        return batch

    @alignbench.hookimpl
    def alignbench_update(self, run: Run, batch: Batch) -> dict[str, float]:
        """One step on the DPO loss of the batch's pairs (every rank's, with several processes)."""
        c = self.config
        run.policy.train()
        logprobs = sequence_logprobs(run.policy, batch).view(-1, 2)  # [B, 2]: chosen, rejected
        reference = batch.extras["ref_logprobs"]
        loss, chosen, rejected = ops.dpo_loss(
            logprobs[:, 0],
            logprobs[:, 1],
            reference[:, 0],
            reference[:, 1],
            c.beta,
            c.loss_type,
            c.label_smoothing,
        )
        run.check_finite(**{"loss/dpo": loss})
        # A mean over the global step's pairs: this rank's mean times its share of them (1.0 in
        # one process), the gradients then summed over ranks.
        share = distributed.share(len(batch.prompts))
        self.optimizer.zero_grad(set_to_none=True)
        run.backward(loss * share)  # scaled under fp16
        distributed.sum_gradients(run.policy.parameters())  # before clipping
        grad_norm = run.optimizer_step(self.optimizer, run.policy.parameters(), c.max_grad_norm)
        run.policy.eval()
        # Means over every rank's pairs (grad_norm is already the global batch's).
        means = distributed.weighted_sum(
            {
                "loss/dpo": loss.item(),
                "rewards/chosen": chosen.mean().item(),
                "rewards/rejected": rejected.mean().item(),
                "rewards/margins": (chosen - rejected).mean().item(),
                "rewards/accuracies": (chosen > rejected).float().mean().item(),
                "logps/chosen": logprobs[:, 0].mean().item(),
                "logps/rejected": logprobs[:, 1].mean().item(),
            },
            share,
        )
        return {
            **means,
            "policy/grad_norm": grad_norm.item(),
            "dpo/pairs": float(len(self.rows)),
            # Passes over the pairs so far, and the reference forwards this step cost (pairs).
            "dpo/epoch": (run.step + 1) * batch.extras["step_pairs"] / len(self.rows),
            "dpo/reference_pairs": float(batch.extras["reference_forwards"]),
        }


@alignbench.hookimpl
def alignbench_register_algorithms(register: alignbench.Register) -> None:
    """Register ``dpo``."""
    register("dpo", DPO, DPOConfig)
