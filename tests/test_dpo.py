"""Offline DPO as a whole algorithm: its data (all ordered pairs of stage 2's groups, or of a
rankings file), FLOPs per model against a hand count (the reference charged once per pair),
exact resume of its data order and reference cache, its options, and a margin that rises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tests.test_resume as resume_tests
from alignbench import ConfigError, Interrupted, hookimpl
from alignbench.app import run_job, validate
from alignbench.models import load_pretrained
from alignbench.registry import build_registry
from tests.conftest import TINY, compose
from tests.test_flops import Recorder, forward, sizes
from tests.test_pg_algos import StopAfter

#: A small stage 2: 12 ranked groups of 2 (at most one pair each), so passes over the pairs are
#: short and the reference cache is reused within a few steps.
SMALL_FEEDBACK = ["feedback.labels=12", "feedback.k=2", "stage.rm.epochs=1"]


_resume_numbers = resume_tests._numbers


def _numbers(summary: dict) -> dict:
    """test_resume's comparable numbers, without stage 2's record (a cache hit on resume)."""
    return {k: v for k, v in _resume_numbers(summary).items() if k != "stage/rm"}


class StatsRecorder:
    """Keeps every update's statistics."""

    def __init__(self) -> None:
        self.stats: list[dict] = []

    @hookimpl(wrapper=True)
    def alignbench_update(self):
        stats = yield
        self.stats.append(stats)
        return stats


def _run(tmp_path: Path, cache_dir: Path, *overrides: str, out: str = "out", plugins=()) -> dict:
    registry = build_registry()
    for name, plugin in plugins:
        registry.pm.register(plugin, name=name)
    try:
        cfg = compose([*TINY, f"cache_dir={cache_dir}", "algo=dpo", *overrides], registry)
        return run_job(cfg, tmp_path / out, registry=registry)
    finally:
        for name, _ in plugins:
            registry.pm.unregister(name=name)


def test_reference_is_charged_once_per_pair(tmp_path, cache_dir) -> None:
    """Policy: forward + backward over both sides of every pair of every step. Reference: one
    forward per pair, the first time the pair is drawn, however many passes the budget allows."""
    recorder, stats = Recorder(), StatsRecorder()
    summary = _run(
        tmp_path,
        cache_dir,
        *SMALL_FEEDBACK,
        "budget.amount=8",
        plugins=[("recorder", recorder), ("stats", stats)],
    )
    n_body, n_head = sizes(load_pretrained(cache_dir / "sft" / summary["stage/sft"]["key"])[0])
    pairs = int(stats.stats[0]["dpo/pairs"])
    assert 8 * 4 > 2 * pairs  # more than two passes over the pairs
    policy = reference = 0.0
    seen: set[int] = set()
    for batch in recorder.rollouts:
        n, width = batch.input_ids.shape
        r = width - batch.prompt_length
        policy += 3 * forward(n_body, n_head, n * width, n * (r + 1))
        new = set(batch.extras["pair_index"].tolist()) - seen
        seen |= new
        m = 2 * len(new)  # chosen and rejected of each pair seen for the first time
        reference += forward(n_body, n_head, m * width, m * (r + 1))
    assert seen == set(range(pairs))
    assert summary["flops_by_model"] == pytest.approx(
        {"policy": policy, "reference": reference}, rel=1e-12
    )
    assert summary["budget/flops"] == pytest.approx(policy + reference, rel=1e-12)
    # Steps after the first pass ran no reference forward at all.
    assert sum(s["dpo/reference_pairs"] for s in stats.stats) == pairs
    assert stats.stats[-1]["dpo/reference_pairs"] == 0


@pytest.mark.slow
def test_stop_and_resume_gives_the_same_numbers(tmp_path, cache_dir) -> None:
    """Stopped after step 3 (mid-pass, the reference cache half full) and resumed: the same pairs
    in the same order, no reference forward repeated, the same numbers as a straight run."""
    args = [*SMALL_FEEDBACK, "budget.amount=7", "checkpoint_every=0"]
    straight = _run(tmp_path, cache_dir, *args, out="straight")
    with pytest.raises(Interrupted):
        _run(tmp_path, cache_dir, *args, out="resumed", plugins=[("stop", StopAfter(3))])
    resumed = _run(tmp_path, cache_dir, *args, out="resumed")
    assert _numbers(resumed) == _numbers(straight)


