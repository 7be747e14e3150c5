"""Greedy evaluation of a model on the task's held-out sets."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignbench.config import EvalConfig
from alignbench.reward import Reward, checked_rewards
from alignbench.sampling import SamplingParams, sample
from alignbench.task import Task


def generate_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[dict[str, Any]],
    max_new_tokens: int,
    batch_size: int,
) -> list[str]:
    """Greedy responses to every row, in batches."""
    params = SamplingParams(max_new_tokens=max_new_tokens, greedy=True)
    responses: list[str] = []
    for start in range(0, len(rows), batch_size):
        responses += sample(model, tokenizer, rows[start : start + batch_size], 1, params).responses
    return responses


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    reward: Reward,
    cfg: EvalConfig,
) -> dict[str, float]:
    """``{<prefix>/<metric>: value}`` for every eval set of the task, plus ``<prefix>/reward``."""
    metrics: dict[str, float] = {}
    for prefix, split in task.eval_sets.items():
        rows = task.splits[split].to_list()
        responses = generate_greedy(model, tokenizer, rows, cfg.max_new_tokens, cfg.batch_size)
        values = task.metrics(rows, responses)
        name = str(getattr(getattr(reward, "config", None), "name", type(reward).__name__))
        scores = checked_rewards(reward(rows, responses), len(rows), name)
        values["reward"] = float(scores.mean())
        gold = [task.gold_utility(row, r) for row, r in zip(rows, responses, strict=True)]
        if gold and None not in gold:
            # The truth next to the proxy: over-optimisation shows as a growing gap.
            values["gold_reward"] = sum(gold) / len(gold)
        metrics.update({f"{prefix}/{name}": float(v) for name, v in values.items()})
    return metrics
