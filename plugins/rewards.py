"""Built-in rule rewards, computed from the task's gold judge."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import alignbench
from alignbench import (
    ABSTAIN,
    CORRECT,
    Batch,
    FeedbackSource,
    Group,
    Reward,
    RewardConfig,
    Run,
    ScalarHeadModel,
    collate,
    encode_responses,
    load_groups,
    request_feedback,
    retrain_reward_model,
    sequence_rewards,
    to_object,
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

    def score(self, rows: list[dict[str, Any]], responses: list[str]) -> list[float]:
        """1.0 for each correct response, 0.0 for the rest."""
        return [
            float(self.task.judge(row, r) == CORRECT)
            for row, r in zip(rows, responses, strict=True)
        ]


@dataclass
class LearnedRewardConfig(RewardConfig):
    """The stage-2 reward model; its settings live under ``feedback.*`` and ``stage.rm.*``."""


class LearnedReward(Reward):
    """Scores with the reward model trained from ranked feedback (stage 2 of the pipeline).

    Online rounds (``feedback.rounds``) request fresh rankings of the current policy's
    responses; with ``feedback.delay = D`` the rankings requested at step t wait in
    ``pending`` and arrive at step t + D, when the reward model is trained on every group
    that has arrived (each group records ``requested_at`` and ``arrived_at``).
    """

    needs_reward_model = True

    def use_reward_model(
        self, model: ScalarHeadModel, tokenizer: Any, source: FeedbackSource, cfg: Any, path: Path
    ) -> None:
        """Receive the trained reward model, and what online feedback rounds need."""
        self.model, self.tokenizer, self.source = model, tokenizer, source
        self.feedback, self.rm_cfg = to_object(cfg.feedback), to_object(cfg.stage.rm)
        self.rounds = self.feedback.rounds
        self.delay = self.feedback.delay
        self.groups = load_groups(path / "train.jsonl")
        # Requested, not yet arrived: (step they arrive, groups), oldest first.
        self.pending: list[tuple[int, list[Group]]] = []
        self.rng = np.random.default_rng(self.feedback.seed + 1)

    def setup(self, run: Run) -> None:
        """Charge the reward model's passes to the run's budget."""
        run.track(self.model, "reward_model")
        self.generator = torch.Generator().manual_seed(run.cfg.seed + 17)

    @torch.no_grad()
    def score_batch(self, batch: Batch) -> torch.Tensor:
        """The reward model's scalar at each sequence's last token."""
        return sequence_rewards(self.model, batch.input_ids, batch.attention_mask)

    def score(self, rows: list[dict[str, Any]], responses: list[str]) -> list[float]:
        """Score texts by tokenising them as the policy would."""
        ids = encode_responses(self.tokenizer, responses)
        batch = collate(self.tokenizer, rows, ids, 1, ["eval"] * len(rows))
        return self.score_batch(batch).tolist()

    def state_dict(self) -> dict[str, Any]:
        """With online rounds the reward model changes during RL: its weights and groups."""
        if not self.rounds:
            return {}
        state = {
            "model": self.model.state_dict(),
            "groups": json.dumps([_group_dict(g) for g in self.groups]),
            "rng": self.rng.bit_generator.state,
            # The sampler of fresh groups: without it a resumed run samples other groups.
            "generator": self.generator.get_state(),
        }
        if self.delay:  # labels still on their way are part of where the run stands
            state["pending"] = json.dumps(
                [[due, [_group_dict(g) for g in groups]] for due, groups in self.pending]
            )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue online rounds with the saved reward model and groups."""
        if not state:
            return
        self.model.load_state_dict(state["model"])
        self.groups = [Group(**g) for g in json.loads(state["groups"])]
        self.pending = [
            (int(due), [Group(**g) for g in groups])
            for due, groups in json.loads(state.get("pending", "[]"))
        ]
        self.rng.bit_generator.state = state["rng"]
        if "generator" in state:
            self.generator.set_state(state["generator"])

    def refresh(self, run: Run) -> dict[str, float]:
        """Request rankings of fresh groups from the current policy; they arrive after
        ``feedback.delay`` steps (at once without a delay) and retrain the reward model."""
        fresh = request_feedback(
            self.model,
            run.policy,
            self.tokenizer,
            self.task,
            self.source,
            self.feedback,
            self.rm_cfg,
            self.rng,
            self.generator,
        )
        for group in fresh:
            group.extras["requested_at"] = run.step
        self.pending.append((run.step + self.delay, fresh))
        stats = self.before_step(run)
        if self.delay:
            stats["feedback/requested"] = float(len(fresh))
        return stats

    def before_step(self, run: Run) -> dict[str, float]:
        """Delayed feedback: the groups due by this step join the others and the reward model
        is trained on all of them; nothing happens while none is due."""
        arrived = [g for due, groups in self.pending if due <= run.step for g in groups]
        if not arrived:
            return {}
        self.pending = [(due, groups) for due, groups in self.pending if due > run.step]
        for group in arrived:
            group.extras["arrived_at"] = run.step
        self.groups.extend(arrived)
        stats = retrain_reward_model(self.model, self.tokenizer, self.groups, self.rm_cfg)
        if self.delay:
            stats["feedback/pending"] = float(sum(len(groups) for _, groups in self.pending))
            stats["feedback/label_age"] = float(
                run.step - min(g.extras["requested_at"] for g in arrived)
            )
        return stats


def _group_dict(group: Group) -> dict[str, Any]:
    """A group as JSON-ready fields (a checkpoint keeps where online groups came from)."""
    return {
        "row": group.row,
        "responses": group.responses,
        "gold": group.gold,
        "preference": group.preference,
        "extras": group.extras,
    }


@alignbench.hookimpl
def alignbench_register_rewards(register: alignbench.Register) -> None:
    """Register ``abstention``, ``exact_match`` and ``rm``."""
    register("abstention", AbstentionReward, AbstentionConfig)
    register("exact_match", ExactMatchReward, ExactMatchConfig)
    register("rm", LearnedReward, LearnedRewardConfig)
