"""The base class of rewards: a callable that scores responses to prompts."""

from __future__ import annotations

from typing import Any

import torch

from alignbench.config import RewardConfig
from alignbench.task import Task


class Reward:
    """Scores responses: ``reward(rows, responses) -> Tensor[N]``, one float per response.

    Constructed once per run with its config and the run's task (whose gold judge a rule-based
    reward may use). Subclasses implement :meth:`score`.
    """

    def __init__(self, config: RewardConfig, task: Task) -> None:
        self.config = config
        self.task = task

    def score(self, rows: list[dict[str, Any]], responses: list[str]) -> list[float]:
        """One reward per (row, response) pair."""
        raise NotImplementedError

    def __call__(self, rows: list[dict[str, Any]], responses: list[str]) -> torch.Tensor:
        """The rewards as a float32 tensor ``[N]``."""
        return torch.tensor(self.score(rows, responses), dtype=torch.float32)
