"""FLOP accounting checked against a hand count, per algorithm, on a tiny model.

The count: a forward pass costs 2 FLOPs per multiply-add parameter per token, the output layer
only on the positions it projects; a backward pass costs twice its forward. With N_body the
parameters of the transformer layers (no embedding, no output layer) and N_head the output layer:
forward(T tokens, L projected positions) = 2 * (N_body * T + N_head * L).
"""

from __future__ import annotations

import pytest
import torch

from alignbench import hookimpl
from alignbench.budget import FlopCounter
from alignbench.config import ModelConfig
from alignbench.models import build_model, build_tokenizer
from alignbench.registry import build_registry
from alignbench.run import Run
from alignbench.sampling import SamplingParams, sample
from tests.conftest import TINY, compose


def forward(n_body: int, n_head: int, tokens: int, positions: int) -> float:
    """Hand count of one forward pass."""
    return 2.0 * (n_body * tokens + n_head * positions)


def sizes(model: torch.nn.Module) -> tuple[int, int]:
    """(N_body, N_head) of a causal LM, counted by hand from its named parameters."""
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith("lm_head"))
    embed = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" in n)
    return sum(p.numel() for p in model.parameters()) - head - embed, head


def generation(n_body: int, n_head: int, n: int, prompt: int, new: int) -> float:
    """One prompt pass (logits of its last position only) then new-1 cached one-token passes."""
    return forward(n_body, n_head, n * prompt, n) + (new - 1) * forward(n_body, n_head, n, n)


def test_sampler_flops_match_the_hand_count() -> None:
    """Generating exactly R tokens for n sequences costs the hand-counted FLOPs."""
    tokenizer = build_tokenizer("a b c d e f g h".split())
    model = build_model(
        ModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2), tokenizer
    )
    counter = FlopCounter()
    counter.track(model, "policy")
    rows = [{"prompt": "a b c"}, {"prompt": "d e"}]
    batch = sample(
        model,
        tokenizer,
        rows,
        3,
        SamplingParams(max_new_tokens=5, min_new_tokens=5),
        torch.Generator().manual_seed(0),
    )
    assert batch.response_ids.shape == (6, 5) and batch.prompt_length == 3
    n_body, n_head = sizes(model)
    assert counter.total == pytest.approx(generation(n_body, n_head, 6, 3, 5), rel=1e-12)


class Recorder:
    """Records the batches an algorithm produces and the sampler calls it makes."""

    def __init__(self) -> None:
        self.updates: list = []
        self.rollouts: list = []

    @hookimpl(wrapper=True)
    def alignbench_rollout(self):
        batch = yield
        self.rollouts.append(batch)
        return batch

    @hookimpl(wrapper=True)
    def alignbench_update(self, batch):
        self.updates.append(batch)
        return (yield)


def _one_step(tmp_path, monkeypatch, *overrides: str) -> tuple[dict, Recorder, list, Run]:
    from alignbench.app import run_job

    samples, runs = [], []
    original = Run.sample

    def recording(self, model, prompts, num_samples, params, source="policy"):
        out = original(self, model, prompts, num_samples, params, source)
        samples.append((source, out.num_sequences, out.prompt_length, out.response_ids.shape[1]))
        runs.append(self)
        return out

    monkeypatch.setattr(Run, "sample", recording)
    registry = build_registry()
    recorder = Recorder()
    registry.pm.register(recorder, name="recorder")
    try:
        cfg = compose(
            [*TINY, f"cache_dir={tmp_path / 'cache'}", "budget.amount=1", *overrides], registry
        )
        summary = run_job(cfg, tmp_path / "out", registry=registry)
    finally:
        registry.pm.unregister(name="recorder")
    return summary, recorder, samples, runs


def _update_cost(n_body: int, n_head: int, batch) -> float:
    """Forward and backward of the policy over a batch (logits on response positions + 1)."""
    n, width = batch.input_ids.shape
    r = width - batch.prompt_length
    return 3 * forward(n_body, n_head, n * width, n * (r + 1))


