"""``reward.lean_forward=true``: the learned reward model read at each sequence's last token alone
(``alignbench.lean_forward.last_values``) gives the full forward's rewards within 1e-5, charges
fewer FLOPs, and stays out of the fingerprint while off."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from alignbench.checkpoint import config_fingerprint
from alignbench.job import Job
from alignbench.jobdir import flat_config
from alignbench.registry import build_registry
from tests.conftest import TINY, compose


@pytest.mark.slow
def test_the_lean_reward_read_equals_the_full_one(tmp_path: Path, cache_dir: Path) -> None:
    """One rollout scored by the same reward model both ways: rewards within 1e-5; the lean read
    charges less (the last layer's queries and MLP at one position per sequence)."""
    registry = build_registry()
    cfg = compose([*TINY, f"cache_dir={cache_dir}", "algo=ppo", "reward=rm"], registry)
    job = Job(cfg, tmp_path / "job", registry)
    run = job.build()
    job.start()
    try:
        hook = run.pm.hook
        batch = hook.alignbench_rollout(run=run, prompts=run.task.splits["rl"].to_list()[:4])
        model = run.reward.reward_model
        scores = {}
        for lean in (False, True):
            model.lean = lean
            before = run.flops.by_model.get("reward_model", 0.0)
            scores[lean] = (model.score(batch), run.flops.by_model["reward_model"] - before)
    finally:
        job.close()
    (full, full_flops), (lean, lean_flops) = scores[False], scores[True]
    assert torch.allclose(full, lean, atol=1e-5) and not torch.equal(full, torch.zeros_like(full))
    assert 0 < lean_flops < full_flops


def test_the_switch_is_recorded_only_when_on() -> None:
    """Off (the default), reward.lean_forward is in neither the record nor the fingerprint."""
    registry = build_registry()
    default = compose(["algo=ppo", "reward=rm"], registry)
    assert "reward.lean_forward" not in flat_config(default)
    on = compose(["algo=ppo", "reward=rm", "reward.lean_forward=true"], registry)
    assert flat_config(on)["reward.lean_forward"] is True
    assert config_fingerprint(on) != config_fingerprint(default)


@pytest.mark.slow
def test_texts_scored_lean_go_to_the_reward_models_device(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Evaluation's texts are collated on the CPU: the lean read moves them to the network's
    device first, as the full read does (on a GPU they failed at the first evaluation)."""
    import alignbench.rm.model as rm_model
    from alignbench import lean_forward

    registry = build_registry()
    cfg = compose([*TINY, f"cache_dir={cache_dir}", "algo=ppo", "reward=rm"], registry)
    job = Job(cfg, tmp_path / "job", registry)
    run = job.build()
    job.start()
    try:
        model = run.reward.reward_model
        model.lean = True
        seen: list[torch.device] = []
        # A stand-in device: on this CPU-only machine, "meta" shows where the ids were sent.
        monkeypatch.setattr(rm_model, "model_device", lambda network: torch.device("meta"))
        monkeypatch.setattr(
            lean_forward,
            "last_values",
            lambda network, ids, mask: seen.append(ids.device) or torch.zeros(ids.shape[0]),
        )
        rows = run.task.splits["rl"].to_list()[:2]
        assert model.score_texts(rows, ["a", "b"]) == [0.0, 0.0]
    finally:
        job.close()
    assert seen == [torch.device("meta")]
