"""Greedy evaluation of a model on the task's held-out sets."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from alignbench.batch import transcript
from alignbench.budget import FlopCounter
from alignbench.config import EvalConfig
from alignbench.errors import PluginError
from alignbench.reward import Reward, checked_rewards, turn_rewards
from alignbench.task import Task

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def _add_totals(
    values: dict[str, float],
    scores: torch.Tensor,
    gold: list[float | None],
    tally: dict[str, float] | None,
    count: int,
) -> None:
    """Add what every eval set reports beside the task's metrics: the mean ``reward``, the mean
    ``gold_reward`` where the task knows it, and ``flops_per_question`` when FLOPs are measured."""
    if tally is not None:
        # What answering one question cost: a policy's greedy decode, or N samples + N
        # reward forwards for best-of-N (a rule reward costs no FLOPs in this count).
        values["flops_per_question"] = sum(tally.values()) / max(1, count)
    values["reward"] = float(scores.mean())
    if gold and None not in gold:
        # The truth next to the proxy: over-optimisation shows as a growing gap.
        values["gold_reward"] = sum(g for g in gold if g is not None) / len(gold)


def generate_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[dict[str, Any]],
    max_new_tokens: int,
    batch_size: int,
) -> list[str]:
    """Greedy responses to every row, in batches."""
    # The sampler imports transformers' modelling code (seconds): only when generating.
    from alignbench.sampling import SamplingParams, sample

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
    respond: Callable[[list[dict[str, Any]]], list[str] | None] | None = None,
    flops: FlopCounter | None = None,
    samples: dict[str, list[dict[str, Any]]] | None = None,
) -> dict[str, float]:
    """``{<prefix>/<metric>: value}`` for every eval set of the task, plus ``<prefix>/reward``.

    With ``samples`` (a dict), ``samples[prefix]`` receives the completions behind the metrics:
    one record per row (:func:`completion_records`), at no extra generation.

    ``respond(rows)`` answers instead of greedy decoding when it returns a list (an algorithm's
    ``alignbench_respond``, e.g. best-of-N). With ``flops``, nothing is charged to the budget and
    the FLOPs spent answering are reported as ``<prefix>/flops_per_question``.
    """
    if task.multi_turn:
        return evaluate_dialogues(model, tokenizer, task, reward, cfg, flops, samples)
    metrics: dict[str, float] = {}
    for prefix, split in task.eval_sets.items():
        rows = task.splits[split].to_list()
        with flops.measured() if flops else contextlib.nullcontext({}) as tally:
            responses = respond(rows) if respond is not None else None
            if responses is None:
                responses = generate_greedy(
                    model, tokenizer, rows, cfg.max_new_tokens, cfg.batch_size
                )
        if len(responses) != len(rows):
            raise PluginError(
                f"alignbench_respond gave {len(responses)} responses for {len(rows)} questions "
                "— it must answer every row, in order"
            )
        values = task.metrics(rows, responses)
        name = str(getattr(getattr(reward, "config", None), "name", type(reward).__name__))
        with flops.paused() if flops else contextlib.nullcontext():  # scoring is not answering
            scores = checked_rewards(reward(rows, responses), len(rows), name)
        gold = [task.gold_utility(row, r) for row, r in zip(rows, responses, strict=True)]
        _add_totals(values, scores, gold, tally if flops is not None else None, len(rows))
        metrics.update({f"{prefix}/{name}": float(v) for name, v in values.items()})
        if samples is not None:
            samples[prefix] = completion_records(task, rows, responses, scores.tolist(), gold)
    return metrics


def greedy_dialogues(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    rows: list[dict[str, Any]],
    max_new_tokens: int,
    batch_size: int,
) -> list[list[dict[str, str]]]:
    """Greedy conversations with the task's user, one per row, in batches; the user of row i
    draws from seed i, so every model meets the same user on the same row."""
    # The sampler imports transformers' modelling code (seconds): only when generating.
    from alignbench.sampling import SamplingParams, converse

    params = SamplingParams(max_new_tokens=max_new_tokens, greedy=True)
    dialogues: list[list[dict[str, str]]] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        seeds = list(range(start, start + len(chunk)))
        batch = converse(model, tokenizer, task, chunk, 1, params, user_seeds=seeds)
        dialogues += batch.turns.dialogues
    return dialogues


def evaluate_dialogues(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    reward: Reward,
    cfg: EvalConfig,
    flops: FlopCounter | None = None,
    samples: dict[str, list[dict[str, Any]]] | None = None,
) -> dict[str, float]:
    """:func:`evaluate` for a multi-turn task: greedy dialogues scored by
    ``task.dialogue_metrics``, ``<prefix>/reward`` (the dialogue's return under the reward) and
    ``<prefix>/gold_reward`` (the task's dialogue utility)."""
    metrics: dict[str, float] = {}
    for prefix, split in task.eval_sets.items():
        rows = task.splits[split].to_list()
        with flops.measured() if flops else contextlib.nullcontext({}) as tally:
            dialogues = greedy_dialogues(
                model, tokenizer, task, rows, cfg.max_new_tokens, cfg.batch_size
            )
        values = task.dialogue_metrics(rows, dialogues)
        with flops.paused() if flops else contextlib.nullcontext():
            _, returns = turn_rewards(reward, rows, dialogues)
        gold = [task.dialogue_utility(row, d) for row, d in zip(rows, dialogues, strict=True)]
        _add_totals(values, returns, gold, tally if flops is not None else None, len(rows))
        metrics.update({f"{prefix}/{name}": float(v) for name, v in values.items()})
        if samples is not None:
            records = []
            for row, dialogue, value, utility in zip(
                rows, dialogues, returns.tolist(), gold, strict=True
            ):
                records.append(
                    {
                        "prompt": row.get("prompt"),
                        "response": transcript(dialogue[1:]),
                        "reward": float(value),
                        "gold_reward": utility,
                        "verdict": None,
                        "verdicts": task.turn_verdicts(row, dialogue),
                        "dialogue": dialogue,
                        **{key: row[key] for key in SAMPLE_FIELDS if key in row},
                    }
                )
            samples[prefix] = records
    return metrics


#: Row fields copied into a completion record when the task's rows have them.
SAMPLE_FIELDS = ("kind", "known", "answer")


def completion_records(
    task: Task,
    rows: list[dict[str, Any]],
    responses: list[str],
    rewards: list[float],
    gold: list[float | None],
) -> list[dict[str, Any]]:
    """One record per row: prompt, response, reward, gold reward, the task's verdict (``correct``
    / ``abstain`` / ``wrong``, None if the task has no judge) and the row's entity kind."""
    records = []
    for row, response, reward, utility in zip(rows, responses, rewards, gold, strict=True):
        try:
            verdict: str | None = task.judge(row, response)
        except NotImplementedError:
            verdict = None
        records.append(
            {
                "prompt": row.get("prompt"),
                "response": response,
                "reward": float(reward),
                "gold_reward": utility,
                "verdict": verdict,
                **{key: row[key] for key in SAMPLE_FIELDS if key in row},
            }
        )
    return records
