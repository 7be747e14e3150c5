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
    refresh_reward_model,
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
    """Scores with the reward model trained from ranked feedback (stage 2 of the pipeline)."""

    needs_reward_model = True

    def use_reward_model(
        self, model: ScalarHeadModel, tokenizer: Any, source: FeedbackSource, cfg: Any, path: Path
    ) -> None:
        """Receive the trained reward model, and what online feedback rounds need."""
        self.model, self.tokenizer, self.source = model, tokenizer, source
        self.feedback, self.rm_cfg = to_object(cfg.feedback), to_object(cfg.stage.rm)
        self.rounds = self.feedback.rounds
        self.groups = load_groups(path / "train.jsonl")
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
        groups = [
            {"row": g.row, "responses": g.responses, "gold": g.gold, "preference": g.preference}
            for g in self.groups
        ]
        return {
            "model": self.model.state_dict(),
            "groups": json.dumps(groups),
            "rng": self.rng.bit_generator.state,
            # The sampler of fresh groups: without it a resumed run samples other groups.
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue online rounds with the saved reward model and groups."""
        if not state:
            return
        self.model.load_state_dict(state["model"])
        self.groups = [Group(**g) for g in json.loads(state["groups"])]
        self.rng.bit_generator.state = state["rng"]
        if "generator" in state:
            self.generator.set_state(state["generator"])

    def refresh(self, run: Run) -> dict[str, float]:
        """Rank fresh groups from the current policy and keep training the reward model."""
        return refresh_reward_model(
            self.model,
            run.policy,
            self.tokenizer,
            self.task,
            self.source,
            self.feedback,
            self.rm_cfg,
            self.groups,
            self.rng,
            self.generator,
        )


@alignbench.hookimpl
def alignbench_register_rewards(register: alignbench.Register) -> None:
    """Register ``abstention``, ``exact_match`` and ``rm``."""
    register("abstention", AbstentionReward, AbstentionConfig)
    register("exact_match", ExactMatchReward, ExactMatchConfig)
    register("rm", LearnedReward, LearnedRewardConfig)