@pytest.mark.slow
def test_kill_9_and_resume(tmp_path, monkeypatch) -> None:
    """The kill -9 test of tests/test_resume.py, for offline DPO."""
    monkeypatch.setitem(resume_tests.ALGOS, "dpo", ["algo=dpo", *SMALL_FEEDBACK])
    monkeypatch.setattr(resume_tests, "_numbers", _numbers)
    resume_tests.test_kill_9_and_resume_gives_the_same_summary(tmp_path, "dpo")


def test_pairs_of_a_rankings_file_are_all_ordered_pairs(tmp_path, cache_dir, monkeypatch) -> None:
    """feedback=file: 10 groups of 3 ranked responses, 2 held out: 8 x C(3, 2) = 24 pairs."""
    from plugins.facts import FactsConfig, FactsTask

    task = FactsTask(FactsConfig(name="facts", num_entities=40))
    rows = task.splits["rl"].to_list()[:10]
    lines = [
        json.dumps(
            {
                "prompt": row["prompt"],
                "responses": [row["answer"], "i do not know", "red"],
                "ranking": [0, 1, 2],
            }
        )
        for row in rows
    ]
    (tmp_path / "rankings.jsonl").write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(tmp_path)
    stats = StatsRecorder()
    summary = _run(
        tmp_path,
        cache_dir,
        "feedback=file",
        "feedback.path=rankings.jsonl",
        "stage.rm.epochs=1",
        plugins=[("stats", stats)],
    )
    assert summary["stage/rm"]["train_groups"] == 8
    assert stats.stats[0]["dpo/pairs"] == 24.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algo.loss_type=conservative"], "label_smoothing=0.0 — loss_type=conservative needs"),
        (["algo.label_smoothing=0.1"], "applies only to loss_type=conservative"),
        (["algo.loss_type=ipo", "algo.label_smoothing=0.1"], "applies only to"),
        (["algo.beta=0"], "algo.beta=0.0 — beta must be > 0"),
        (["algo.loss_type=hinge"], "algo.loss_type='hinge' is not a choice"),
    ],
)
def test_bad_options_are_one_line_before_anything_runs(registry, overrides, message) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        validate(registry, ["algo=dpo", *overrides])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["algo.loss_type=sigmoid"],
        ["algo.loss_type=ipo"],
        ["algo.loss_type=conservative", "algo.label_smoothing=0.1"],
    ],
)
def test_each_loss_starts_at_its_value_at_h_zero(tmp_path, cache_dir, overrides) -> None:
    """At step 1 the policy is the reference (h = 0): sigmoid and cDPO give log 2, IPO
    (1 / (2 * 0.1))^2 = 25; then the weights move."""
    stats = StatsRecorder()
    summary = _run(tmp_path, cache_dir, *SMALL_FEEDBACK, *overrides, plugins=[("stats", stats)])
    assert summary["status"] == "finished" and len(stats.stats) == 2
    expected = 25.0 if "ipo" in overrides[0] else 0.6931472
    assert stats.stats[0]["loss/dpo"] == pytest.approx(expected, abs=1e-4)
    assert stats.stats[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert stats.stats[1]["rewards/margins"] != pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
def test_margin_and_accuracy_rise(tmp_path, cache_dir) -> None:
    """On the facts task with simulated annotators (ranking by the known gold answer), the
    implicit reward learns the labels: chosen-over-rejected margin and accuracy climb."""
    stats = StatsRecorder()
    _run(
        tmp_path,
        cache_dir,
        "feedback.labels=60",
        "stage.rm.epochs=1",
        "stage.sft.epochs=15",
        "algo.lr=1e-3",
        "algo.prompts_per_step=8",
        "budget.amount=30",
        plugins=[("stats", stats)],
    )
    first, last = stats.stats[:5], stats.stats[-5:]
    mean = lambda rows, key: sum(s[key] for s in rows) / len(rows)  # noqa: E731
    # Margins start at 0 (policy = reference); measured: about 0.00 -> 0.28 (beta units).
    assert mean(last, "rewards/margins") > mean(first, "rewards/margins") + 0.1
    # Accuracy on each step's 8 pairs, measured: about 0.4 -> 0.9.
    assert mean(last, "rewards/accuracies") > max(0.75, mean(first, "rewards/accuracies") + 0.25)
