"""Built-in rule rewards, computed from the task's gold judge."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import alignbench
from alignbench import ABSTAIN, CORRECT, Reward, RewardConfig


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


@alignbench.hookimpl
def alignbench_register_rewards(register: alignbench.Register) -> None:
    """Register ``abstention`` and ``exact_match``."""
    register("abstention", AbstentionReward, AbstentionConfig)
    register("exact_match", ExactMatchReward, ExactMatchConfig)
