"""The base class of rewards: a callable that scores responses to prompts, and its lifecycle."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from omegaconf import DictConfig

from alignbench.config import RewardConfig
from alignbench.task import Task

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from alignbench.batch import Batch
    from alignbench.rm.feedback import FeedbackSource
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


@dataclass
class PrepareContext:
    """What :meth:`Reward.prepare` receives, before the run exists: the job's config and task,
    the stage-1 model (its folder, cache key and tokenizer), the device every model lives on,
    and ``feedback()``, which builds the configured ``feedback=`` source on demand."""

    cfg: DictConfig
    task: Task
    tokenizer: PreTrainedTokenizerBase
    sft_path: Path
    sft_key: str
    device: torch.device
    feedback: Callable[[], FeedbackSource]


class Reward:
    """Scores responses: ``reward(rows, responses) -> Tensor[N]``, one float per response.

    Constructed once per run with its config and the run's task (whose gold judge a rule-based
    reward may use). Subclasses implement :meth:`score` (texts), or override :meth:`score_batch`
    to score token ids directly (a reward model sharing the policy's tokenizer).

    The core calls the lifecycle of every reward, in this order: :meth:`prepare` (before the run
    exists: build or load what the reward needs), :meth:`setup` (the run exists),
    :meth:`before_step` (before every training step), :meth:`state_dict` /
    :meth:`load_state_dict` (checkpoints) and :meth:`final_metrics` (after the final
    evaluation). Every default does nothing, which is right for a rule reward.
    """

    #: True for a reward whose :meth:`prepare` uses the ``feedback=`` source: that plugin's code
    #: then belongs to the job's fingerprint, like the reward's own.
    uses_feedback: ClassVar[bool] = False
    #: True for a reward that scores conversations (:meth:`score_turns`); a multi-turn task
    #: accepts only such rewards, checked before stage 1 trains.
    multi_turn: ClassVar[bool] = False
    #: True for a reward that judges responses against the task's gold answers
    #: (``task.judge``): a task whose scored prompts lack them (:meth:`Task.missing_gold`) is
    #: refused before stage 1 trains. Undeclared (False): never refused up front.
    needs_gold: ClassVar[bool] = False

    def __init__(self, config: RewardConfig, task: Task) -> None:
        self.config = config
        self.task = task

    def prepare(self, context: PrepareContext) -> dict[str, Any]:
        """Called once after stage 1, before the run exists: build or load what the reward needs
        (a learned reward trains its reward model here, cached). Returns records for the job's
        summary, e.g. ``{"stage/rm": {...}}`` (nothing by default)."""
        return {}

    def setup(self, run: Run) -> None:
        """Called once the run exists (a model-based reward tracks its model's FLOPs here)."""

    def before_step(self, run: Run) -> dict[str, float]:
        """Called before every training step, as part of it (what it computes is charged to the
        step's budget); returns statistics logged with the step. A learned reward's online
        feedback happens here: rounds requested, delayed labels arriving."""
        return {}

    @classmethod
    def changes_during_training(cls, cfg: DictConfig) -> str | None:
        """Why this reward may change during the job ``cfg`` describes (what its
        :meth:`before_step` does), or None: such a reward is not data-parallel yet (every rank
        would have to change it alike). By default any reward with a :meth:`before_step` may."""
        if cls.before_step is Reward.before_step:
            return None
        return "it has a before_step hook, so it may update itself during training"

    @classmethod
    def asks_feedback(cls, config: RewardConfig) -> bool:
        """Whether this reward, configured by ``config``, asks the ``feedback=`` source for
        rankings (stage 2, online rounds): by default :attr:`uses_feedback`. A start-up check
        (a source that ranks by gold answers on data without them) reads it."""
        return cls.uses_feedback

    @classmethod
    def model_roles(cls, config: RewardConfig) -> frozenset[str] | None:
        """``{"reward"}`` when this reward, configured by ``config``, will hold a network as its
        ``model`` (what ``placement.reward`` moves), ``frozenset()`` when it will not; None (the
        default): not declared, so ``placement.reward`` is checked only once the run is built."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """What of the reward changes during RL, saved in every checkpoint (tensors, numbers,
        strings, and lists and dicts of them); nothing by default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from what :meth:`state_dict` saved (a resumed run)."""

    def final_metrics(self, run: Run) -> dict[str, float]:
        """Called once after the final evaluation: metrics added to the job's summary (not
        charged to the budget); nothing by default."""
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
