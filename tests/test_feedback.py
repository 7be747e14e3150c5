"""Stage 2: simulated feedback and its imperfections, the file source, the reward model stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from alignbench import DataError, Group
from alignbench.feedback import pairwise_agreement, ranking_to_preference
from alignbench_plugins.facts import ABSTENTION, FactsConfig, FactsTask
from alignbench_plugins.feedback import (
    FileConfig,
    FileFeedback,
    SimulatedAnnotators,
    SimulatedConfig,
)


@pytest.fixture(scope="module")
def task() -> FactsTask:
    """A small facts world."""
    return FactsTask(FactsConfig(name="facts", num_entities=40))


def _groups(task: FactsTask, n: int = 300, k: int = 4, seed: int = 0) -> list[Group]:
    """Groups of K responses with distinct gold utilities wherever possible."""
    rng = np.random.default_rng(seed)
    rows = task.splits["rl"].to_list()
    groups = []
    for i in range(n):
        row = rows[i % len(rows)]
        wrong = [v for v in ("red", "blue", "paris", "seven", "owl") if v != row["answer"]]
        responses = [row["answer"], ABSTENTION, str(rng.choice(wrong)), "wolf wolf wolf"][:k]
        gold = [task.gold_utility(row, r) for r in responses]
        groups.append(Group(row, responses, gold))
    return groups


def _agreement(source, groups, seed=0) -> float:
    prefs = source.rank(groups, np.random.default_rng(seed))
    kept = [(p, g.gold) for p, g in zip(prefs, groups, strict=True) if p is not None]
    return pairwise_agreement([p for p, _ in kept], [g for _, g in kept])


def _simulated(task, **kwargs) -> SimulatedAnnotators:
    return SimulatedAnnotators(SimulatedConfig(name="simulated", **kwargs), task)


def test_perfect_annotators_agree_with_gold(task) -> None:
    """No noise: every strictly ordered gold pair is labelled the same way."""
    assert _agreement(_simulated(task), _groups(task)) == 1.0


def test_error_rate_half_gives_labels_at_chance(task) -> None:
    """error_rate=0.5 flips each comparison with probability 1/2: labels at chance."""
    assert _agreement(_simulated(task, error_rate=0.5), _groups(task)) == pytest.approx(
        0.5, abs=0.04
    )
    between = _agreement(_simulated(task, error_rate=0.2), _groups(task))
    assert 0.6 < between < 0.98


def test_bradley_terry_temperature_adds_graded_noise(task) -> None:
    """A higher BT temperature makes more mistakes; a tiny one almost none."""
    cold = _agreement(_simulated(task, bt_temperature=0.05), _groups(task))
    warm = _agreement(_simulated(task, bt_temperature=1.0), _groups(task))
    hot = _agreement(_simulated(task, bt_temperature=10.0), _groups(task))
    assert cold > 0.99 and cold > warm > hot > 0.5


def test_biased_annotators_and_aggregation(task) -> None:
    """Annotators who love long answers rank the 3-word wrong answer up; a panel can vote."""
    groups = _groups(task)
    biased = _simulated(task, annotators=1, annotator_bias=5.0, seed=3)
    assert abs(biased.biases[0]) > 0.5  # this seed draws a strong bias
    assert _agreement(biased, groups) < 0.95
    for aggregate in ("mean_rank", "majority"):
        panel = _simulated(task, annotators=5, annotator_bias=0.3, aggregate=aggregate)
        assert len(panel.biases) == 5
        assert 0.7 < _agreement(panel, groups) <= 1.0
    with pytest.raises(Exception, match="mean_rank or majority"):
        _simulated(task, aggregate="dictator")


def test_ties_are_declared_not_coin_flipped(task) -> None:
    """Equally good responses get equal preference (no pair to learn) unless ties are off."""
    row = task.splits["rl"][0]
    group = Group(row, [row["answer"], row["answer"], ABSTENTION], None)
    group.gold = [task.gold_utility(row, r) for r in group.responses]
    [tied] = _simulated(task).rank([group], np.random.default_rng(0))
    assert tied[0] == tied[1] > tied[2]
    flips = {
        tuple(p[:2])
        for p in _simulated(task, allow_ties=False).rank([group] * 20, np.random.default_rng(0))
    }
    assert len(flips) == 2  # without ties a coin orders the identical pair, both ways


def test_sparse_feedback_leaves_groups_unlabelled(task) -> None:
    """unlabelled_share=0.3 returns about 30% of groups without a label."""
    prefs = _simulated(task, unlabelled_share=0.3).rank(_groups(task), np.random.default_rng(0))
    assert sum(p is None for p in prefs) / len(prefs) == pytest.approx(0.3, abs=0.07)


def test_ranking_to_preference() -> None:
    """Indices best-first become a score per response, higher = better."""
    assert ranking_to_preference([2, 0, 1]) == [1.0, 0.0, 2.0]


def _file(tmp_path: Path, lines: list[str]) -> FileFeedback:
    path = tmp_path / "rankings.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return FileFeedback(
        FileConfig(name="file", path=str(path)),
        FactsTask(FactsConfig(name="facts", num_entities=40)),
    )


def test_file_source_reads_rankings_and_knows_gold(tmp_path: Path, task) -> None:
    """A valid file gives labelled groups; prompts of the task get their gold utility."""
    row = task.splits["rl"][0]
    good = {"prompt": row["prompt"], "responses": [ABSTENTION, row["answer"]], "ranking": [1, 0]}
    other = {"prompt": "something else ?", "responses": ["a", "b", "c"], "ranking": [0, 2, 1]}
    groups = _file(tmp_path, [json.dumps(good), "", json.dumps(other)]).load_groups()
    assert [g.preference for g in groups] == [[0.0, 1.0], [2.0, 0.0, 1.0]]
    assert groups[0].gold == [0.0, 1.0] and groups[1].gold is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "rankings.jsonl:2: not valid JSON"),
        ('["a list"]', "rankings.jsonl:2: expected a JSON object"),
        ('{"prompt": "", "responses": ["a", "b"], "ranking": [0, 1]}', ":2: 'prompt' must be"),
        ('{"prompt": "q", "responses": ["a"], "ranking": [0]}', ":2: 'responses' must be a list"),
        ('{"prompt": "q", "responses": ["a", "b"], "ranking": [0, 0]}', ":2: 'ranking' must list"),
    ],
)
def test_file_source_errors_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    """A malformed line is one error naming the file and the line; nothing is half-loaded."""
    ok = '{"prompt": "q", "responses": ["a", "b"], "ranking": [1, 0]}'
    with pytest.raises(DataError, match=message.replace("[", r"\[")) as info:
        _file(tmp_path, [ok, line, ok]).load_groups()
    assert "\n" not in str(info.value)


def test_file_source_missing_or_empty(tmp_path: Path) -> None:
    """A missing path or an empty file is a one-line error."""
    task = FactsTask(FactsConfig(name="facts", num_entities=40))
    with pytest.raises(DataError, match="no such file"):
        FileFeedback(FileConfig(name="file", path=str(tmp_path / "nope.jsonl")), task).load_groups()
    with pytest.raises(DataError, match="empty"):
        _file(tmp_path, [""]).load_groups()


RM = ["reward=rm", "feedback.labels=40", "stage.rm.epochs=3", "feedback.k=3", "stage.sft.epochs=15"]


def test_rm_stage_runs_is_cached_and_logs_proxy_and_gold(tiny_job) -> None:
    """reward=rm trains a reward model once, reuses it, and logs proxy and gold rewards."""
    first = tiny_job(*RM, "algo=rrhf", out="a")
    second = tiny_job(*RM, "algo=ppo", "algo.samples_per_prompt=2", out="b")
    noisy = tiny_job(*RM, "algo=rrhf", "feedback.error_rate=0.4", out="c")
    assert first["stage/rm"]["cache_hit"] is False
    assert second["stage/rm"]["cache_hit"] is True
    assert second["stage/rm"]["key"] == first["stage/rm"]["key"]
    assert noisy["stage/rm"]["key"] != first["stage/rm"]["key"]
    for summary in (first, second):
        assert {"eval/reward", "eval/gold_reward"} <= set(summary)
        assert summary["flops_by_model"]["reward_model"] > 0
        # Reported on the reward model's held-out groups whenever they have ordered gold pairs.
        has_pairs = summary["stage/rm"]["heldout_accuracy_gold"] is not None
        assert ("rm/policy_as_rm_accuracy_gold" in summary) == has_pairs
    assert first["stage/rm"]["labels_accuracy_gold"] == 1.0
    # Probes (right, abstain, wrong for every held-out question) order every pair: always measured.
    assert 0.0 <= first["stage/rm"]["probe_accuracy_gold"] <= 1.0


@pytest.mark.parametrize("selection", ["uncertainty", "diversity"])
def test_active_selection_strategies_run(tiny_job, selection: str) -> None:
    """Uncertainty and diversity selection label exactly the budget from a larger pool."""
    summary = tiny_job(*RM, f"feedback.selection={selection}", "feedback.pool_factor=2")
    assert summary["stage/rm"]["groups"] == 40


def test_beam_decoding_and_online_rounds(tiny_job, tmp_path: Path) -> None:
    """Beam-search groups work, and feedback.rounds refreshes the reward model during RL."""
    summary = tiny_job(*RM, "feedback.decoding=beam", "feedback.rounds=1", "budget.amount=3")
    lines = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    refreshed = [x for x in lines if "feedback/groups" in x]
    assert len(refreshed) == 1
    assert refreshed[0]["feedback/groups"] > summary["stage/rm"]["train_groups"]


def test_ppo_critic_can_start_from_the_reward_model(tiny_job) -> None:
    """algo.critic_init=reward_model copies the stage-2 reward model into a trainable critic."""
    summary = tiny_job(
        *RM, "algo=ppo", "algo.samples_per_prompt=2", "algo.critic_init=reward_model"
    )
    assert summary["status"] == "finished"
    assert summary["flops_by_model"]["critic"] > 0


def test_critic_from_reward_model_needs_one(tiny_job) -> None:
    """Without reward=rm there is no reward model to start the critic from: one clear error."""
    from alignbench import ConfigError

    with pytest.raises(ConfigError, match="needs a learned reward model"):
        tiny_job("algo=ppo", "algo.critic_init=reward_model")
