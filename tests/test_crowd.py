"""Crowd feedback: unequal simulated annotators, agreement statistics, Dawid-Skene aggregation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from alignbench import ConfigError, Group
from alignbench.crowd import (
    Judgement,
    crowd_statistics,
    kendalls_w,
    majority,
    mean_rank,
    pairwise_agreement_between,
    reliability_vote,
)
from alignbench.feedback import pairwise_agreement
from alignbench_plugins.facts import ABSTENTION, FactsConfig, FactsTask
from alignbench_plugins.feedback import SimulatedAnnotators, SimulatedConfig

pytest.importorskip("crowdkit", reason="crowd-kit is not installed (pip install -e '.[crowd]')")


def _wins(left_better: bool) -> np.ndarray:
    """A group of two responses: ``wins`` when the first (or the second) is preferred."""
    return np.array([[0.0, 1.0], [0.0, 0.0]]) if left_better else np.array([[0, 0], [1.0, 0]])


def _hand_crowd() -> list[Judgement]:
    """16 groups of 2 whose first response is better: two careful annotators always say so; three
    careless ones answer every one of the 8 patterns twice, so on 2 groups all three say the
    opposite and outvote the careful two."""
    judgements = []
    patterns = list(itertools.product([True, False], repeat=3)) * 2
    for group, pattern in enumerate(patterns):
        judgements += [Judgement(group, name, _wins(True)) for name in ("careful1", "careful2")]
        judgements += [
            Judgement(group, f"careless{n}", _wins(says)) for n, says in enumerate(pattern)
        ]
    return judgements


def test_dawid_skene_outvotes_careless_majority_on_hand_example() -> None:
    """Majority is wrong where the three careless annotators agree; Dawid-Skene, having learnt
    from their agreement elsewhere that they are at chance, follows the careful two everywhere."""
    judgements = _hand_crowd()
    by_group = [[j for j in judgements if j.group == g] for g in range(16)]
    voted = [majority(panel, np.random.default_rng(0)) for panel in by_group]
    assert sum(v[0] > v[1] for v in voted) == 14  # the two all-careless-wrong groups are lost
    preferences, reliability = reliability_vote(
        judgements, [2] * 16, "dawid_skene", np.random.default_rng(0)
    )
    assert all(p[0] > p[1] for p in preferences)
    assert min(reliability["careful1"], reliability["careful2"]) > 0.9
    assert max(reliability[f"careless{n}"] for n in range(3)) < 0.7


def test_mean_rank_and_majority_on_hand_example() -> None:
    """Three annotators of one group of 3: mean rank averages wins, majority decides each pair."""
    a = np.array([[0, 1, 1], [0, 0, 1], [0, 0, 0]], dtype=float)  # 0 > 1 > 2
    b = np.array([[0, 0, 1], [1, 0, 1], [0, 0, 0]], dtype=float)  # 1 > 0 > 2
    judgements = [Judgement(0, "x", a), Judgement(0, "y", a), Judgement(0, "z", b)]
    assert mean_rank(judgements) == pytest.approx([5 / 3, 4 / 3, 0.0])
    assert majority(judgements, np.random.default_rng(0)) == [2.0, 1.0, 0.0]


def test_majority_keeps_a_unanimous_tie() -> None:
    """Every annotator calls 0 and 1 equally good: the vote keeps the tie, whatever the coin."""
    tied = np.array([[0, 0.5, 1], [0.5, 0, 1], [0, 0, 0]])
    for seed in range(20):
        assert majority([Judgement(0, "x", tied)] * 3, np.random.default_rng(seed)) == [
            1.5,
            1.5,
            0.0,
        ]


def test_kendalls_w_hand_values() -> None:
    """Identical rankings: W = 1; two opposite rankings of 3: W = 0; ties are corrected for."""
    assert kendalls_w(np.array([[3, 2, 1], [3, 2, 1], [3, 2, 1]])) == pytest.approx(1.0)
    assert kendalls_w(np.array([[3, 2, 1], [1, 2, 3]])) == pytest.approx(0.0)
    # Same ranking with one tie for both annotators: still perfect concordance.
    assert kendalls_w(np.array([[2, 1, 1], [2, 1, 1]])) == pytest.approx(1.0)
    assert np.isnan(kendalls_w(np.array([[1, 1], [1, 1]])))  # nothing to agree on
    assert np.isnan(kendalls_w(np.array([[3, 2, 1]])))  # one annotator


def test_pairwise_agreement_and_statistics_hand_example() -> None:
    """Two annotators of one group of 3 who agree on 2 of its 3 pairs; labels per annotator."""
    a = np.array([[0, 1, 1], [0, 0, 1], [0, 0, 0]], dtype=float)
    b = np.array([[0, 0, 1], [1, 0, 1], [0, 0, 0]], dtype=float)
    judgements = [Judgement(0, "x", a), Judgement(0, "y", b), Judgement(1, "x", a)]
    assert pairwise_agreement_between(judgements) == (pytest.approx(2 / 3), 3)
    stats = crowd_statistics(judgements, {"x": 0.9})
    assert stats["crowd/labels/x"] == 2.0 and stats["crowd/labels/y"] == 1.0
    assert stats["crowd/groups_multi"] == 1.0
    # Ranks [3, 2, 1] and [2, 3, 1]: rank sums 5, 5, 2;
    # W = (12 * 54 - 3 * 4 * 3 * 16) / (4 * 3 * 8).
    assert stats["crowd/kendall_w"] == pytest.approx(0.75)
    assert stats["crowd/reliability/x"] == 0.9


@pytest.fixture(scope="module")
def task() -> FactsTask:
    """A small facts world."""
    return FactsTask(FactsConfig(name="facts", num_entities=40))


def _groups(task: FactsTask, n: int = 200) -> list[Group]:
    rows = task.splits["rl"].to_list()
    rng = np.random.default_rng(0)
    groups = []
    for i in range(n):
        row = rows[i % len(rows)]
        responses = [row["answer"], ABSTENTION, "red" if row["answer"] != "red" else "blue"]
        order = rng.permutation(3)  # no position carries the answer
        responses = [responses[o] for o in order]
        groups.append(Group(row, responses, [task.gold_utility(row, r) for r in responses]))
    return groups


def _accuracy(source: SimulatedAnnotators, groups: list[Group]) -> float:
    prefs = source.rank(groups, np.random.default_rng(1))
    return pairwise_agreement(prefs, [g.gold for g in groups])


CROWD = {"annotator_noise": [0.05, 0.1, 0.4, 0.45, 0.45], "annotators_per_group": 3}


def test_reliability_aware_aggregation_beats_votes_on_an_unequal_crowd(task) -> None:
    """Two careful annotators among three careless ones: Dawid-Skene's labels agree with the gold
    utility more often than the mean rank's or the majority's, and it ranks the annotators."""
    groups = _groups(task)
    scores = {}
    for aggregate in ("mean_rank", "majority", "dawid_skene"):
        source = SimulatedAnnotators(
            SimulatedConfig(name="simulated", aggregate=aggregate, **CROWD), task
        )
        scores[aggregate] = _accuracy(source, groups)
    assert scores["dawid_skene"] > max(scores["mean_rank"], scores["majority"]) + 0.03
    stats = source.statistics()
    reliability = [stats[f"crowd/reliability/a{i}"] for i in range(5)]
    assert min(reliability[:2]) > max(reliability[2:])
    assert sum(stats[f"crowd/labels/a{i}"] for i in range(5)) == 3 * len(groups)
    assert 0 < stats["crowd/pairwise_agreement"] < 1 and "crowd/kendall_w" in stats


def test_length_biased_annotator(task) -> None:
    """An annotator with a strong length bias prefers the three-word abstention to a right
    one-word answer; the others do not."""
    row = next(r for r in task.splits["rl"].to_list() if r["known"])
    group = Group(
        row,
        [row["answer"], ABSTENTION],
        [task.gold_utility(row, r) for r in (row["answer"], ABSTENTION)],
    )
    config = SimulatedConfig(name="simulated", annotator_length_bias=[0.0, 5.0])
    source = SimulatedAnnotators(config, task)
    by_annotator = {}
    source.rank([group], np.random.default_rng(0))
    for judgement in source.judgements:
        by_annotator[judgement.annotator] = judgement.wins[0, 1]
    assert by_annotator == {"a0": 1.0, "a1": 0.0}


def test_one_annotator_reports_no_crowd_statistics(task) -> None:
    """The default single annotator adds no crowd/ keys (nothing to agree with)."""
    source = SimulatedAnnotators(SimulatedConfig(name="simulated"), task)
    source.rank(_groups(task, 5), np.random.default_rng(0))
    assert source.statistics() == {}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"annotator_noise": [0.1, 0.2], "annotator_length_bias": [0.0]}, "disagree on the number"),
        ({"annotator_noise": [0.1, 1.5]}, r"each error rate must be in \[0, 1\]"),
        ({"annotator_noise": [0.1, 0.2], "annotators_per_group": 3}, r"must be in \[0, 2\]"),
        ({"annotator_noise": [0.1, 0.2], "annotators": 3}, "disagree on the number"),
    ],
)
def test_bad_crowd_configs_are_one_line(task, kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        SimulatedAnnotators(SimulatedConfig(name="simulated", **kwargs), task)


def test_bad_crowd_config_refused_at_the_command_line() -> None:
    """Before Hydra creates any folder: validate() calls the config's own checks."""
    from alignbench.app import validate
    from alignbench.registry import build_registry

    with pytest.raises(ConfigError, match="each error rate must be in"):
        validate(build_registry(), ["reward=rm", "feedback.annotator_noise=[0.1,2.0]"])
    validate(build_registry(), ["reward=rm", "feedback.annotator_noise=[0.1,0.4]"])
