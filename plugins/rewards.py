"""Built-in rewards: rule rewards from the task's gold judge, and the learned reward (stage 2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

import alignbench
from alignbench import (
    ABSTAIN,
    CORRECT,
    Batch,
    PrepareContext,
    Reward,
    RewardConfig,
    RewardModel,
    Run,
    ScalarHeadModel,
    distributed,
)


@dataclass
class AbstentionConfig(RewardConfig):
    """Values of the three outcomes; a strongly negative ``wrong`` teaches abstention."""

    correct: float = 1.0
    abstain: float = 0.0
    wrong: float = -2.0


class AbstentionReward(Reward):
    """Correct answer high, "I don't know" low, wrong answer strongly negative."""

    config: AbstentionConfig
    needs_gold = True

    @classmethod
    def model_roles(cls, config: RewardConfig) -> frozenset[str]:
        """No model for ``placement.reward`` to move: a rule."""
        return frozenset()

    def score(self, rows: list[dict[str, Any]], responses: list[str]) -> list[float]:
        """The configured value of each response's gold label."""
        values = {CORRECT: self.config.correct, ABSTAIN: self.config.abstain}
        return [
            values.get(self.task.judge(row, r), self.config.wrong)
            for row, r in zip(rows, responses, strict=True)
        ]


@dataclass
class ExactMatchConfig(RewardConfig):
    """No settings: 1 for a correct answer, 0 otherwise."""


class ExactMatchReward(Reward):
    """1 if the gold judge says correct, else 0."""

    needs_gold = True

    @classmethod
    def model_roles(cls, config: RewardConfig) -> frozenset[str]:
        """No model for ``placement.reward`` to move: a rule."""
        return frozenset()

    def score(self, rows: list[dict[str, Any]], responses: list[str]) -> list[float]:
        """1.0 for each correct response, 0.0 for the rest."""
        return [
            float(self.task.judge(row, r) == CORRECT)
            for row, r in zip(rows, responses, strict=True)
        ]


@dataclass
class LearnedRewardConfig(RewardConfig):
    """The stage-2 reward model; its settings live under ``feedback.*`` and ``stage.rm.*``."""

    # A trained reward model's own local folder instead of stage 2 (nothing trained, no ranked
    # groups): a sequence classifier with num_labels=1 or RewardModel.export's format; empty:
    # stage 2. Another tokenizer than the policy's scores the decoded text (README).
    path: str = field(default="", metadata={"model_folder": "reward"})
    # true = score a Llama-shaped reward network at each sequence's last token alone
    # (alignbench.lean_forward.last_values: the last layer's queries and MLP at that position;
    # within 1e-5 of the full forward, fewer FLOPs charged); any other network, LoRA adapters,
    # placement hooks or autocast take the full forward. Off by default (issue 17's fast path).
    lean_forward: bool = False

    def validate(self) -> None:
        """A ``path`` must be a usable reward-model folder (one line, before stage 1)."""
        if self.path:
            alignbench.check_model_folder(alignbench.input_path(self.path), "reward.path", "reward")


