"""Crowd feedback: several annotators per group, their agreement, and reliability-aware votes.

A *judgement* is one annotator's comparisons of one group of K responses, as a ``[K, K]``
matrix ``wins`` (``wins[i, j] = 1`` when response i was preferred to j, ``0.5`` for a declared
tie). Groups labelled by several annotators are aggregated into one preference vector by

* ``mean_rank``: the mean over annotators of comparisons won (Copeland scores);
* ``majority``: each pair decided by the vote of its annotators (an even split by a coin);
* ``dawid_skene``: each pair is a three-class task (``left`` better, ``right`` better, ``tie``)
  and a Dawid-Skene model (crowd-kit's ``DawidSkene``, EM over per-annotator confusion
  matrices) estimates each annotator's reliability from their agreement and decides the pair
  by its posterior, so a reliable minority can outvote careless annotators.

The agreement statistics (:func:`crowd_statistics`) are reported with every reward model
trained on crowd labels: pairwise agreement between annotators, Kendall's W of their rankings,
how many groups each annotator labelled and, for the reliability-aware methods, the reliability
each annotator was estimated to have.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from alignbench.errors import ConfigError

#: Aggregation methods; the last estimates each annotator's reliability (crowd-kit).
AGGREGATES = ("mean_rank", "majority", "dawid_skene")
RELIABILITY_AWARE = ("dawid_skene",)
#: EM iterations of the crowd-kit models (they stop earlier when converged).
EM_ITERATIONS = 100


@dataclass
class Judgement:
    """One annotator's comparisons of one group: ``wins[i, j]`` in {0, 0.5, 1}."""

    group: int
    annotator: str
    wins: np.ndarray


def copeland(wins: np.ndarray) -> list[float]:
    """Comparisons won by each response (a tie is half a win): its preference score."""
    return [float(x) for x in np.asarray(wins).sum(1)]


def mean_rank(judgements: Sequence[Judgement]) -> list[float]:
    """The mean over annotators of each response's comparisons won."""
    return [float(x) for x in np.mean([j.wins.sum(1) for j in judgements], axis=0)]


def majority(judgements: Sequence[Judgement], rng: np.random.Generator) -> list[float]:
    """Each pair decided by its annotators' vote, an even split by a coin; comparisons won.

    A pair every annotator called a tie stays a tie (half a win each): a coin there would
    invent an order no one gave.
    """
    votes = np.mean([j.wins for j in judgements], axis=0)
    declared = np.all([j.wins == 0.5 for j in judgements], axis=0)
    ties = (votes == 0.5) & ~declared & (rng.random(votes.shape) < 0.5)
    wins = (votes > 0.5) | (ties & ~ties.T)
    return [float(x) for x in wins.sum(1) + 0.5 * declared.sum(1)]


def _pair_label(wins: np.ndarray, i: int, j: int) -> str:
    """A comparison as a class of the pair task (i < j): ``left``, ``right`` or ``tie``."""
    if wins[i, j] == wins[j, i]:
        return "tie"
    return "left" if wins[i, j] > wins[j, i] else "right"


def _crowdkit() -> object:
    """crowd-kit's aggregation module, or one line saying how to install it."""
    try:
        import crowdkit.aggregation as aggregation
    except ImportError:
        raise ConfigError(
            "feedback.aggregate=dawid_skene needs crowd-kit — "
            'pip install -e ".[crowd]" (or use mean_rank / majority)'
        ) from None
    return aggregation


def reliability_vote(
    judgements: Sequence[Judgement],
    sizes: Sequence[int],
    method: str,
    rng: np.random.Generator,
) -> tuple[list[list[float]], dict[str, float]]:
    """Aggregate every group's pairs with a Dawid-Skene model fitted on all judgements at once.

    ``sizes[g]`` is the number of responses of group g (groups with no judgement get all-tied
    preferences). Returns one preference vector per group (comparisons won under the pairs'
    most probable class; a tie between classes goes to a seeded coin, never to a position) and
    each annotator's estimated reliability (the probability that their label of a pair is its
    aggregated class: ``sum_c prior_c * P(label = c | true = c)``).
    """
    import pandas as pd

    aggregation = _crowdkit()
    rows = []
    # Each pair is shown in a seeded random orientation (the same for all its annotators):
    # responses sit in a group in an order that says something about them (the demonstration
    # last), and a confusion matrix over `left`/`right` would otherwise learn the order, not the
    # annotator.
    flipped: dict[str, bool] = {}
    for judgement in judgements:
        for i, j in itertools.combinations(range(len(judgement.wins)), 2):
            task = f"{judgement.group}:{i}:{j}"
            if task not in flipped:
                flipped[task] = bool(rng.random() < 0.5)
            label = _pair_label(judgement.wins, *((j, i) if flipped[task] else (i, j)))
            rows.append((task, judgement.annotator, label))
    preferences = [[0.0] * k for k in sizes]
    if not rows:
        return preferences, {}
    data = pd.DataFrame(rows, columns=["task", "worker", "label"])
    if method == "dawid_skene":
        model = aggregation.DawidSkene(n_iter=EM_ITERATIONS).fit(data)
        reliability = {}
        for worker in data["worker"].unique():
            errors = model.errors_.loc[worker]
            reliability[worker] = float(
                sum(
                    prior * errors.at[label, label]
                    for label, prior in model.priors_.items()
                    if label in errors.index
                )
            )
    else:
        raise ConfigError(f"aggregate={method!r} — use one of {', '.join(RELIABILITY_AWARE)}")
    probas = model.probas_
    for task, row in probas.iterrows():
        group, i, j = (int(x) for x in str(task).split(":"))
        values = row.to_numpy(dtype=float)
        best = np.flatnonzero(values == values.max())
        label = str(probas.columns[best[rng.integers(len(best))] if len(best) > 1 else best[0]])
        if flipped[str(task)] and label != "tie":
            label = "left" if label == "right" else "right"
        if label == "left":
            preferences[group][i] += 1.0
        elif label == "right":
            preferences[group][j] += 1.0
        else:
            preferences[group][i] += 0.5
            preferences[group][j] += 0.5
    return preferences, reliability


