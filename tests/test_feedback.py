"""Stage 2: simulated feedback and its imperfections, the file source, the reward model stage."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from alignbench import DataError, Group
from alignbench.config import RMStageConfig, SamplingConfig
from alignbench.feedback import pairwise_agreement, ranking_to_preference
from alignbench.reward_model import (
    contrast_responses,
    label_loss,
    probe_groups,
    probe_metrics,
    reference_scores,
    score_groups,
    train_reward_model,
)
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
        ('{"prompt": "q", "responses": ["a", "b"], "ranking": [1.0, 0.0]}', ":2: 'ranking' must"),
        ('{"prompt": "q", "responses": ["a", "b"], "ranking": [[1], 0]}', ":2: 'ranking' must"),
        ('{"prompt": "q", "responses": ["a", "b"], "ranking": [true, 0]}', ":2: 'ranking' must"),
    ],
)
def test_file_source_errors_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    """A malformed line is one error naming the file and the line; nothing is half-loaded."""
    ok = '{"prompt": "q", "responses": ["a", "b"], "ranking": [1, 0]}'
    with pytest.raises(DataError, match=message.replace("[", r"\[")) as info:
        _file(tmp_path, [ok, line, ok]).load_groups()
    assert "\n" not in str(info.value)


def test_file_source_refuses_a_line_that_is_not_utf8(tmp_path: Path) -> None:
    """A line in another encoding is one error naming the file and the line."""
    source = _file(tmp_path, ['{"prompt": "q", "responses": ["a", "b"], "ranking": [1, 0]}'])
    source.path.write_bytes(source.path.read_bytes() + b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"rankings.jsonl:2: not UTF-8 text"):
        source.load_groups()


def test_rankings_with_words_the_tokenizer_lacks_are_refused(tmp_path: Path, task) -> None:
    """ "Dakar" is not "dakar" to the word tokenizer: refused with file:line and the words."""
    from alignbench.models import build_tokenizer
    from alignbench.reward_model import check_vocabulary

    row = task.splits["rl"][0]
    line = {"prompt": row["prompt"], "responses": ["Dakar", "I do not know"], "ranking": [1, 0]}
    ok = {"prompt": row["prompt"], "responses": [ABSTENTION, row["answer"]], "ranking": [1, 0]}
    source = _file(tmp_path, [json.dumps(ok), json.dumps(line)])
    tokenizer = build_tokenizer(source.task.vocabulary())
    with pytest.raises(DataError, match=r"rankings.jsonl:2: .*'Dakar', 'I'") as info:
        check_vocabulary(tokenizer, source.load_groups())
    assert "\n" not in str(info.value)
    check_vocabulary(tokenizer, source.load_groups()[:1])  # the lower-case line is fine


def test_file_source_missing_or_empty(tmp_path: Path) -> None:
    """A missing path or an empty file is a one-line error."""
    task = FactsTask(FactsConfig(name="facts", num_entities=40))
    with pytest.raises(DataError, match="no such file"):
        FileFeedback(FileConfig(name="file", path=str(tmp_path / "nope.jsonl")), task).load_groups()
    with pytest.raises(DataError, match="empty"):
        _file(tmp_path, [""]).load_groups()


RM = ["reward=rm", "feedback.labels=40", "stage.rm.epochs=3", "feedback.k=3", "stage.sft.epochs=15"]


def test_rm_stage_runs_is_cached_and_logs_proxy_and_gold(tiny_job, tmp_path: Path) -> None:
    """reward=rm trains a reward model once, reuses it, and logs proxy and gold rewards."""
    # Its own stage cache: the session's is shared with other tests (and xdist workers) that may
    # have built the same reward model already, which would make the first job a cache hit.
    own = f"cache_dir={tmp_path / 'cache'}"
    first = tiny_job(*RM, "algo=rrhf", own, out="a")
    second = tiny_job(*RM, "algo=ppo", "algo.samples_per_prompt=2", own, out="b")
    noisy = tiny_job(*RM, "algo=rrhf", "feedback.error_rate=0.4", own, out="c")
    assert first["stage/rm"]["cache_hit"] is False
    assert second["stage/rm"]["cache_hit"] is True
    assert second["stage/rm"]["key"] == first["stage/rm"]["key"]
    assert noisy["stage/rm"]["key"] != first["stage/rm"]["key"]
    for summary in (first, second):
        assert {"test/reward", "test/gold_reward"} <= set(summary)
        assert summary["flops_by_model"]["reward_model"] > 0
        # Reported on the reward model's held-out groups whenever they have ordered gold pairs.
        has_pairs = summary["stage/rm"]["heldout_accuracy_gold"] is not None
        assert ("rm/policy_as_rm_accuracy_gold" in summary) == has_pairs
    assert first["stage/rm"]["labels_accuracy_gold"] == 1.0
    # The probe (held-out test questions) is always measured, beside its reference scorers.
    rm = first["stage/rm"]
    assert 0.0 <= rm["probe/accuracy"] <= 1.0
    assert rm["probe/gold"] == 1.0 and rm["probe/random"] == 0.5
    assert rm["groups_with_demonstration"] > 0 and "best_epoch" in rm


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


def test_online_rounds_with_uncertainty_selection(tiny_job, tmp_path: Path) -> None:
    """An online round's uncertainty selection trains a probe copied from the job's (frozen)
    reward model: it crashed with "element 0 of tensors does not require grad"."""
    tiny_job(
        *RM,
        "feedback.selection=uncertainty",
        "feedback.pool_factor=2",
        "feedback.rounds=1",
        "budget.amount=3",
    )
    lines = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert len([x for x in lines if "feedback/groups" in x]) == 1


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


# -- contrast, early stopping and the probe ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(task: FactsTask):
    """A random-init tiny Llama with the facts tokenizer (what the tests below sample from)."""
    from alignbench.config import ModelConfig
    from alignbench.models import build_model, build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer(task.vocabulary())
    config = ModelConfig(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2)
    return build_model(config, tokenizer), tokenizer


def _feedback(**kwargs) -> SimulatedConfig:
    return SimulatedConfig(
        name="simulated", k=4, sampling=SamplingConfig(max_new_tokens=3), **kwargs
    )


def test_demonstration_takes_one_place_in_the_group(task, tiny_model) -> None:
    """The row's demonstration replaces one sample (K kept), declared in the group's sources."""
    from alignbench.reward_model import generate_groups

    model, tokenizer = tiny_model
    rows = task.splits["rl"].to_list()[:12]
    assert {bool(r["response"]) for r in rows} == {True, False}  # known rows have a demonstration
    for include, abstention in ((True, False), (False, False), (True, True)):
        fb = _feedback(include_demonstration=include, include_abstention=abstention)
        generator = torch.Generator().manual_seed(0)
        groups = generate_groups(model, tokenizer, task, rows, fb, generator)
        for row, group in zip(rows, groups, strict=True):
            assert len(group.responses) == len(group.extras["sources"]) == 4
            expected = ["demonstration"] if include and row["response"] else []
            expected += ["abstention"] if abstention else []
            sources = group.extras["sources"]
            assert sources == ["policy"] * (4 - len(expected)) + expected
            if "demonstration" in sources:
                assert group.responses[sources.index("demonstration")] == row["response"]
                assert group.gold[sources.index("demonstration")] == 1.0  # a known fact
    # Never more extras than K - 1: one policy response always stays.
    fb = _feedback(include_demonstration=True, include_abstention=True)
    fb.k = 2
    known = next(r for r in rows if r["response"])
    assert list(contrast_responses(task, known, fb)) == ["demonstration"]


def test_early_stopping_keeps_the_best_epoch(task, tiny_model) -> None:
    """Held-out labels that contradict training: epoch 0 stays best, its weights come back."""
    from alignbench.models import ScalarHeadModel

    _, tokenizer = tiny_model
    rows = task.splits["rl"].to_list()[:8]
    train = [Group(r, [r["answer"], ABSTENTION], preference=[1.0, 0.0]) for r in rows]
    contrary = [Group(r, [r["answer"], ABSTENTION], preference=[0.0, 1.0]) for r in rows]
    cfg = RMStageConfig(epochs=12, lr=3e-3, batch_size=4, patience=2)

    def fresh() -> ScalarHeadModel:
        torch.manual_seed(0)
        return ScalarHeadModel(copy.deepcopy(tiny_model[0]))

    model = fresh()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    stats = train_reward_model(model, tokenizer, train, cfg, heldout=contrary)
    history = stats["heldout_loss_by_epoch"]
    assert stats["best_epoch"] == 0 and stats["epochs_run"] == 2 < cfg.epochs
    assert history[1] > history[0]
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())
    # Held-out labels that agree: training helps, and the model kept is the lowest-loss epoch.
    model = fresh()
    stats = train_reward_model(model, tokenizer, train, cfg, heldout=train)
    history = stats["heldout_loss_by_epoch"]
    assert stats["best_epoch"] > 0 and history[stats["best_epoch"]] == min(history)
    kept = label_loss(score_groups(model, tokenizer, train), train)
    assert kept == pytest.approx(min(history), rel=1e-4)
    # patience=0: no early stopping, every epoch runs and the last is kept.
    model = fresh()
    off = RMStageConfig(epochs=3, lr=3e-3, batch_size=4, patience=0)
    stats = train_reward_model(model, tokenizer, train, off, heldout=contrary)
    assert stats["best_epoch"] == stats["epochs_run"] == 3 and stats["heldout_loss_by_epoch"] == []


def test_probe_uses_test_questions_and_orderable_pairs_only(task) -> None:
    """Test-split prompts only; all three pairs on known facts, only abstain > wrong on unknown."""
    groups = probe_groups(task)
    test_prompts = set(task.splits["test"]["prompt"])
    elsewhere = {p for s in ("rl", "dev") for p in task.splits[s]["prompt"]}  # known: in SFT
    assert {g.row["prompt"] for g in groups} == test_prompts
    assert not test_prompts & elsewhere
    parts = {g.row["known"] for g in groups}
    assert parts == {True, False}
    for g in groups:
        right, abstain, wrong = 0, g.responses.index(ABSTENTION), 2
        if g.row["known"]:
            assert sorted(g.extras["pairs"]) == sorted(
                [(right, abstain), (right, wrong), (abstain, wrong)]
            )
        else:
            assert g.extras["pairs"] == [(abstain, wrong)]
    # A prompt the reward model was trained on is never probed.
    first = groups[0].row["prompt"]
    assert first not in {g.row["prompt"] for g in probe_groups(task, exclude={first})}


def test_reference_scorers_on_a_hand_built_probe(task) -> None:
    """Always-abstain: 0.5 on known, 1 on unknown; random 0.5; gold 1.0 (the ceiling)."""
    known = next(r for r in task.splits["test"].to_list() if r["known"])
    unknown = next(r for r in task.splits["test"].to_list() if not r["known"])
    groups = []
    for row in (known, unknown):
        responses = task.probe_responses(row)
        groups.append(Group(row, responses, extras={"pairs": task.probe_pairs(row, responses)}))
    refs = {name: probe_metrics(s, groups) for name, s in reference_scores(task, groups).items()}
    # Known: correct > abstain wrong (0), correct > wrong tied (1/2), abstain > wrong right (1).
    assert refs["always_abstain"] == {
        "accuracy": pytest.approx((0 + 0.5 + 1 + 1) / 4),
        "accuracy_known": pytest.approx(0.5),
        "accuracy_unknown": 1.0,
    }
    assert refs["random"] == {"accuracy": 0.5, "accuracy_known": 0.5, "accuracy_unknown": 0.5}
    assert refs["gold"] == {"accuracy": 1.0, "accuracy_known": 1.0, "accuracy_unknown": 1.0}
    # A scorer that orders the known pairs right and the unknown pair wrong: 3 of 4.
    custom = [[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]]
    custom[1] = [0.0] * 3
    custom[1][groups[1].responses.index(ABSTENTION)] = -1.0
    assert probe_metrics(custom, groups)["accuracy"] == pytest.approx(3 / 4)


@pytest.mark.parametrize(
    ("ranks", "message"),
    [
        (lambda groups: [[1.0, 0.0]], r"rank gave 1 for 2 groups"),
        (
            lambda groups: [[1.0, 0.0], [1.0]],
            r"group 1 has 2 responses but its preference is \[1.0\]",
        ),
        (
            lambda groups: [None, [1.0, float("nan")]],
            r"group 1's preference .* not a finite number",
        ),
        (lambda groups: "ranked", r"rank gave str for 2 groups"),
    ],
)
def test_a_feedback_source_with_a_wrong_ranking_is_one_line(ranks, message) -> None:
    """A source's rank() of the wrong length or shape names the source and the group, instead
    of a zip() error deep in stage 2."""
    from alignbench import FeedbackSource, PluginError
    from alignbench.rm.selection import checked_ranks

    class Sloppy(FeedbackSource):
        def rank(self, groups, rng):
            return ranks(groups)

    groups = [Group(row={"prompt": f"q{i}"}, responses=["a", "b"]) for i in range(2)]
    with pytest.raises(PluginError, match=message) as info:
        checked_ranks(Sloppy(None, None), groups, np.random.default_rng(0))
    assert "Sloppy" in str(info.value)
    good = Sloppy(None, None)
    good.rank = lambda groups, rng: [np.array([1.0, 0.0], dtype=np.float32), None]
    assert len(checked_ranks(good, groups, np.random.default_rng(0))) == 2
