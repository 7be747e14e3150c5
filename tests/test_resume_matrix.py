"""Every registered algorithm resumes exactly (issue 11.8): the matrix is read from the registry,
so a new algorithm, or a new stateful part of one without ``state_dict``, fails here."""

from __future__ import annotations

import os
import signal

import pytest

from alignbench import Interrupted, hookimpl
from alignbench.registry import build_registry
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