def kendalls_w(scores: np.ndarray) -> float:
    """Kendall's coefficient of concordance of ``m`` annotators' scores of ``k`` items ``[m, k]``.

    Each row is turned into ranks (ties get their mean rank) and the tie-corrected
    ``W = (12 * sum(R_i^2) - 3 m^2 k (k+1)^2) / (m^2 k (k^2 - 1) - m * sum_j T_j)``, with
    ``R_i`` the rank sum of item i and ``T_j = sum(t^3 - t)`` over annotator j's tie groups
    (Kendall & Babington Smith 1939). 1 = identical rankings, 0 = no agreement; NaN when every
    annotator ties every item (nothing to agree on) or fewer than two annotators.
    """
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=float)
    m, k = scores.shape
    if m < 2 or k < 2:
        return float("nan")
    ranks = np.stack([rankdata(row) for row in scores])
    ties = sum(
        float(np.sum(counts**3 - counts))
        for counts in (np.unique(r, return_counts=True)[1] for r in ranks)
    )
    denominator = m**2 * k * (k**2 - 1) - m * ties
    if denominator <= 0:
        return float("nan")
    rank_sums = ranks.sum(0)
    return float((12 * np.sum(rank_sums**2) - 3 * m**2 * k * (k + 1) ** 2) / denominator)


def pairwise_agreement_between(judgements: Sequence[Judgement]) -> tuple[float, int]:
    """Share of (pair of responses, pair of annotators) on which two annotators gave the same
    label (i better, j better, or a tie), over groups labelled by several; and how many."""
    by_group: dict[int, list[Judgement]] = {}
    for judgement in judgements:
        by_group.setdefault(judgement.group, []).append(judgement)
    agree, total = 0, 0
    for panel in by_group.values():
        for a, b in itertools.combinations(panel, 2):
            for i, j in itertools.combinations(range(len(a.wins)), 2):
                total += 1
                agree += _pair_label(a.wins, i, j) == _pair_label(b.wins, i, j)
    return (agree / total if total else float("nan")), total


def crowd_statistics(
    judgements: Sequence[Judgement], reliability: dict[str, float] | None = None
) -> dict[str, float]:
    """Agreement and workload of a crowd, as flat ``crowd/...`` metrics.

    ``crowd/pairwise_agreement`` and ``crowd/agreement_pairs`` (see
    :func:`pairwise_agreement_between`), ``crowd/kendall_w`` (mean over groups with several
    annotators where it is defined), ``crowd/groups_multi`` (such groups),
    ``crowd/labels/<annotator>`` (groups each labelled) and ``crowd/reliability/<annotator>``
    (estimated by a reliability-aware aggregation, when one ran).
    """
    out: dict[str, float] = {}
    by_group: dict[int, list[Judgement]] = {}
    for judgement in judgements:
        by_group.setdefault(judgement.group, []).append(judgement)
        key = f"crowd/labels/{judgement.annotator}"
        out[key] = out.get(key, 0.0) + 1.0
    agreement, pairs = pairwise_agreement_between(judgements)
    concordance = [
        kendalls_w(np.stack([j.wins.sum(1) for j in panel]))
        for panel in by_group.values()
        if len(panel) > 1
    ]
    concordance = [w for w in concordance if not np.isnan(w)]
    out["crowd/annotators"] = float(len({j.annotator for j in judgements}))
    out["crowd/groups_multi"] = float(sum(len(p) > 1 for p in by_group.values()))
    out["crowd/agreement_pairs"] = float(pairs)
    if pairs:
        out["crowd/pairwise_agreement"] = agreement
    if concordance:
        out["crowd/kendall_w"] = float(np.mean(concordance))
    for annotator, value in sorted((reliability or {}).items()):
        out[f"crowd/reliability/{annotator}"] = value
    return dict(sorted(out.items()))
