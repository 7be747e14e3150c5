"""PPO-level behaviour: it learns a toy reward, respects its KL anchor, and its health checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alignbench.app import run_job
from alignbench.registry import build_registry
from tests.conftest import TINY, compose

TOY_REWARD = '''
from dataclasses import dataclass

import alignbench
from alignbench import Reward, RewardConfig


COLOURS = set("red blue green yellow purple orange black white grey pink brown silver".split())


@dataclass
class SaysColourConfig(RewardConfig):
    pass


class SaysColour(Reward):
    """+1 when the response contains a colour word (the answer to 1 question in 4), else 0."""

    def score(self, rows, responses):
        return [float(bool(COLOURS & set(r.split()))) for r in responses]


@alignbench.hookimpl
def alignbench_register_rewards(register):
    register("says_colour", SaysColour, SaysColourConfig)
'''

PPO_TINY = [
    "algo=ppo",
    "algo.samples_per_prompt=4",
    "algo.num_minibatches=2",
    "algo.ppo_epochs=2",
    "algo.prompts_per_step=8",
    "algo.ptx_coef=0",  # the PPO core alone; PPO-ptx has its own test
    "budget.kind=steps",
]


def _steps(out: Path) -> list[dict]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if x["kind"] == "step"]


@pytest.fixture
def toy(tmp_path: Path, cache_dir: Path):
    """Run PPO jobs on the tiny task with the `says_colour` toy reward available."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "toy.py").write_text(TOY_REWARD)
    registry = build_registry([str(folder)])

    def run(*overrides: str, out: str = "out") -> tuple[dict, list[dict]]:
        cfg = compose([*TINY, f"cache_dir={cache_dir}", *PPO_TINY, *overrides], registry)
        summary = run_job(cfg, tmp_path / out, registry=registry)
        return summary, _steps(tmp_path / out)

    return run


def test_ppo_raises_a_toy_reward(toy) -> None:
    """With +1 for naming a colour, PPO's reward climbs well above where it started."""
    summary, steps = toy(
        "reward=says_colour",
        "budget.amount=25",
        "algo.lr=1e-3",
        "algo.critic_lr=1e-3",
        "stage.sft.epochs=15",
    )
    start = sum(s["objective/reward"] for s in steps[:3]) / 3
    end = sum(s["objective/reward"] for s in steps[-3:]) / 3
    assert end > start + 0.3, (start, end)


def test_large_beta_keeps_the_policy_at_the_reference(toy) -> None:
    """A huge KL coefficient keeps the KL to the reference near zero; no penalty lets it grow."""
    common = ("reward=says_colour", "budget.amount=12", "algo.lr=1e-3", "stage.sft.epochs=15")
    _, anchored = toy(*common, "algo.kl_coef=20", out="anchored")
    _, free = toy(*common, "algo.kl_coef=0", out="free")
    kl_anchored = sum(abs(s["objective/kl"]) for s in anchored[-4:]) / 4
    kl_free = sum(abs(s["objective/kl"]) for s in free[-4:]) / 4
    assert kl_anchored < 0.25  # nats per response; k1 is noisy per sample, hence the mean
    assert kl_free > 10 * kl_anchored


@pytest.mark.parametrize("critic", ["separate", "shared"])
def test_both_critics_train(toy, critic: str) -> None:
    """Both critic layouts run, fit values (finite losses) and charge their own FLOPs."""
    summary, steps = toy(f"algo.critic={critic}", "budget.amount=3")
    assert summary["status"] == "finished"
    assert all(torch.isfinite(torch.tensor(s["loss/value"])) for s in steps)
    assert steps[-1]["val/mean"] != 0.0  # the zero-initialised head has moved
    models = set(summary["flops_by_model"])
    assert {f"flops/{m}" for m in models} <= set(steps[-1])  # charged per model, every step
    assert models == (
        {"policy", "reference", "critic"} if critic == "separate" else {"policy", "reference"}
    )


def test_health_checks(toy) -> None:
    """Sampler and training log-probs agree; the first mini-batch has ratio 1 and no clipping."""
    _, steps = toy("budget.amount=2")
    for step in steps:
        assert step["ppo/logprob_gap"] < 1e-4
        assert step["ppo/first_ratio"] == pytest.approx(1.0, abs=1e-5)
        assert step["ppo/first_clipfrac"] == 0.0
        # The logged KL is the one in the reward: non-score reward = -beta * KL, exactly.
        assert step["objective/non_score_reward"] == pytest.approx(
            -step["objective/kl_coef"] * step["objective/kl"], rel=1e-5, abs=1e-7
        )


def test_ptx_mixes_demonstrations_into_the_update(toy) -> None:
    """PPO-ptx adds an SFT loss on demonstrations to every update, and pays its FLOPs."""
    plain, _ = toy("budget.amount=2", out="plain")
    summary, steps = toy("algo.ptx_coef=1.0", "algo.ptx_batch_size=4", "budget.amount=2", out="ptx")
    assert all(0 < s["loss/ptx"] < 20 for s in steps)
    assert summary["flops_by_model"]["policy"] > plain["flops_by_model"]["policy"]


def test_truncation_is_visible_and_penalised(toy) -> None:
    """Responses cut at max_new_tokens show in the logs and pay the missing-eos penalty."""
    _, steps = toy(
        "algo.sampling.max_new_tokens=1", "algo.missing_eos_penalty=3", "budget.amount=1"
    )
    [step] = steps
    assert step["policy/truncated_share"] > 0.5
    assert step["objective/scores"] < step["objective/reward"] - 1.0


def test_an_answer_ended_at_any_listed_eos_is_not_truncated(toy, monkeypatch) -> None:
    """A model whose generation_config lists every token as an end id (as chat models list
    several): each one-token answer ended, so none counts as truncated or pays the penalty
    (compared with the tokenizer's eos alone, nearly all would)."""
    import alignbench
    from alignbench import sampling

    def every_id(model, tokenizer) -> list[int]:
        return [tokenizer.eos_token_id, *range(len(tokenizer))]

    monkeypatch.setattr(sampling, "eos_ids", every_id)
    monkeypatch.setattr(alignbench, "eos_ids", every_id, raising=False)
    _, steps = toy(
        "algo.sampling.max_new_tokens=1",
        "algo.missing_eos_penalty=3",
        "budget.amount=1",
        out="listed",
    )
    [step] = steps
    assert step["policy/truncated_share"] == 0.0
    assert step["objective/scores"] == pytest.approx(step["objective/reward"])


def test_adaptive_kl_controller_moves_beta(toy) -> None:
    """With the adaptive controller, beta moves towards the target; fixed, it does not."""
    _, adaptive = toy("algo.adaptive_kl=true", "algo.kl_horizon=100", "budget.amount=3", out="a")
    _, fixed = toy("budget.amount=3", out="f")
    assert adaptive[-1]["objective/kl_coef"] != adaptive[0]["objective/kl_coef"]
    assert fixed[-1]["objective/kl_coef"] == fixed[0]["objective/kl_coef"]


def test_ppo_is_reproducible(toy) -> None:
    """Same seed, same PPO numbers."""
    a, _ = toy("budget.amount=2", out="a")
    b, _ = toy("budget.amount=2", out="b")
    keys = [k for k in a if k.startswith(("test/", "budget/")) and k != "budget/seconds"]
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
