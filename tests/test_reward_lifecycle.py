"""The reward lifecycle: the core calls prepare, setup, before_step, state_dict / load_state_dict
and final_metrics on every reward, never asking which one is the learned one; a third-party
learned reward written only against the public `RewardModel` runs like the built-in `rm`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignbench import Interrupted, Reward
from alignbench.app import run_job
from alignbench.registry import build_registry
from tests.conftest import TINY, compose
from tests.test_pg_algos import StopAfter

#: A third-party reward that records every lifecycle call the core makes on it.
RECORDER = """
from dataclasses import dataclass
from typing import ClassVar

import alignbench
from alignbench import PrepareContext, Reward, RewardConfig


@dataclass
class RecorderConfig(RewardConfig):
    pass


class Recorder(Reward):
    calls: ClassVar[list] = []

    def prepare(self, context: PrepareContext) -> dict:
        self.calls.append(("prepare", context.sft_path.is_dir(), context.sft_key != ""))
        self.count = 0
        return {"stage/recorder": {"prepared": True}}

    def setup(self, run) -> None:
        self.calls.append(("setup", run.step))

    def before_step(self, run) -> dict:
        self.calls.append(("before_step", run.step))
        self.count += 1
        return {"recorder/count": float(self.count)}

    def score(self, rows, responses):
        return [float(len(r.split())) for r in responses]

    def state_dict(self) -> dict:
        self.calls.append(("state_dict", self.count))
        return {"count": self.count}

    def load_state_dict(self, state) -> None:
        self.calls.append(("load_state_dict", dict(state)))
        self.count = state["count"]

    def final_metrics(self, run) -> dict:
        self.calls.append(("final_metrics", run.step))
        return {"recorder/final": float(self.count)}


@alignbench.hookimpl
def alignbench_register_rewards(register):
    register("recorder", Recorder, RecorderConfig)
"""

#: A learned reward of someone else's, on the public API only: stage 2's reward model, scaled,
#: with one online round of its own before the second step.
SCALED_RM = """
from dataclasses import dataclass

import alignbench
from alignbench import PrepareContext, Reward, RewardConfig, RewardModel


@dataclass
class ScaledConfig(RewardConfig):
    scale: float = 2.0


class ScaledRewardModel(Reward):
    uses_feedback = True

    def prepare(self, context: PrepareContext) -> dict:
        self.reward_model = RewardModel.train(context)
        return {"stage/rm": self.reward_model.info}

    def setup(self, run) -> None:
        run.track(self.reward_model.network, "judge")

    def before_step(self, run) -> dict:
        return self.reward_model.refresh(run.policy, run.step) if run.step == 1 else {}

    def score_batch(self, batch):
        return self.config.scale * self.reward_model.score(batch)

    def score(self, rows, responses):  # evaluation scores texts
        return [self.config.scale * s for s in self.reward_model.score_texts(rows, responses)]

    def state_dict(self) -> dict:
        return self.reward_model.state_dict()

    def load_state_dict(self, state) -> None:
        self.reward_model.load_state_dict(state)

    def final_metrics(self, run) -> dict:
        return self.reward_model.policy_metrics(run)


@alignbench.hookimpl
def alignbench_register_rewards(register):
    register("scaled_rm", ScaledRewardModel, ScaledConfig)
"""

RM = ["feedback.labels=12", "stage.rm.epochs=2", "feedback.k=2", "algo=rrhf"]


@pytest.fixture
def job(tmp_path: Path, cache_dir: Path):
    """Run a tiny job with the two plugins above available; returns (summary, registry)."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "recorder.py").write_text(RECORDER)
    (folder / "scaled_rm.py").write_text(SCALED_RM)

    def run(*overrides: str, out: str = "out", plugins=()) -> tuple[dict, object]:
        registry = build_registry([str(folder)])
        for name, plugin in plugins:
            registry.pm.register(plugin, name=name)
        cfg = compose([*TINY, f"cache_dir={cache_dir}", *overrides], registry)
        return run_job(cfg, tmp_path / out, registry=registry), registry

    return run


def _steps(folder: Path) -> list[dict]:
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if x["kind"] == "step"]


