"""Delayed feedback: labels requested in an online round at step t arrive at step t + delay."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from alignbench import ConfigError, Interrupted, hookimpl
from alignbench.registry import build_registry
from tests.test_resume import _numbers

RM = ["reward=rm", "feedback.labels=12", "stage.rm.epochs=2", "feedback.k=2", "algo=rrhf"]


def _trainings(monkeypatch) -> list[list[tuple[int, int]]]:
    """Record, for every retraining of the reward model during RL, (requested_at, arrived_at) of
    each online group it trains on."""
    import alignbench.rm.model as model

    calls: list[list[tuple[int, int]]] = []
    original = model.retrain_reward_model

    def recording(model, tokenizer, groups, rm_cfg):
        calls.append(
            [
                (g.extras["requested_at"], g.extras["arrived_at"])
                for g in groups
                if "requested_at" in g.extras
            ]
        )
        return original(model, tokenizer, groups, rm_cfg)

    monkeypatch.setattr(model, "retrain_reward_model", recording)
    return calls


def _steps(folder: Path) -> list[dict]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if json.loads(x)["kind"] == "step"]


@pytest.mark.slow
def test_refresh_at_step_t_uses_only_labels_requested_by_t_minus_delay(
    tiny_job, tmp_path: Path, monkeypatch
) -> None:
    """rounds=3 over 8 steps requests labels at steps 2, 4 and 6; with delay=3 they arrive at
    steps 5 and 7 (the third would arrive at step 9, after the run: never used), and every
    retraining at step t sees only groups requested at t - 3 or earlier."""
    calls = _trainings(monkeypatch)
    summary = tiny_job(*RM, "feedback.rounds=3", "feedback.delay=3", "budget.amount=8")
    assert summary["status"] == "finished"
    assert len(calls) == 2
    for used in calls:
        newest = max(arrived for _, arrived in used)  # the step of this retraining
        assert all(requested <= newest - 3 for requested, _ in used)
    assert sorted({r for r, _ in calls[-1]}) == [2, 4]
    logged = {m["step"]: m for m in _steps(tmp_path / "out") if "feedback/groups" in m}
    # Metrics are logged at the end of the step (run.step + 1): arrivals at steps 5 and 7.
    assert sorted(logged) == [6, 8]
    assert all(m["feedback/label_age"] == 3 for m in logged.values())
    assert logged[8]["feedback/pending"] > 0  # the third round's labels never arrived


@pytest.mark.slow
def test_no_delay_trains_at_once_like_before(tiny_job, monkeypatch) -> None:
    """delay=0: each round's labels are trained on in the step that requested them."""
    calls = _trainings(monkeypatch)
    tiny_job(*RM, "feedback.rounds=2", "budget.amount=6")
    assert [sorted({r for r, _ in used}) for used in calls] == [[2], [2, 4]]
    assert all(r == a for used in calls for r, a in used)


@pytest.mark.slow
def test_delayed_labels_pending_at_a_checkpoint_resume_exactly(tiny_job, tmp_path: Path) -> None:
    """A run stopped while labels are on their way (requested at step 3, due at step 6) and
    resumed ends with the same numbers as a straight run: pending labels are in the checkpoint."""
    args = [*RM, "feedback.rounds=2", "feedback.delay=3", "budget.amount=8", "checkpoint_every=1"]
    straight = tiny_job(*args, out="straight")

    class StopAtStep4:
        @hookimpl(wrapper=True)
        def alignbench_update(self, run):
            stats = yield
            if run.step == 3:  # the 4th update: labels requested at step 3, due at step 6
                os.kill(os.getpid(), signal.SIGTERM)
            return stats

    registry = build_registry()
    registry.pm.register(StopAtStep4(), name="stop")
    with pytest.raises(Interrupted):
        tiny_job(*args, out="resumed", registry=registry)
    resumed = tiny_job(*args, out="resumed")
    stage = ("stage/rm",)
    assert {k: v for k, v in _numbers(resumed).items() if k not in stage} == {
        k: v for k, v in _numbers(straight).items() if k not in stage
    }
    untimed = [
        [{k: v for k, v in m.items() if "seconds" not in k and "time" not in k} for m in run]
        for run in (_steps(tmp_path / "resumed"), _steps(tmp_path / "straight"))
    ]
    assert untimed[0] == untimed[1]


def test_negative_delay_is_one_line() -> None:
    """feedback.delay=-1 is refused before anything runs."""
    from alignbench.app import validate

    with pytest.raises(ConfigError, match=r"feedback.delay=-1 — must be >= 0"):
        validate(build_registry(), ["reward=rm", "feedback.delay=-1"])
