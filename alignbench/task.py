"""The base class of tasks: data splits, vocabulary, gold judge and evaluation metrics."""

from __future__ import annotations

import re
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from alignbench.config import TaskConfig

if TYPE_CHECKING:
    from datasets import Dataset

#: Outcomes of the gold judge.
CORRECT, ABSTAIN, WRONG = "correct", "abstain", "wrong"


def normalize_answer(text: str) -> str:
    """``text`` as answers are compared: lower case, whitespace collapsed, and sentence marks
    right after the last word dropped (``"Red."`` is ``"red"``) — what a subword model may add
    around a word-level answer; a word-level model's output is left as it is."""
    return re.sub(r"(?<=\w)[.!?,;:]+$", "", " ".join(text.split()).lower())


class Task:
    """A task: what to train on, what to ask, and how to tell a good answer from a bad one.

    Subclasses implement :meth:`build_splits` and :meth:`judge`. Splits are Hugging Face
    ``datasets.Dataset`` objects with at least a ``prompt`` column; ``sft`` rows also carry the
    demonstration in ``response``. ``eval_sets`` maps a metric prefix (``eval``, ``eval_rl``) to
    the split evaluated under it.
    """

    #: The phrase that means "I do not know" for this task, or None if it has none.
    abstention: str | None = None
    #: metric prefix -> split name, evaluated greedily at each of ``eval.points`` budget points.
    eval_sets: dict[str, str] = {}
    #: The split a reward model's probe is scored on: held-out questions, never RL or RM prompts.
    probe_split: str = "test"
    #: True for a task whose rows start conversations: the core alternates assistant turns with
    #: :meth:`user_reply` until it returns None or ``config.max_turns`` assistant turns.
    multi_turn: ClassVar[bool] = False
    #: Metrics (with their eval prefix) the compare report shows by default; empty: the report's.
    headline_metrics: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: TaskConfig) -> None:
        self.config = config

    @cached_property
    def splits(self) -> dict[str, Dataset]:
        """The task's data, built once: ``{"sft": ..., "rl": ..., <eval splits>...}``."""
        return self.build_splits()

    def build_splits(self) -> dict[str, Dataset]:
        """Generate or load the task's splits."""
        raise NotImplementedError

    def vocabulary(self) -> list[str]:
        """Every word the built-in tokenizer needs for this task's prompts and responses."""
        raise NotImplementedError

    def judge(self, row: dict[str, Any], response: str) -> str:
        """Gold label of ``response`` to ``row``: ``correct``, ``abstain`` or ``wrong``."""
        raise NotImplementedError

    def gold_utility(self, row: dict[str, Any], response: str) -> float | None:
        """The hidden true value of ``response`` (what simulated annotators rank by), if known."""
        return None

    def missing_gold(self, splits: tuple[str, ...] | None = None) -> str | None:
        """Which prompts of ``splits`` have no gold answer for :meth:`judge`, in words ending
        with the fix, or None; ``splits`` None: the prompts a reward scores (RL and evaluation
        prompts); ``("rl",)``: those simulated annotators rank. The default, None, says
        nothing: a reward or feedback source that ``needs_gold`` is then not refused up
        front."""
        return None

    def probe_responses(self, row: dict[str, Any]) -> list[str]:
        """Responses to ``row`` spanning the gold range, to measure a reward model (optional)."""
        return []

    def probe_pairs(self, row: dict[str, Any], responses: list[str]) -> list[tuple[int, int]]:
        """Pairs ``(i, j)`` of probe responses where i is better and a scorer could know it.

        The default takes every pair that the gold utility orders strictly (i above j), except
        on a row marked ``known: False`` — a question whose answer the model was never shown.
        There a concrete answer cannot be told right from wrong, and the calibrated choice is
        to abstain, so only pairs whose better response is the task's :attr:`abstention` are
        kept. Rows without a ``known`` field keep every ordered pair. Override to say otherwise.
        """
        gold = [self.gold_utility(row, r) for r in responses]
        if None in gold:
            return []
        unknown = row.get("known") is False
        return [
            (i, j)
            for i in range(len(responses))
            for j in range(len(responses))
            if gold[i] > gold[j]
            and (
                not unknown
                or normalize_answer(responses[i]) == normalize_answer(self.abstention or "")
            )
        ]

    def metrics(self, rows: list[dict[str, Any]], responses: list[str]) -> dict[str, float]:
        """Evaluation metrics (without prefix) of greedy ``responses`` to ``rows``."""
        labels = [self.judge(row, r) for row, r in zip(rows, responses, strict=True)]
        return {"accuracy": sum(lab == CORRECT for lab in labels) / max(1, len(labels))}

    # -- multi-turn tasks (``multi_turn = True``) ------------------------------------------------
    # A conversation is a list of messages ``{"role": "user" | "assistant", "content": str}``
    # that starts with the user message ``row["prompt"]``. A single-turn task is the one-turn
    # environment these defaults describe.

    @property
    def max_turns(self) -> int:
        """The most assistant turns a conversation may have (``config.max_turns``, else 1)."""
        return int(getattr(self.config, "max_turns", 1)) if self.multi_turn else 1

    def user_reply(
        self, row: dict[str, Any], messages: list[dict[str, str]], rng: np.random.Generator
    ) -> str | None:
        """The user's next message after the assistant's last one, or None to end the dialogue.

        ``rng`` is seeded by the core per conversation: draw every random choice from it, so
        the same seed and the same replies give the same dialogue.
        """
        return None

    def turn_verdicts(self, row: dict[str, Any], messages: list[dict[str, str]]) -> list[str]:
        """The gold label (``correct`` / ``abstain`` / ``wrong``) of each assistant turn."""
        return [self.judge(row, m["content"]) for m in messages if m["role"] == "assistant"]

    def turn_utilities(
        self, row: dict[str, Any], messages: list[dict[str, str]]
    ) -> list[float] | None:
        """The hidden gold value of each assistant turn, if known."""
        replies = [m["content"] for m in messages if m["role"] == "assistant"]
        values = [self.gold_utility(row, r) for r in replies]
        return None if None in values else [float(v) for v in values if v is not None]

    def dialogue_utility(self, row: dict[str, Any], messages: list[dict[str, str]]) -> float | None:
        """The hidden gold value of the whole dialogue, if known (default: the turns' mean)."""
        values = self.turn_utilities(row, messages)
        return None if not values else sum(values) / len(values)

    def dialogue_metrics(
        self, rows: list[dict[str, Any]], dialogues: list[list[dict[str, str]]]
    ) -> dict[str, float]:
        """Evaluation metrics (without prefix) of greedy ``dialogues`` to ``rows``."""
        verdicts = [
            v for row, d in zip(rows, dialogues, strict=True) for v in self.turn_verdicts(row, d)
        ]
        return {"accuracy_turn": sum(v == CORRECT for v in verdicts) / max(1, len(verdicts))}
