"""Online DPO as a whole algorithm: FLOPs per model against a hand count, tied groups skipped and
reported, exact resume, its options, and a reward that rises on a toy task whose answer is known."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tests.test_resume as resume_tests
from alignbench import ConfigError, Interrupted
from alignbench.app import run_job, validate
from alignbench.models import load_pretrained
from alignbench.registry import build_registry
from tests.conftest import TINY, compose
from tests.test_dpo import StatsRecorder
from tests.test_flops import Recorder, forward, generation, sizes
from tests.test_pg_algos import StopAfter
from tests.test_ppo import TOY_REWARD

#: Two more toy rewards: the number of words (the K samples of a prompt rarely all tie) and a
#: constant (they always tie).
MORE_REWARDS = """
from dataclasses import dataclass

import alignbench
from alignbench import Reward, RewardConfig


@dataclass
class WordsConfig(RewardConfig):
    pass


class Words(Reward):
    def score(self, rows, responses):
        return [float(len(r.split())) for r in responses]


class Constant(Reward):
    def score(self, rows, responses):
        return [0.0 for _ in responses]


@alignbench.hookimpl
def alignbench_register_rewards(register):
    register("words", Words, WordsConfig)
    register("constant", Constant, WordsConfig)
"""


@pytest.fixture
def toy(tmp_path: Path, cache_dir: Path):
    """Run online DPO jobs on the tiny task with the toy rewards available."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "toy.py").write_text(TOY_REWARD)
    (folder / "more.py").write_text(MORE_REWARDS)

    def run(*overrides: str, out: str = "out", plugins=()) -> dict:
        registry = build_registry([str(folder)])
        for name, plugin in plugins:
            registry.pm.register(plugin, name=name)
        cfg = compose(
            [*TINY, f"cache_dir={cache_dir}", "algo=online_dpo", *overrides],
            registry,
        )
        return run_job(cfg, tmp_path / out, registry=registry)

    return run


def test_flops_per_model_match_the_hand_count(toy, cache_dir) -> None:
    """Policy: generation of K samples per prompt, then forward + backward over the chosen and
    rejected of each decided prompt; reference: one forward over those same sequences only."""
    recorder, stats = Recorder(), StatsRecorder()
    summary = toy(
        "reward=words",
        "algo.samples_per_prompt=3",
        "budget.amount=1",
        plugins=[("recorder", recorder), ("stats", stats)],
    )
    n_body, n_head = sizes(load_pretrained(cache_dir / "sft" / summary["stage/sft"]["key"])[0])
    [batch] = recorder.rollouts
    n, width = batch.input_ids.shape
    new = width - batch.prompt_length
    assert n == 4 * 3
    rewards = batch.grouped(batch.rewards)
    decided = int((rewards.max(dim=1).values > rewards.min(dim=1).values).sum())
    assert decided > 0
    assert stats.stats[0]["online_dpo/tied_share"] == pytest.approx(1 - decided / 4)
    m = 2 * decided
    pairs = forward(n_body, n_head, m * width, m * (new + 1))
    expected = {
        "policy": generation(n_body, n_head, n, batch.prompt_length, new) + 3 * pairs,
        "reference": pairs,
    }
    assert summary["flops_by_model"] == pytest.approx(expected, rel=1e-12)
    assert summary["budget/flops"] == pytest.approx(sum(expected.values()), rel=1e-12)


def test_tied_groups_are_skipped_and_reported(toy) -> None:
    """A reward that ties every sample gives no pair: no reference forward, no step, and the
    share of skipped prompts is reported as 1."""
    stats = StatsRecorder()
    summary = toy("reward=constant", plugins=[("stats", stats)])
    assert [s["online_dpo/tied_share"] for s in stats.stats] == [1.0, 1.0]
    assert all("loss/dpo" not in s for s in stats.stats)
    assert summary["flops_by_model"]["reference"] == 0.0


@pytest.mark.slow
def test_stop_and_resume_gives_the_same_numbers(toy) -> None:
    """Stopped by a signal after step 3 and resumed: the same numbers as a straight run."""
    args = ["reward=words", "budget.amount=6", "checkpoint_every=0"]
    straight = toy(*args, out="straight")
    with pytest.raises(Interrupted):
        toy(*args, out="resumed", plugins=[("stop", StopAfter(3))])
    resumed = toy(*args, out="resumed")
    assert resume_tests._numbers(resumed) == resume_tests._numbers(straight)


# Online DPO's kill -9 run (23 s) was dropped to keep make test under 12 minutes: offline DPO's
# (tests/test_dpo.py) covers the same checkpoint code, and tests/test_resume_matrix.py resumes
# online DPO exactly.


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algo.samples_per_prompt=1"], "needs K >= 2"),
        (["algo.loss_type=conservative"], "loss_type=conservative needs"),
        (["algo.label_smoothing=0.2"], "applies only to loss_type=conservative"),
        (["algo.beta=-1"], "beta must be > 0"),
    ],
)
def test_bad_options_are_one_line_before_anything_runs(registry, overrides, message) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        validate(registry, ["algo=online_dpo", *overrides])
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_reward_rises_on_a_toy_task(toy, tmp_path) -> None:
    """+1 for naming a colour (the right answer to 1 question in 4): the reward climbs."""
    toy(
        "reward=says_colour",
        "algo.prompts_per_step=8",
        "algo.lr=1e-3",
        "stage.sft.epochs=15",
        "budget.amount=25",
    )
    lines = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    steps = [x for x in map(json.loads, lines) if x["kind"] == "step"]
    start = sum(s["objective/reward"] for s in steps[:3]) / 3
    end = sum(s["objective/reward"] for s in steps[-3:]) / 3
    assert end > start + 0.3, (start, end)