def test_the_core_calls_every_lifecycle_method_of_a_third_party_reward(job, tmp_path: Path) -> None:
    """prepare (with the stage-1 model) before the run, setup once, before_step before each step
    (its statistics logged with the step), state_dict at every checkpoint, final_metrics once at
    the end; prepare's record and the final metrics are in the summary."""
    summary, registry = job("reward=recorder", "algo=rrhf", "budget.amount=3", "checkpoint_every=1")
    calls = registry.get("reward", "recorder").cls.calls
    assert calls == [
        ("prepare", True, True),
        ("setup", 0),
        ("before_step", 0),
        ("state_dict", 1),
        ("before_step", 1),
        ("state_dict", 2),
        ("before_step", 2),
        ("state_dict", 3),
        ("final_metrics", 3),
    ]
    assert summary["status"] == "finished"
    assert summary["stage/recorder"] == {"prepared": True}
    assert summary["recorder/final"] == 3.0
    assert [m["recorder/count"] for m in _steps(tmp_path / "out")] == [1.0, 2.0, 3.0]
    assert "feedback" not in summary["code"]  # a reward that uses no feedback= source


def test_a_resumed_run_gives_the_reward_its_saved_state(job) -> None:
    """A run stopped after step 2 and resumed hands load_state_dict what state_dict saved there,
    and ends where a straight run ends."""
    args = ["reward=recorder", "algo=rrhf", "budget.amount=3", "checkpoint_every=1"]
    straight, registry = job(*args, out="straight")
    registry.get("reward", "recorder").cls.calls.clear()
    with pytest.raises(Interrupted):
        job(*args, out="resumed", plugins=[("stop", StopAfter(2))])
    resumed, registry = job(*args, out="resumed")
    calls = registry.get("reward", "recorder").cls.calls
    assert ("load_state_dict", {"count": 2}) in calls
    assert calls[calls.index(("load_state_dict", {"count": 2})) + 1] == ("before_step", 2)
    assert resumed["recorder/final"] == straight["recorder/final"] == 3.0


def test_a_third_party_learned_reward_on_the_public_reward_model(job, tmp_path: Path) -> None:
    """A learned reward written only against `alignbench.RewardModel` trains stage 2 in its
    prepare, scores with it (here: twice the built-in rm's rewards), runs its own online round,
    is charged for its model, and reports the policy read as a reward model."""
    builtin, _ = job("reward=rm", *RM, "budget.amount=2", out="builtin")
    scaled, _ = job("reward=scaled_rm", *RM, "budget.amount=2", out="scaled")
    assert scaled["status"] == "finished"
    assert scaled["stage/rm"]["key"] == builtin["stage/rm"]["key"]  # the same cached stage 2
    assert scaled["flops_by_model"]["judge"] > 0
    assert "feedback" in scaled["code"]  # uses_feedback: the source's code is fingerprinted
    assert set(scaled) >= {"rm/policy_as_rm_accuracy_gold", "rm/policy_as_rm_accuracy_labels"}
    first = [_steps(tmp_path / out)[0]["objective/reward"] for out in ("builtin", "scaled")]
    assert first[1] == pytest.approx(2 * first[0], rel=1e-6)  # the same model before any update
    refreshed = _steps(tmp_path / "scaled")[1]
    assert refreshed["feedback/groups"] > builtin["stage/rm"]["train_groups"]


def test_rule_rewards_keep_the_defaults() -> None:
    """The base class's lifecycle does nothing: no record, no statistics, no state, no metrics."""
    reward = Reward.__new__(Reward)
    assert reward.prepare(None) == {}
    assert reward.before_step(None) == {}
    assert reward.state_dict() == {}
    assert reward.load_state_dict({}) is None
    assert reward.final_metrics(None) == {}


def test_the_core_never_names_the_learned_reward() -> None:
    """Outside stage 2's package, no core module asks which reward is the learned one."""
    root = Path(__file__).resolve().parent.parent / "alignbench"
    words = ("needs_reward_model", "use_reward_model", "LearnedReward", "reward.refresh(")
    offenders = [
        f"{path.relative_to(root)}: {word}"
        for path in sorted(root.rglob("*.py"))
        if path.parent.name != "rm"
        for word in words
        if word in path.read_text()
    ]
    assert offenders == []


def test_an_algorithm_that_trains_on_ranked_groups_fingerprints_the_feedback_plugin() -> None:
    """DPO reads stage 2's groups with a rule reward: the feedback source's code is part of
    its job (fixed feedback code must not reuse DPO's old results), not of a PPO job's."""
    from alignbench.job import plugin_code
    from alignbench.registry import build_registry
    from tests.conftest import compose

    registry = build_registry()
    dpo = plugin_code(registry, compose(["algo=dpo", "reward=abstention"], registry))
    ppo = plugin_code(registry, compose(["algo=ppo", "reward=abstention"], registry))
    assert dpo["feedback"].startswith("feedback.py:") and "feedback" not in ppo
