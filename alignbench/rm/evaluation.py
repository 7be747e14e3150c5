"""How well a scorer ranks: pairwise accuracy against labels and gold utility, the probe on
held-out questions beside reference scorers, and the trained policy read as a reward model."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from alignbench import ops
from alignbench.models import ScalarHeadModel, response_logprobs
from alignbench.rm.feedback import Group, pairwise_agreement
from alignbench.rm.groups import group_batch
from alignbench.rm.training import score_groups
from alignbench.task import Task

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from alignbench.run import Run


def ranking_accuracy(scores: list[list[float]], groups: list[Group]) -> dict[str, float]:
    """Pairwise accuracy of ``scores`` against the labels and against the gold utility."""
    labelled = [(s, g) for s, g in zip(scores, groups, strict=True) if g.preference is not None]
    golden = [(s, g) for s, g in zip(scores, groups, strict=True) if g.gold is not None]
    out = {}
    if labelled:
        out["accuracy_labels"] = pairwise_agreement(
            [s for s, _ in labelled], [g.preference for _, g in labelled]
        )
    if golden:
        out["accuracy_gold"] = pairwise_agreement(
            [s for s, _ in golden], [g.gold for _, g in golden]
        )
    return {k: v for k, v in out.items() if not math.isnan(v)}


@torch.no_grad()
def policy_ranking_accuracy(run: Run, groups: list[Group]) -> dict[str, float]:
    """Ranking accuracy of the run's policy used as a reward model (RRHF's view) on ``groups``:
    its score of a response is the length-normalised log-probability. Not charged to the budget;
    keys ``accuracy_labels`` / ``accuracy_gold`` as :func:`ranking_accuracy`'s."""
    scores = []
    with run.flops.paused():
        for start in range(0, len(groups), 64):
            chunk = groups[start : start + 64]
            batch, _ = group_batch(run.tokenizer, chunk)
            batch = batch.to(run.device)
            logprobs = response_logprobs(
                run.policy, batch.input_ids, batch.attention_mask, batch.prompt_length
            )
            per = batch.grouped(ops.sequence_scores(logprobs, batch.response_mask))
            scores += [row[: len(g.responses)].tolist() for row, g in zip(per, chunk, strict=True)]
    return ranking_accuracy(scores, groups)


def probe_groups(task: Task, exclude: set[str] | None = None) -> list[Group]:
    """The probe: the task's probe responses to each question of its ``probe_split``.

    Only held-out questions (``exclude`` drops any prompt the reward model was trained on, in
    case a source brought its own), and only the pairs :meth:`Task.probe_pairs` calls
    orderable, kept in ``extras["pairs"]``; questions without such a pair are left out.
    """
    if task.probe_split not in task.splits:
        return []
    groups = []
    for row in task.splits[task.probe_split].to_list():
        if exclude and row["prompt"] in exclude:
            continue
        responses = task.probe_responses(row)
        pairs = task.probe_pairs(row, responses) if len(responses) >= 2 else []
        if pairs:
            groups.append(Group(row, responses, extras={"pairs": pairs}))
    return groups


def pair_accuracy(scores: list[list[float]], groups: list[Group]) -> float:
    """Share of the groups' ``extras["pairs"]`` (i better than j) that ``scores`` order i > j.

    A tie counts as half right (a coin flip). NaN when there is no pair.
    """
    right, total = 0.0, 0
    for s, g in zip(scores, groups, strict=True):
        for i, j in g.extras["pairs"]:
            total += 1
            right += 1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0
    return right / total if total else float("nan")


def reference_scores(task: Task, groups: list[Group]) -> dict[str, list[list[float]]]:
    """Scores of the probe's reference scorers, to read a reward model's probe accuracy against.

    ``always_abstain`` puts the abstention phrase above everything else (all else tied);
    ``random`` scores everything equal, so every pair is a tie worth 1/2 — exactly what random
    scores achieve in expectation; ``gold`` is the gold utility itself, the ceiling (1.0).
    """
    out: dict[str, list[list[float]]] = {}
    if task.abstention:
        out["always_abstain"] = [
            [1.0 if " ".join(r.split()) == task.abstention else 0.0 for r in g.responses]
            for g in groups
        ]
    out["random"] = [[0.0] * len(g.responses) for g in groups]
    out["gold"] = [[float(task.gold_utility(g.row, r)) for r in g.responses] for g in groups]
    return out


def probe_metrics(scores: list[list[float]], groups: list[Group]) -> dict[str, float]:
    """Probe accuracy overall and, where rows say ``known``, on known and unknown questions."""
    out = {"accuracy": pair_accuracy(scores, groups)}
    for known, part in ((True, "known"), (False, "unknown")):
        picked = [
            (s, g) for s, g in zip(scores, groups, strict=True) if g.row.get("known") is known
        ]
        if picked:
            out[f"accuracy_{part}"] = pair_accuracy([s for s, _ in picked], [g for _, g in picked])
    return out


def probe_report(
    model: ScalarHeadModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    exclude: set[str] | None = None,
    precision: str | None = None,
) -> dict[str, float]:
    """The reward model's probe accuracy, with the reference scorers' on the very same pairs.

    Keys: ``probe/accuracy`` (and ``_known`` / ``_unknown``), ``probe/<scorer>`` (and parts)
    for each reference scorer, ``probe/prompts`` and ``probe/pairs``. Empty if the task has no
    probe. The model scores under autocast to ``precision`` (None: the autocast around the call).
    """
    groups = probe_groups(task, exclude)
    if not groups:
        return {}
    out = {
        "probe/prompts": float(len(groups)),
        "probe/pairs": float(sum(len(g.extras["pairs"]) for g in groups)),
    }
    scored = {
        "": score_groups(model, tokenizer, groups, precision),
        **reference_scores(task, groups),
    }
    for scorer, scores in scored.items():
        for key, value in probe_metrics(scores, groups).items():
            name = key if not scorer else key.replace("accuracy", scorer)
            out[f"probe/{name}"] = value
    return out
