"""RRHF's candidate sources are fair: no task knowledge by default, ties broken at random."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import torch

from alignbench import hookimpl
from alignbench_plugins.facts import ABSTENTION
from tests.conftest import compose


def test_default_rrhf_has_no_fixed_candidate_source(registry) -> None:
    """`algo=rrhf` samples the policy and uses the demonstration; no fixed string is offered."""
    cfg = compose(["algo=rrhf"], registry)
    assert list(cfg.algo.fixed_candidates) == []
    assert "use_abstention" not in cfg.algo
    rft = compose(["algo=rft"], registry).algo
    assert rft.policy_samples > 1 and rft.rank_weight == 0 and not rft.use_demonstration
    assert list(rft.fixed_candidates) == []


@pytest.mark.slow
def test_cfg_job_shows_no_fixed_candidates() -> None:
    """`python -m alignbench --cfg job algo=rrhf` prints an empty fixed-candidate list."""
    out = subprocess.run(
        [sys.executable, "-m", "alignbench", "--cfg", "job", "algo=rrhf"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "fixed_candidates: []" in out and "i do not know" not in out


class BestRecorder:
    """Records which source RRHF trained on as its best candidate, per step."""

    def __init__(self) -> None:
        self.stats: list[dict[str, float]] = []

    @hookimpl(wrapper=True)
    def alignbench_update(self) -> Any:
        stats = yield
        self.stats.append(stats)
        return stats


def _best_shares(tiny_job, registry, *overrides: str) -> dict[str, float]:
    recorder = BestRecorder()
    registry.pm.register(recorder, name="recorder")
    try:
        # Each config in its own folder: a folder never takes results of another config.
        tiny_job(*overrides, "budget.amount=6", registry=registry, out=str(hash(overrides)))
    finally:
        registry.pm.unregister(name="recorder")
    keys = {k for s in recorder.stats for k in s if k.startswith("rrhf/best_is_")}
    return {k: sum(s.get(k, 0.0) for s in recorder.stats) / len(recorder.stats) for k in keys}


@pytest.mark.slow
def test_ties_do_not_favour_the_first_source(tiny_job, registry) -> None:
    """With a reward that is 0 for everything, the best candidate is any source, at random.

    The old rule (argmax = first maximum) trained on the first-listed candidate at every step.
    """
    shares = _best_shares(
        tiny_job,
        registry,
        "algo=rrhf",
        "reward=exact_match",
        "algo.policy_samples=3",
        f"algo.fixed_candidates=[{ABSTENTION}]",
        "algo.use_demonstration=false",
        "algo.prompts_per_step=16",
        "stage.sft.epochs=1",  # a weak SFT model: almost nothing is correct, so all tie at 0
    )
    # 1 fixed + 3 policy candidates: the fixed string should win about a quarter of ties.
    assert 0.1 < shares["rrhf/best_is_fixed"] < 0.45, shares
    assert shares["rrhf/best_is_policy"] > 0.5, shares


@pytest.mark.slow
def test_fixed_candidate_is_reported_under_its_own_source(tiny_job, registry) -> None:
    """A declared fixed string is a candidate named `fixed`; without it there is none."""
    with_fixed = _best_shares(
        tiny_job, registry, "algo=rrhf", f"algo.fixed_candidates=[{ABSTENTION}]"
    )
    without = _best_shares(tiny_job, registry, "algo=rrhf")
    assert "rrhf/best_is_fixed" in with_fixed
    assert "rrhf/best_is_fixed" not in without


def test_rft_trains_on_the_best_policy_sample(tiny_job, registry) -> None:
    """RFT's candidates are all policy samples; it runs and logs no ranking loss."""
    recorder = BestRecorder()
    registry.pm.register(recorder, name="recorder")
    try:
        summary = tiny_job("algo=rft", registry=registry)
    finally:
        registry.pm.unregister(name="recorder")
    assert summary["status"] == "finished"
    assert all(s["rrhf/best_is_policy"] == 1.0 and s["loss/rank"] == 0 for s in recorder.stats)
    assert torch.isfinite(torch.tensor(recorder.stats[-1]["loss/sft"]))
