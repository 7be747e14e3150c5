"""The preference-optimisation math of ``alignbench.ops`` (DPO, IPO, cDPO), against hand values.

The running example: two pairs, beta = 0.5, sequence log-probabilities

    pair 1: policy chosen -1, rejected -3; reference chosen -2, rejected -2
            chosen log-ratio 1, rejected log-ratio -1, h = 2, beta * h = 1
    pair 2: policy chosen -2, rejected -1; reference chosen -2, rejected -2
            chosen log-ratio 0, rejected log-ratio 1, h = -1, beta * h = -0.5

and -log sigmoid(x) = log(1 + e^-x):
    -log sigmoid(1)    = log(1.3678794) = 0.3132617
    -log sigmoid(-1)   = log(3.7182818) = 1.3132617
    -log sigmoid(-0.5) = log(2.6487213) = 0.9740770
    -log sigmoid(0.5)  = log(1.6065307) = 0.4740770
"""

from __future__ import annotations

import pytest
import torch

from alignbench import ops


def _pairs() -> tuple[torch.Tensor, ...]:
    return (
        torch.tensor([-1.0, -2.0]),  # policy chosen
        torch.tensor([-3.0, -1.0]),  # policy rejected
        torch.tensor([-2.0, -2.0]),  # reference chosen
        torch.tensor([-2.0, -2.0]),  # reference rejected
    )


def test_sigmoid_loss_and_implicit_rewards() -> None:
    """DPO: mean of -log sigmoid(beta * h) = (0.3132617 + 0.9740770) / 2 = 0.6436693."""
    loss, chosen, rejected = ops.dpo_loss(*_pairs(), beta=0.5)
    assert loss.item() == pytest.approx(0.6436693, abs=1e-6)
    # implicit rewards beta * (pi - ref): chosen 0.5 * [1, 0], rejected 0.5 * [-1, 1]
    assert chosen.tolist() == pytest.approx([0.5, 0.0])
    assert rejected.tolist() == pytest.approx([-0.5, 0.5])
    assert not chosen.requires_grad


def test_sigmoid_gradient() -> None:
    """d loss / d pi_c = -beta * sigmoid(-beta * h) / B; pair 1: -0.5 * 0.2689414 / 2."""
    policy_chosen, policy_rejected, ref_chosen, ref_rejected = _pairs()
    policy_chosen.requires_grad_(True)
    loss, _, _ = ops.dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, 0.5)
    loss.backward()
    # pair 2: -0.5 * sigmoid(0.5) / 2 = -0.5 * 0.6224593 / 2 = -0.1556148
    assert policy_chosen.grad.tolist() == pytest.approx([-0.0672354, -0.1556148], abs=1e-6)


def test_conservative_loss() -> None:
    """cDPO, eps = 0.1: (1 - eps) * -log s(x) + eps * -log s(-x) = -log s(x) + eps * x.

    pair 1: 0.9 * 0.3132617 + 0.1 * 1.3132617 = 0.4132617 (= 0.3132617 + 0.1 * 1)
    pair 2: 0.9 * 0.9740770 + 0.1 * 0.4740770 = 0.9240770 (= 0.9740770 + 0.1 * -0.5)
    mean 0.6686693
    """
    loss, _, _ = ops.dpo_loss(*_pairs(), beta=0.5, loss_type="conservative", label_smoothing=0.1)
    assert loss.item() == pytest.approx(0.6686693, abs=1e-6)
    plain, _, _ = ops.dpo_loss(*_pairs(), beta=0.5, loss_type="conservative")
    assert plain.item() == pytest.approx(0.6436693, abs=1e-6)  # eps = 0 is DPO itself


def test_ipo_loss() -> None:
    """IPO, tau = beta = 0.5: (h - 1 / (2 * 0.5))^2 = (2 - 1)^2 = 1 and (-1 - 1)^2 = 4; mean 2.5."""
    loss, _, _ = ops.dpo_loss(*_pairs(), beta=0.5, loss_type="ipo")
    assert loss.item() == pytest.approx(2.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss_type": "hinge"}, "unknown loss_type"),
        ({"loss_type": "sigmoid", "label_smoothing": 0.1}, "conservative"),
        ({"loss_type": "ipo", "label_smoothing": 0.1}, "conservative"),
        ({"loss_type": "conservative", "label_smoothing": 0.5}, r"\[0, 0.5\)"),
        ({"beta": 0.0}, "positive"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ops.dpo_loss(*_pairs(), **{"beta": 0.5, **kwargs})


def test_preference_pairs_are_the_reward_models_pairs() -> None:
    """Group 0 ranks response 0 > 2 > 1: pairs (0, 1), (0, 2), (2, 1). Group 1 ties 0 and 1 and
    lacks 2: no pair. Group 2 lacks 1: the pair (0, 2) only."""
    nan = float("nan")
    preference = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, nan], [3.0, nan, 1.0]])
    pairs = ops.preference_pairs(preference)
    assert pairs.tolist() == [[0, 0, 1], [0, 0, 2], [0, 2, 1], [2, 0, 2]]
    # The reward model's loss is the mean of -log sigmoid(r_i - r_j) over exactly these pairs.
    scores = torch.tensor([[0.3, -0.2, 1.1], [0.0, 0.5, 0.2], [-1.0, 2.0, 0.4]])
    b, i, j = pairs.unbind(1)
    by_pairs = -torch.nn.functional.logsigmoid(scores[b, i] - scores[b, j]).mean()
    assert by_pairs.item() == pytest.approx(ops.ranking_rm_loss(scores, preference).item())


def test_best_worst_pairs() -> None:
    """Best and worst of each group; an all-tied group is undecided; NaN is never picked."""
    nan = float("nan")
    rewards = torch.tensor([[1.0, 3.0, 2.0], [5.0, 5.0, 5.0], [nan, 2.0, 1.0]])
    chosen, rejected, decided = ops.best_worst_pairs(rewards, torch.Generator().manual_seed(0))
    assert chosen[[0, 2]].tolist() == [1, 1]
    assert rejected[[0, 2]].tolist() == [0, 2]
    assert decided.tolist() == [True, False, True]


def test_best_worst_ties_are_broken_at_random() -> None:
    """Responses 1 and 2 tie for best, 0 and 1 for worst: each is picked sometimes, never by
    position."""
    rewards = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    generator = torch.Generator().manual_seed(0)
    best, worst = set(), set()
    for _ in range(50):
        chosen, rejected, decided = ops.best_worst_pairs(rewards, generator)
        best.add(chosen[0].item())
        worst.add(rejected[1].item())
        assert decided.all()
    assert best == {1, 2} and worst == {0, 1}