def test_sft_flops(tmp_path, monkeypatch) -> None:
    """SFT: one forward+backward of the policy over the demonstrations, nothing sampled."""
    summary, rec, samples, _ = _one_step(tmp_path, monkeypatch, "algo=sft")
    from alignbench.models import load_pretrained

    n_body, n_head = sizes(
        load_pretrained(tmp_path / "cache" / "sft" / summary["stage/sft"]["key"])[0]
    )
    assert samples == []
    assert summary["budget/flops"] == pytest.approx(
        _update_cost(n_body, n_head, rec.updates[0]), rel=1e-12
    )


def test_rrhf_flops(tmp_path, monkeypatch) -> None:
    """RRHF: generation of the policy samples, then forward+backward over all K candidates."""
    summary, rec, samples, _ = _one_step(
        tmp_path, monkeypatch, "algo=rrhf", "algo.policy_samples=3"
    )
    from alignbench.models import load_pretrained

    n_body, n_head = sizes(
        load_pretrained(tmp_path / "cache" / "sft" / summary["stage/sft"]["key"])[0]
    )
    [(source, n, prompt, new)] = samples
    expected = generation(n_body, n_head, n, prompt, new) + _update_cost(
        n_body, n_head, rec.updates[0]
    )
    assert summary["budget/flops"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("epochs", "minibatches"), [(1, 2), (2, 2), (1, 1), (2, 1)])
def test_ppo_flops(tmp_path, monkeypatch, epochs: int, minibatches: int) -> None:
    """PPO: generation; reference and critic forwards; per epoch forward+backward of policy and
    critic over every sequence (the rule reward costs nothing).

    With one mini-batch the rollout runs no critic forward of its own: the update's first forward
    covers every sequence before any optimiser step, and its values are the rollout's values.
    """
    summary, rec, samples, _ = _one_step(
        tmp_path,
        monkeypatch,
        "algo=ppo",
        "algo.samples_per_prompt=2",
        f"algo.num_minibatches={minibatches}",
        f"algo.ppo_epochs={epochs}",
        "algo.ptx_coef=0",
    )
    from alignbench.models import load_pretrained

    policy = load_pretrained(tmp_path / "cache" / "sft" / summary["stage/sft"]["key"])[0]
    n_body, n_head = sizes(policy)
    critic_head = policy.config.hidden_size + 1  # the scalar head: weight and bias
    [(_, n, prompt, new)] = samples
    batch = rec.rollouts[0]
    width = batch.input_ids.shape[1]
    tokens, positions = n * width, n * (new + 1)
    expected = {
        "policy": generation(n_body, n_head, n, prompt, new)
        + epochs * 3 * forward(n_body, n_head, tokens, positions),
        "reference": forward(n_body, n_head, tokens, positions),
        "critic": (int(minibatches > 1) + 3 * epochs)
        * forward(n_body, critic_head, tokens, positions),
    }
    for model, flops in expected.items():
        assert summary["flops_by_model"][model] == pytest.approx(flops, rel=1e-12), model
    assert summary["budget/flops"] == pytest.approx(sum(expected.values()), rel=1e-12)


@pytest.mark.slow
def test_critic_from_reward_model_is_charged_once(tmp_path, monkeypatch) -> None:
    """A critic copied from the reward model is charged as the critic only (no double charge).

    The same step with the critic started from the SFT model runs the same passes, so every
    model's FLOPs must be equal; before the fix the copied critic's passes were also charged to
    ``reward_model``.
    """
    rm = ["reward=rm", "feedback.labels=12", "stage.rm.epochs=1", "feedback.k=2"]
    ppo = ["algo=ppo", "algo.samples_per_prompt=2", "algo.num_minibatches=1", "algo.ptx_coef=0"]
    runs = {}
    for init in ("sft", "reward_model"):
        summary, *_ = _one_step(
            tmp_path / init,
            monkeypatch,
            *rm,
            *ppo,
            f"algo.critic_init={init}",
            f"cache_dir={tmp_path / 'cache'}",
        )
        runs[init] = summary
    by_model = runs["reward_model"]["flops_by_model"]
    assert by_model == pytest.approx(runs["sft"]["flops_by_model"], rel=1e-12)
    assert set(by_model) == {"policy", "reference", "critic", "reward_model"}
    assert runs["reward_model"]["budget/flops"] == pytest.approx(sum(by_model.values()), rel=1e-12)
