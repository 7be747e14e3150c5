"""The base class of rewards: a callable that scores responses to prompts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

from alignbench.config import RewardConfig
from alignbench.task import Task

if TYPE_CHECKING:
    from alignbench.batch import Batch
    from alignbench.run import Run


def checked_rewards(values: Any, n: int, name: str) -> torch.Tensor:
    """``values`` if it is a tensor of shape ``[n]``; else one line naming the reward and the shape
    (N+1 values, or ``[[x]] * N``, would otherwise broadcast or crash deep inside an algorithm)."""
    if not isinstance(values, torch.Tensor) or tuple(values.shape) != (n,):
        shape = list(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        from alignbench.errors import PluginError

        raise PluginError(
            f"reward {name!r} gave rewards of shape {shape} for {n} responses — a reward "
            f"returns one float per response: shape [{n}]"
        )
    return values


class Reward:
    """Scores responses: ``reward(rows, responses) -> Tensor[N]``, one float per response.

    Constructed once per run with its config and the run's task (whose gold judge a rule-based
    reward may use). Subclasses implement :meth:`score` (texts), or override :meth:`score_batch`
    to score token ids directly (a reward model sharing the policy's tokenizer).
    """

    #: True for a reward that needs the stage-2 reward model (the core trains or loads it first).
    needs_reward_model: ClassVar[bool] = False
    #: Online feedback rounds: :meth:`refresh` is called this many times, evenly over the budget.
    rounds: int = 0

    def __init__(self, config: RewardConfig, task: Task) -> None:
        self.config = config
        self.task = task

    def setup(self, run: Run) -> None:
        """Called once the run exists (a model-based reward tracks its model's FLOPs here)."""

    def refresh(self, run: Run) -> dict[str, float]:
        """Online feedback: update the reward from the current policy; returns statistics."""
        return {}

    def before_step(self, run: Run) -> dict[str, float]:
        """Called before every step (delayed feedback arrives here); returns statistics."""
        return {}

    def score(self, rows: list[dict[str, Any]], responses: list[str]) -> list[float]:
        """One reward per (row, response) pair."""
        raise NotImplementedError

    def __call__(self, rows: list[dict[str, Any]], responses: list[str]) -> torch.Tensor:
        """The rewards as a float32 tensor ``[N]``."""
        return torch.tensor(self.score(rows, responses), dtype=torch.float32)

    def score_batch(self, batch: Batch) -> torch.Tensor:
        """Rewards ``[N]`` of a batch's sequences; by default from their rows and response texts."""
        return self(batch.rows, batch.responses)
