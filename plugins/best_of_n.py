"""Best-of-N: an inference-time baseline that trains nothing.

At evaluation, N answers per question are sampled from the policy (the stage-1 SFT model, since
nothing is trained) and the one the run's reward scores highest is kept, ties broken at random.
The reward is the one every other algorithm of the run trains with (``reward=``: a rule reward,
the learned reward model, ...), never the task's gold verdict as such; with a rule reward built
from the gold judge (``abstention``, ``exact_match``) best-of-N is an oracle verifier, the
ceiling of selection rather than a realistic method: compare it with ``reward=rm``.

How it sits in a comparison (see docs/plugins.md, ``trains = False``): no training step, no
training FLOPs (``budget/flops`` = 0); evaluated at step 0 (the SFT model's greedy answers, the
common start) and once at the end, with best-of-N answers. What answering costs is measured as
``<prefix>/flops_per_question``: N generations plus N reward forwards per question (a rule
reward costs no FLOPs), beside a trained policy's single greedy decode, so a reader sees when
best-of-N beats training at equal compute and what each answer costs.

On several processes (``data_parallel = True``) every rank is handed the same questions; each
samples and scores its contiguous shard of them, and the answers are gathered in order, so N
samples per question cost 1 / ranks of the time (the FLOPs per question are every rank's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import alignbench
from alignbench import AlgorithmConfig, ConfigError, Run, SamplingParams, distributed, ops


@dataclass
class BestOfNConfig(AlgorithmConfig):
    """Best-of-N at evaluation: N samples per question, the highest-reward one answers."""

    # N. Nakano et al. 2021 (WebGPT) compare best-of-4, 16 and 64 with RL; Gao et al. 2023
    # ("Scaling Laws for Reward Model Overoptimization") measure best-of-n up to n in the
    # thousands. 16 is a middle point: 16 generations + 16 reward forwards per question.
    n: int = 16

    def validate(self) -> None:
        """Refuse an N below 1 (one line naming the key)."""
        if self.n < 1:
            raise ConfigError(f"algo.n={self.n} — best-of-N needs N >= 1 samples per question")


class BestOfN:
    """No training (``trains = False``); answers evaluation questions with best-of-N."""

    #: The loop takes no training step: the run is evaluated at step 0 and at the end.
    trains = False
    #: Runs on several processes (``accelerate launch``): each rank answers its shard of the
    #: questions, the answers are gathered (alignbench.distributed).
    data_parallel = True

    @classmethod
    def model_roles(cls, config: BestOfNConfig) -> frozenset[str]:
        """What ``placement.*`` may move: nothing (best-of-N builds no model of its own)."""
        return frozenset()

    def __init__(self, run: Run, config: BestOfNConfig) -> None:
        self.config = config
        self.params = SamplingParams.from_config(config.sampling)

    @alignbench.hookimpl
    def alignbench_respond(self, run: Run, rows: list[dict[str, Any]]) -> list[str]:
        """N samples per question, scored by the run's reward; the best of each answers (every
        rank answers its shard of ``rows``, the same on every rank, and gets every answer)."""
        n = self.config.n
        # A no-op in one process; with several, the other shards come from the other ranks.
        everything, rows = rows, distributed.shard(rows)
        # As many questions per sampling call as keep it at eval.batch_size sequences.
        per_call = max(1, run.eval_batch_size // n)
        answers: list[str] = []
        for start in range(0, len(rows), per_call):
            batch = run.sample(run.policy, rows[start : start + per_call], n, self.params)
            rewards = batch.grouped(run.rewards(batch).float())  # [B, N]
            best = ops.random_argmax(rewards, run.generator)  # ties at random, not the first
            answers += [batch.responses[b * n + int(k)] for b, k in enumerate(best)]
        if distributed.world_size() == 1:
            return answers
        answers = [answer for part in distributed.gather(answers) for answer in part]
        assert len(answers) == len(everything)  # the shards in rank order are the questions
        return answers


@alignbench.hookimpl
def alignbench_register_algorithms(register: alignbench.Register) -> None:
    """Register ``best_of_n``."""
    register("best_of_n", BestOfN, BestOfNConfig)
