"""Every registered algorithm resumes exactly (issue 11.8): the matrix is read from the registry,
so a new algorithm, or a new stateful part of one without ``state_dict``, fails here. Dialogue
jobs (issue 15) resume exactly after a crash in the middle of a batch of conversations."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignbench import Interrupted, hookimpl
from alignbench.checkpoint import latest
from alignbench.registry import build_registry
from tests.test_dialogue_runs import DIALOGUE
from tests.test_resume import _numbers

#: Overrides that keep an algorithm's tiny job small (its defaults otherwise).
SMALL = {
    "ppo": ["algo.samples_per_prompt=2", "algo.num_minibatches=2"],
    "dpo": ["feedback.labels=12", "feedback.k=2", "stage.rm.epochs=1"],
}


class StopAfter:
    """Sends SIGTERM to this process after the update of step ``step`` (the loop then saves)."""

    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl(wrapper=True)
    def alignbench_update(self, run):
        """Let the update run, then ask the process to stop."""
        stats = yield
        if run.step == self.step - 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return stats


#: Algorithms that train nothing (no update runs, so there is nothing to stop after).
NO_TRAINING = {"best_of_n"}


def _same_run(summary: dict) -> dict:
    """The numbers of a summary; a stage's timing and cache hit differ between two runs."""
    out = _numbers(summary)
    if "stage/rm" in out:
        out["stage/rm"] = {
            k: v for k, v in out["stage/rm"].items() if k not in ("seconds", "cache_hit")
        }
    return out


@pytest.mark.slow
@pytest.mark.parametrize("algo", build_registry().names("algo"))
def test_every_registered_algorithm_resumes_exactly(tiny_job, algo: str) -> None:
    """Stopped after step 2 of 4 and resumed, each algorithm ends with a straight run's numbers."""
    if algo in NO_TRAINING:
        pytest.skip(f"{algo} trains nothing: there is no state to resume")
    args = [f"algo={algo}", *SMALL.get(algo, []), "budget.amount=4", "checkpoint_every=0"]
    straight = tiny_job(*args, out="straight")
    registry = build_registry()
    registry.pm.register(StopAfter(2), name="stop")
    with pytest.raises(Interrupted):
        tiny_job(*args, out="resumed", registry=registry)
    resumed = tiny_job(*args, out="resumed")
    assert resumed["steps"] == straight["steps"] == 4
    assert _same_run(resumed) == _same_run(straight)


class Crash(Exception):
    """What a kill -9 leaves: the process gone mid-step, nothing saved after the last checkpoint."""


class CrashMidDialogue:
    """Crashes the job inside step ``step``'s batch of conversations: at the simulated user's
    ``reply``-th answer of that rollout, when some dialogues are a turn or more along."""

    def __init__(self, task_class: type, step: int, reply: int = 2) -> None:
        self.step, self.reply, self.replies = step, reply, 0
        self.armed = False
        user_reply = task_class.user_reply

        def crashing(task, *args, **kwargs):
            if self.armed:
                self.replies += 1
                if self.replies == self.reply:
                    raise Crash(f"killed at the user's reply {self.reply} of step {self.step}")
            return user_reply(task, *args, **kwargs)

        self.user_reply = crashing

    @hookimpl(wrapper=True)
    def alignbench_rollout(self, run, prompts):
        """Arm the crash for the rollout of step ``step`` only."""
        self.armed = run.step == self.step - 1
        return (yield)


#: PPO (per-turn credit) and RRHF on dialogues, each with its own reward granularity.
DIALOGUE_RESUMES = {
    "ppo": ["algo=ppo", *SMALL["ppo"], "reward=turn"],
    "rrhf": ["algo=rrhf", "reward=mixed"],
}


@pytest.fixture
def _keep_torch_threads() -> Iterator[None]:
    """``threads=1`` sets torch's process-wide threads: give the next test its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _weights(job: Path) -> dict[str, torch.Tensor]:
    """The exported policy's tensors."""
    return load_file(job / "model" / "model.safetensors")


@pytest.mark.slow
@pytest.mark.usefixtures("_keep_torch_threads")
@pytest.mark.parametrize("algo", sorted(DIALOGUE_RESUMES))
def test_dialogue_job_resumes_exactly_after_a_crash_mid_dialogue_batch(
    tiny_job, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, algo: str
) -> None:
    """Killed while step 3's conversations are half sampled (checkpoint of step 2 on disk) and
    run again, a dialogue job ends with a straight run's numbers and weights (issue 15)."""
    args = [*DIALOGUE, *DIALOGUE_RESUMES[algo], "budget.amount=4", "checkpoint_every=2"]
    straight = tiny_job(*args, out="straight")
    registry = build_registry()
    crash = CrashMidDialogue(registry.get("task", "dialogue").cls, step=3)
    registry.pm.register(crash, name="crash")
    with monkeypatch.context() as patch:
        patch.setattr(registry.get("task", "dialogue").cls, "user_reply", crash.user_reply)
        with pytest.raises(Crash):
            tiny_job(*args, out="resumed", registry=registry)
    assert crash.replies == 2  # it did crash inside step 3's rollout
    assert latest(tmp_path / "resumed") is not None
    resumed = tiny_job(*args, out="resumed")
    assert resumed["steps"] == straight["steps"] == 4
    assert _same_run(resumed) == _same_run(straight)
    expected, got = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert expected.keys() == got.keys()
    assert all(torch.equal(got[name], expected[name]) for name in expected)