class LearnedReward(Reward):
    """Scores with the reward model trained from ranked feedback (stage 2 of the pipeline).

    Online rounds (``feedback.rounds``) are spread evenly over the budget: round r is requested
    at the first step whose budget fraction reaches r / (rounds + 1), and its rankings arrive
    ``feedback.delay`` steps later (at once without a delay), when the reward model is trained
    on every group that has arrived (:class:`alignbench.RewardModel`).
    """

    uses_feedback = True

    @classmethod
    def asks_feedback(cls, config: RewardConfig) -> bool:
        """Stage 2 and online rounds ask the source; a reward model read from ``reward.path``
        has neither (nothing ranks for it)."""
        return not config.path

    @classmethod
    def model_roles(cls, config: RewardConfig) -> frozenset[str]:
        """Its reward model (stage 2's, or ``reward.path``'s) is what ``placement.reward`` moves."""
        return frozenset({"reward"})

    def prepare(self, context: PrepareContext) -> dict[str, Any]:
        """Train the reward model (stage 2, cached) before the run, or read it from
        ``reward.path``."""
        self.refreshed = 0  # online rounds requested so far
        if self.config.path:
            self.reward_model = RewardModel.from_folder(
                self.config.path, context.tokenizer, context.device
            )
            return {"reward/folder": self.reward_model.info}
        self.reward_model = RewardModel.train(context)
        return {"stage/rm": self.reward_model.info}

    @property
    def model(self) -> ScalarHeadModel:
        """The reward model's network (PPO's ``critic_init=reward_model`` starts from it)."""
        return self.reward_model.network

    def setup(self, run: Run) -> None:
        """Charge the reward model's passes to the run's budget; a deferred feedback source (the
        ranking page) learns the job's folder, where it exchanges groups and labels (rank 0's
        folder: only rank 0 asks for feedback)."""
        run.track(self.reward_model.network, "reward_model")
        # An online round's selection (a probe, embeddings) runs on copies: charged here too.
        self.reward_model.flops = run.flops
        # Where the policy's responses end (a chat model may list several end ids).
        self.reward_model.stops = tuple(alignbench.eos_ids(run.policy, run.tokenizer))
        self.reward_model.lean = self.config.lean_forward
        if distributed.is_main_process():
            self.reward_model.open_feedback(run.output_dir)

    def before_step(self, run: Run) -> dict[str, float]:
        """Delayed labels due by this step arrive; an online round that is due is requested.

        With several processes rank 0 alone does both (the policy is the same on every rank, and
        the reward model's own random streams are one process's, so it asks for and trains on
        what one process would); its statistics and, when it retrained, its weights then reach
        every rank, so that all score their shards with the same model."""
        if distributed.world_size() == 1:
            return self._feedback(run)
        if not self.reward_model.rounds:  # nothing to ask or to wait for (the same on each rank)
            return {}

        def on_main() -> tuple[dict[str, float], bool]:
            trained_on = len(self.reward_model.groups)
            stats = self._feedback(run)
            # Arrived groups (and only they) retrain the network.
            return stats, len(self.reward_model.groups) != trained_on

        stats, retrained = distributed.decided_on_main(on_main)
        self.refreshed = int(distributed.broadcast(self.refreshed))
        if retrained:
            distributed.broadcast_module(self.reward_model.network)
        return stats

    def _feedback(self, run: Run) -> dict[str, float]:
        """Arrivals due now, then the online round due now (if any): their statistics."""
        stats = self.reward_model.arrive(run.step)
        rounds = self.reward_model.rounds
        if self.refreshed < rounds and run.budget.fraction >= (self.refreshed + 1) / (rounds + 1):
            stats.update(self.reward_model.refresh(run.policy, run.step))
            self.refreshed += 1
        return stats

    @classmethod
    def changes_during_training(cls, cfg: Any) -> str | None:
        """None: online rounds (``feedback.rounds`` > 0) retrain the reward model during RL,
        but :meth:`before_step` keeps every rank's copy the same (rank 0's), so it is
        data-parallel with and without them."""
        return None

    def score_batch(self, batch: Batch) -> torch.Tensor:
        """The reward model's scalar at each sequence's last token."""
        return self.reward_model.score(batch)

    def score(self, rows: list[dict[str, Any]], responses: list[str]) -> list[float]:
        """Score texts by tokenising them as the policy would."""
        return self.reward_model.score_texts(rows, responses)

    def state_dict(self) -> dict[str, Any]:
        """With online rounds the reward model changes during RL: its state and the rounds."""
        if not self.reward_model.rounds:
            return {}
        return {**self.reward_model.state_dict(), "refreshed": self.refreshed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue online rounds where the checkpoint left them."""
        if not state:
            return
        self.reward_model.load_state_dict(state)
        self.refreshed = int(state["refreshed"])

    def final_metrics(self, run: Run) -> dict[str, float]:
        """The trained policy read as a reward model, on the stage's held-out groups."""
        return self.reward_model.policy_metrics(run)


@alignbench.hookimpl
def alignbench_register_rewards(register: alignbench.Register) -> None:
    """Register ``abstention``, ``exact_match`` and ``rm``."""
    register("abstention", AbstentionReward, AbstentionConfig)
    register("exact_match", ExactMatchReward, ExactMatchConfig)
    register("rm", LearnedReward, LearnedRewardConfig)
