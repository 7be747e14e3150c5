"""The base class of rewards: a callable that scores responses to prompts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from alignbench.config import RewardConfig
from alignbench.task import Task

if TYPE_CHECKING:
    from alignbench.batch import Batch


class Reward:
    """Scores responses: ``reward(rows, responses) -> Tensor[N]``, one float per response.

    Constructed once per run with its config and the run's task (whose gold judge a rule-based
    reward may use). Subclasses implement :meth:`score` (texts), or override :meth:`score_batch`
    to score token ids directly (a reward model sharing the policy's tokenizer).
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

    def score_batch(self, batch: Batch) -> torch.Tensor:
        """Rewards ``[N]`` of a batch's sequences; by default from their rows and response texts."""
        return self(batch.rows, batch.responses)
