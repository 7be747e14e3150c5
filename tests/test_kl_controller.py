"""PPO's adaptive KL coefficient moves in the right direction, by the right amount."""

from __future__ import annotations

import pytest

from plugins.ppo import KLController, PPOConfig


def _controller(adaptive: bool = True) -> KLController:
    return KLController(PPOConfig(kl_coef=0.1, adaptive_kl=adaptive, target_kl=0.5, kl_horizon=100))


def test_beta_rises_when_kl_is_above_the_target_and_falls_below() -> None:
    """KL 0.6 > 0.5: e = 0.2 → beta * (1 + 0.2 * 10 / 100); KL 0.45: e = -0.1 → smaller."""
    above = _controller()
    above.update(kl=0.6, n=10)
    assert above.value == pytest.approx(0.1 * 1.02)
    below = _controller()
    below.update(kl=0.45, n=10)
    assert below.value == pytest.approx(0.1 * (1 - 0.1 * 10 / 100))
    clipped = _controller()
    clipped.update(kl=50.0, n=10)  # the error is clipped to +0.2 however far the KL is
    assert clipped.value == pytest.approx(0.1 * 1.02)


def test_a_fixed_beta_never_moves_and_state_round_trips() -> None:
    """adaptive_kl=false keeps beta; state_dict/load_state_dict carry the adapted value."""
    fixed = _controller(adaptive=False)
    fixed.update(kl=5.0, n=10)
    assert fixed.value == 0.1
    moved = _controller()
    moved.update(kl=0.6, n=10)
    fresh = _controller()
    fresh.load_state_dict(moved.state_dict())
    assert fresh.value == moved.value
