"""precision=fp16: the loss scaler behind ``Run.backward`` / ``Run.clip_and_step`` scales the
loss, unscales before clipping, skips a step whose gradients overflowed (the scale drops and
the skip is counted), and leaves fp32 and bf16 steps exactly as a plain ``optimizer.step()``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from alignbench.errors import ConfigError, NonFiniteError
from alignbench.hardware import check_precision, grad_scaler
from alignbench.run import Run


def _fake_run(precision: str) -> SimpleNamespace:
    """What the seam reads from a Run: its scaler, the skip count and the finiteness check."""
    fake = SimpleNamespace(scaler=grad_scaler(torch.device("cpu"), precision), skipped_steps=0)
    fake.check_finite = lambda **values: Run.check_finite(SimpleNamespace(step=0), **values)
    fake.clip_and_step = lambda steps, max_norm: Run.clip_and_step(fake, steps, max_norm)
    return fake


def _model() -> tuple[torch.nn.Linear, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    return model, torch.optim.AdamW(model.parameters(), lr=0.1)


def _step(fake: SimpleNamespace, loss_scale: float = 1.0) -> tuple[torch.nn.Linear, torch.Tensor]:
    model, optimizer = _model()
    loss = model(torch.ones(2, 4)).pow(2).sum() * loss_scale
    optimizer.zero_grad(set_to_none=True)
    Run.backward(fake, loss)
    norm = Run.optimizer_step(fake, optimizer, model.parameters(), 0.5)
    return model, norm


def test_fp32_and_bf16_take_no_scaler() -> None:
    assert grad_scaler(torch.device("cpu"), "fp32") is None
    assert grad_scaler(torch.device("cpu"), "bf16") is None
    assert isinstance(grad_scaler(torch.device("cpu"), "fp16"), torch.amp.GradScaler)


def test_without_a_scaler_the_seam_is_backward_clip_step() -> None:
    """fp32 / bf16: bit-identical to the loop every algorithm ran before the seam."""
    seam, seam_norm = _step(_fake_run("fp32"))
    plain, optimizer = _model()
    optimizer.zero_grad(set_to_none=True)
    plain(torch.ones(2, 4)).pow(2).sum().backward()
    plain_norm = torch.nn.utils.clip_grad_norm_(plain.parameters(), 0.5)
    optimizer.step()
    assert torch.equal(seam_norm, plain_norm)
    for a, b in zip(seam.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)


def test_fp16_scaler_unscales_before_clipping() -> None:
    """The clipped step and the norm are the unscaled ones (the same as fp32's, to rounding)."""
    fake = _fake_run("fp16")
    scaled, scaled_norm = _step(fake)
    plain, plain_norm = _step(_fake_run("fp32"))
    assert fake.skipped_steps == 0 and fake.scaler.get_scale() == 65536.0
    torch.testing.assert_close(scaled_norm, plain_norm)
    for a, b in zip(scaled.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_fp16_overflow_skips_the_step_and_lowers_the_scale() -> None:
    fake = _fake_run("fp16")
    before, _ = _model()
    # 1e35 x the scale (65536) is past fp32's largest number: the scaled gradients are inf.
    model, norm = _step(fake, loss_scale=1e35)
    assert norm.item() == 0.0  # nothing was applied (the overflow itself was inf)
    assert fake.skipped_steps == 1
    assert fake.scaler.get_scale() == 32768.0  # halved
    for a, b in zip(model.parameters(), before.parameters(), strict=True):
        assert torch.equal(a, b)  # the weights did not move
    # Without a scaler the same overflow is the NonFiniteError it always was (on_nonfinite=).
    with pytest.raises(NonFiniteError, match="policy/grad_norm is not finite"):
        _step(_fake_run("fp32"), loss_scale=1e35 * 65536)


def test_fp16_runs_on_cpu_and_not_on_mps() -> None:
    check_precision("fp16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="precision=fp16 on device=mps"):
        check_precision("fp16", torch.device("mps"))


@pytest.mark.slow
def test_fp16_ppo_runs_on_cpu_and_reports_its_scale(tiny_job, tmp_path: Path) -> None:
    """A tiny fp16 PPO job ends with finite results; every step reports the loss scale and the
    skipped steps, and the same job in fp32 reports neither (its metrics are unchanged)."""
    summary = tiny_job("algo=ppo", "algo.samples_per_prompt=2", "precision=fp16", out="fp16")
    assert summary["status"] == "finished"
    assert all(math.isfinite(v) for k, v in summary.items() if k.startswith("test/"))
    lines = (tmp_path / "fp16" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(x) for x in lines if json.loads(x)["kind"] == "step"]
    assert len(steps) == 2
    for step in steps:
        assert step["precision/loss_scale"] > 0
        assert step["precision/skipped_steps"] >= 0
    tiny_job("algo=ppo", "algo.samples_per_prompt=2", out="fp32")
    plain = (tmp_path / "fp32" / "metrics.jsonl").read_text()
    assert "precision/" not in plain


@pytest.mark.slow
def test_fp16_resume_restores_the_loss_scale(tiny_job, tmp_path: Path) -> None:
    """The scaler's state is checkpointed: an fp16 PPO run stopped by a signal and resumed ends
    with the same numbers (loss scale and skipped steps included) as a straight run."""
    import os
    import signal

    from alignbench import Interrupted, hookimpl
    from alignbench.checkpoint import latest
    from alignbench.registry import build_registry

    args = ["algo=ppo", "algo.samples_per_prompt=2", "precision=fp16", "budget.amount=4"]
    straight = tiny_job(*args, "checkpoint_every=1", out="straight")

    class StopAtStep2:
        @hookimpl(wrapper=True)
        def alignbench_update(self, run):
            stats = yield
            if run.step == 1:  # the 2nd update
                os.kill(os.getpid(), signal.SIGTERM)
            return stats

    registry = build_registry()
    registry.pm.register(StopAtStep2(), name="stop")
    with pytest.raises(Interrupted):
        tiny_job(*args, "checkpoint_every=1", out="resumed", registry=registry)
    state = torch.load(latest(tmp_path / "resumed") / "state.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0 and "skipped_steps" in state["scaler"]
    resumed = tiny_job(*args, "checkpoint_every=1", out="resumed")
    timeless = ("budget/seconds", "wall_time", "output_dir", "model_dir", "stage/sft", "skipped")
    assert {k: v for k, v in resumed.items() if k not in timeless and "git" not in k} == {
        k: v for k, v in straight.items() if k not in timeless and "git" not in k
    }
    steps = [
        json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [s["step"] for s in steps if s["kind"] == "step"] == [1, 2, 3, 4]


def test_a_skipped_batch_puts_the_loss_scale_back() -> None:
    """on_nonfinite=skip: a batch whose update fails half-way leaves no trace, the fp16 loss
    scaler's scale and skip count included (not only the weights and optimisers)."""
    from alignbench.loop import restore, snapshot

    fake = _fake_run("fp16")
    fake.policy, _ = _model()
    saved = snapshot(fake, None)
    _step(fake, loss_scale=1e35)  # an overflowing step inside the batch that is then skipped
    assert fake.skipped_steps == 1 and fake.scaler.get_scale() == 32768.0
    restore(fake, None, saved)
    assert fake.skipped_steps == 0 and fake.scaler.get_scale() == 65536.0


# -- fp16 PPO targets: GAE and whitening in fp32 -------------------------------------------------


def _ppo_targets(spread: torch.Tensor, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's targets (advantages, returns) for a zero-init critic head's values (under CPU
    autocast to ``precision``) and last-token rewards ``spread``."""
    from alignbench_plugins.ppo import PPO, PPOConfig

    ppo = object.__new__(PPO)  # _targets reads only the recipe card
    ppo.config = PPOConfig()
    rows, length = len(spread), 4
    token_rewards = torch.zeros(rows, length)
    token_rewards[:, -1] = spread
    batch = SimpleNamespace(
        response_mask=torch.ones(rows, length, dtype=torch.long),
        turns=None,
        extras={"token_rewards": token_rewards},
    )
    head = torch.nn.Linear(8, 1)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    hidden = torch.randn(rows, length, 8, generator=torch.Generator().manual_seed(0))
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        values = head(hidden).squeeze(-1)  # the critic's values, as autocast gives them
        targets = ppo._targets(batch, values)
    return targets.advantages, targets.returns


def test_fp16_ppo_advantages_stay_finite_for_a_small_spread() -> None:
    """A zero-init critic and rewards that differ by ~1e-4 (gpu_smoke's random reward network):
    in fp16 the advantages' variance underflowed to 0 and whitening made them inf (a NaN policy
    loss). GAE and whitening now run in fp32: finite, and equal to the fp32 run's."""
    spread = torch.tensor([1.2e-4, -1.9e-4, 0.5e-4, 0.0])
    advantages, returns = _ppo_targets(spread, "fp16")
    assert advantages.dtype == returns.dtype == torch.float32
    assert torch.isfinite(advantages).all() and torch.isfinite(returns).all()
    reference = _ppo_targets(spread, "fp32")
    assert torch.equal(advantages, reference[0]) and torch.equal(returns, reference[1])


def test_fp16_ppo_advantages_of_equal_rewards_are_zero() -> None:
    """Every reward equal (the variance exactly 0): zero advantages, as in fp32, not 0 x inf."""
    advantages, _ = _ppo_targets(torch.zeros(4), "fp16")
    assert torch.equal(advantages, torch.zeros_like(advantages))


CONSTANT_REWARD = '''
from dataclasses import dataclass

import alignbench
from alignbench import Reward, RewardConfig


@dataclass
class ConstantConfig(RewardConfig):
    pass


class Constant(Reward):
    """The same score for every response: nothing to learn, every advantage ~0."""

    def score(self, rows, responses):
        return [0.0 for _ in responses]


@alignbench.hookimpl
def alignbench_register_rewards(register):
    register("constant", Constant, ConstantConfig)
'''


@pytest.mark.slow
def test_fp16_ppo_job_with_a_constant_reward_finishes(tiny_job, tmp_path: Path) -> None:
    """A whole fp16 PPO job on a reward that never varies (advantages from the KL alone, ~0)
    ends with finite losses; it stopped at step 1 with 'loss/policy is not finite (nan)'."""
    from alignbench.registry import build_registry

    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "constant.py").write_text(CONSTANT_REWARD)
    summary = tiny_job(
        "algo=ppo",
        "algo.samples_per_prompt=2",
        "reward=constant",
        "precision=fp16",
        registry=build_registry([str(folder)]),
    )
    assert summary["status"] == "finished"
    lines = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(x) for x in lines if json.loads(x)["kind"] == "step"]
    assert len(steps) == 2 and all(math.isfinite(s["loss/policy"]) for s in steps)
