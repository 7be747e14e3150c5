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
    #: True for a reward that scores conversations (:meth:`score_turns`); a multi-turn task
    #: accepts only such rewards, checked before stage 1 trains.
    multi_turn: ClassVar[bool] = False

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

    @property
    def turn_gamma(self) -> float:
        """The discount between assistant turns (``config.turn_gamma``, else 1): a dialogue's
        return is ``sum_t turn_gamma**t * r_t``."""
        return float(getattr(self.config, "turn_gamma", 1.0))

    def score_turns(
        self, rows: list[dict[str, Any]], dialogues: list[list[dict[str, str]]]
    ) -> list[list[float]]:
        """One reward per assistant turn of each dialogue (a multi-turn reward implements it)."""
        from alignbench.errors import ConfigError

        name = getattr(self.config, "name", type(self).__name__)
        raise ConfigError(
            f"reward={name} scores single responses, not dialogues — use a multi-turn reward "
            "(for task=dialogue: reward=turn, dialogue or mixed)"
        )


def turn_rewards(
    reward: Reward, rows: list[dict[str, Any]], dialogues: list[list[dict[str, str]]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(per_turn [N, T], returns [N])`` of a multi-turn reward: ``per_turn[n, t]`` rewards the
    t-th assistant turn (0 after the dialogue's last), ``returns = sum_t gamma**t per_turn``;
    one line naming the reward when it gives the wrong number of values."""
    from alignbench.errors import PluginError

    values = reward.score_turns(rows, dialogues)
    turns = [sum(m["role"] == "assistant" for m in d) for d in dialogues]
    name = str(getattr(getattr(reward, "config", None), "name", type(reward).__name__))
    if not isinstance(values, list) or len(values) != len(dialogues):
        raise PluginError(
            f"reward {name!r}: score_turns gave {type(values).__name__} for {len(dialogues)} "
            "dialogues — it returns one list of floats per dialogue"
        )
    for i, (row_values, count) in enumerate(zip(values, turns, strict=True)):
        if len(row_values) != count:
            raise PluginError(
                f"reward {name!r}: score_turns gave {len(row_values)} values for dialogue {i} "
                f"with {count} assistant turns — one value per assistant turn"
            )
    per_turn = torch.zeros(len(dialogues), max([1, *turns]))
    for i, row_values in enumerate(values):
        per_turn[i, : len(row_values)] = torch.tensor(row_values, dtype=torch.float32)
    discount = reward.turn_gamma ** torch.arange(per_turn.shape[1], dtype=torch.float32)
    return per_turn, (per_turn * discount).sum(-1)
