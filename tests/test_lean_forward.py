"""The lean forward (``alignbench.lean_forward``, PPO's ``algo.lean_forward=true``) changes speed
and rounding, not results: the documented tolerance.

* Logits, log-probabilities, values and the shared critic's hidden states are within 1e-5
  (absolute) of the Hugging Face forward they replace, and so are the gradients of a loss through
  them (relative to each gradient tensor's largest entry, when above 1), for multi-head and
  grouped-query attention, biases, no padding and ragged padding.
* The FLOP counter charges a lean forward (and its backward) exactly as it charges the Hugging
  Face call with the same inputs and outputs, ``model(input_ids=ids[:, :-1], ...,
  logits_to_keep=R)``.
* On the CPU in float32, big enough products run through oneDNN (``lean_forward.linear``):
  its output and gradients are within rounding of ``torch.nn.functional.linear``'s, it falls
  back to that function exactly where it does not apply, and the model-level checks above run
  with both kernels (oneDNN forced onto every linear of the tiny models).
* Two steps of tiny PPO jobs (the pinned recipes of ``tests/test_fast_paths.py``) with
  ``algo.lean_forward=true algo.fused_adamw=true`` (the benchmark's fast rows) give every step
  metric within 1e-3 relative (1e-5 absolute) of the default's: float32 rounding (~1e-7 per
  operation) grown through sampling, two AdamW steps and whitened advantages.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaForCausalLM

from alignbench import lean_forward
from alignbench.budget import FlopCounter
from alignbench.config import ModelConfig
from alignbench.models import (
    ScalarHeadModel,
    build_model,
    build_tokenizer,
    position_ids,
    response_logits,
    response_logprobs,
    response_values,
)
from tests.test_fast_paths import PPO_RUNS, run_algo, run_ppo

WORDS = [f"w{i}" for i in range(40)]
#: The documented tolerance on logits, log-probabilities, values, hidden states and gradients.
ATOL = 1e-5
P, R = 5, 7


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    """Tiny Llamas (multi-head; grouped-query with biases) and critics on their trunks."""
    tokenizer = build_tokenizer(WORDS)
    torch.manual_seed(0)
    mha = build_model(
        ModelConfig(hidden_size=32, intermediate_size=64, num_layers=3, num_heads=4), tokenizer
    ).eval()
    config = copy.deepcopy(mha.config)
    config.num_key_value_heads = 2
    config.attention_bias = True
    config.mlp_bias = True
    gqa = LlamaForCausalLM(config).eval()
    out: dict[str, Any] = {"mha": mha, "gqa_bias": gqa}
    for name in ("mha", "gqa_bias"):
        critic = ScalarHeadModel(copy.deepcopy(out[name]))
        torch.nn.init.normal_(critic.head.weight, std=0.3)  # not the zero head: values move
        out[f"{name}_critic"] = critic
    return out


def inputs(padded: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``[4, P + R]`` ids and mask: left-padded prompts and right-padded responses if asked."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, len(WORDS) + 3, (4, P + R), generator=g)
    mask = torch.ones_like(ids)
    if padded:
        mask[0, :3] = 0
        mask[2, :1] = 0
        mask[1, P + 4 :] = 0
        mask[2, P + 1 :] = 0
        ids = ids * mask
    return ids, mask


def close(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor) -> float:
    """The largest gap between ``a`` and ``b`` at the response positions ``where`` ``[N, R]``."""
    gap = (a - b).detach().abs()
    while gap.dim() > 2:
        gap = gap.amax(-1)
    return float(gap[where.bool()].max())


def count_onednn(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the calls to oneDNN's linear (one entry per call); skip where PyTorch has none."""
    if lean_forward._ONEDNN is None:
        pytest.skip("this PyTorch build has no oneDNN linear (torch.ops.mkldnn._linear_pointwise)")
    calls: list[int] = []
    op = lean_forward._ONEDNN

    def counted(*args: Any) -> torch.Tensor:
        calls.append(1)
        return op(*args)

    monkeypatch.setattr(lean_forward, "_ONEDNN", counted)
    return calls


def count_lean_paths(
    monkeypatch: pytest.MonkeyPatch, *names: str
) -> tuple[dict[str, int], list[int] | None]:
    """Count the calls to the lean forward's ``names`` and to oneDNN (None without it), with
    oneDNN forced onto every linear (its size threshold lowered to 1 row)."""
    calls = dict.fromkeys(names, 0)
    for fn in names:
        original = getattr(lean_forward, fn)

        def counted(*args: Any, _fn: str = fn, _original: Any = original, **kwargs: Any) -> Any:
            calls[_fn] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(lean_forward, fn, counted)
    onednn = count_onednn(monkeypatch) if lean_forward._ONEDNN is not None else None
    monkeypatch.setattr(lean_forward, "ONEDNN_MIN_ROWS", 1)
    return calls, onednn


@pytest.fixture(params=["torch", "onednn"])
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The lean forward's linear kernel: BLAS through torch, or oneDNN on every linear (its
    size threshold lowered to 1 row, so the tiny test models take it); yields whether oneDNN
    ran, checked after the test's body."""
    monkeypatch.setattr(lean_forward, "CPU_KERNEL", request.param)
    calls = count_onednn(monkeypatch)
    if request.param == "onednn":
        monkeypatch.setattr(lean_forward, "ONEDNN_MIN_ROWS", 1)
    yield request.param
    assert bool(calls) == (request.param == "onednn"), f"{request.param}: oneDNN calls {calls}"


@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
def test_the_onednn_linear_is_torch_linear_within_rounding(
    bias: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Output and the three gradients of ``lean_forward.linear`` (a product big enough for
    oneDNN, a 3-D input, a non-contiguous one) within 1e-5 relative of
    ``torch.nn.functional.linear``'s; oneDNN ran in the forward and the backward; the same
    call twice gives the same bits; without gradients, the same output."""
    calls = count_onednn(monkeypatch)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 96, 40, generator=g).transpose(1, 2)  # [3, 40, 96], not contiguous
    w0 = torch.randn(80, 96, generator=g)
    b0 = torch.randn(80, generator=g) if bias else None
    upstream = torch.randn(3, 40, 80, generator=g)
    results = []
    for fn in (torch.nn.functional.linear, lean_forward.linear, lean_forward.linear):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        b = b0.clone().requires_grad_() if bias else None
        y = fn(x, w, b)
        y.backward(upstream)
        results.append([y, x.grad, w.grad, *([b.grad] if bias else [])])
    assert len(calls) == 3 * 2  # one forward and two gradient products per call, twice
    for ours, theirs in zip(results[1], results[0], strict=True):
        assert ours.shape == theirs.shape
        ours, theirs = ours.detach(), theirs.detach()
        gap = float((ours - theirs).abs().max()) / max(1.0, float(theirs.abs().max()))
        assert gap < 1e-5, gap
    assert all(torch.equal(a, b) for a, b in zip(results[1], results[2], strict=True))
    with torch.no_grad():
        assert torch.equal(lean_forward.linear(x0, w0, b0), results[1][0].detach())
    # A frozen input (only the weight trains: the input gradient is not computed) and an
    # upstream gradient that is a broadcast (stride 0), as a sum's backward gives.
    w = w0.clone().requires_grad_()
    lean_forward.linear(x0, w, b0).sum().backward()
    expected = upstream.new_ones(()).expand(3, 40, 80).reshape(-1, 80).t() @ x0.reshape(-1, 96)
    assert float((w.grad - expected).abs().max()) / float(expected.abs().max()) < 1e-5
    # An input changed in place after the forward: autograd's own error, naming the change.
    x = x0.clone().requires_grad_()
    y = x * 1.0
    z = lean_forward.linear(y, w0)
    y.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        z.sum().backward()


def test_the_linear_falls_back_to_torch_where_onednn_does_not_apply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fewer rows or outputs than ``ONEDNN_MIN_ROWS``, float64, ``CPU_KERNEL="torch"``,
    autocast, oneDNN switched off in torch, or a build without the op: exactly
    ``torch.nn.functional.linear``, oneDNN never called."""
    calls = count_onednn(monkeypatch)
    g = torch.Generator().manual_seed(1)
    big = (torch.randn(80, 96, generator=g), torch.randn(80, 96, generator=g))
    cases = [
        (torch.randn(2, 31, 96, generator=g), big[1]),  # 62 rows
        (big[0], torch.randn(8, 96, generator=g)),  # 8 outputs (a value head: 1)
        (big[0].double(), big[1].double()),
    ]
    for x, w in cases:
        assert torch.equal(lean_forward.linear(x, w), torch.nn.functional.linear(x, w))
    assert calls == []
    monkeypatch.setattr(lean_forward, "CPU_KERNEL", "torch")
    assert torch.equal(lean_forward.linear(*big), torch.nn.functional.linear(*big))
    monkeypatch.setattr(lean_forward, "CPU_KERNEL", "onednn")
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's own dtype and kernels
        out = lean_forward.linear(*big)
        assert out.dtype == torch.bfloat16
        assert torch.equal(out, torch.nn.functional.linear(*big))
    torch.backends.mkldnn.set_flags(False)
    try:
        assert torch.equal(lean_forward.linear(*big), torch.nn.functional.linear(*big))
    finally:
        torch.backends.mkldnn.set_flags(True)
    assert calls == []
    assert len(lean_forward.linear(*big)) == 80 and len(calls) == 1  # and on again after it
    monkeypatch.setattr(lean_forward, "_ONEDNN", None)
    assert torch.equal(lean_forward.linear(*big), torch.nn.functional.linear(*big))


@pytest.mark.parametrize("padded", [False, True], ids=["even", "padded"])
@pytest.mark.parametrize("arch", ["mha", "gqa_bias"])
def test_outputs_and_gradients_match_the_hugging_face_forward(models, arch, padded, kernel) -> None:
    """Logits, log-probs, values and their gradients are within ATOL of ``model(...)``'s."""
    policy, critic = models[arch], models[f"{arch}_critic"]
    assert lean_forward.supports(policy) and lean_forward.supports(critic)
    ids, mask = inputs(padded)
    real = mask[:, P:]
    results = {}
    for lean in (False, True):
        policy.zero_grad(set_to_none=True)
        critic.zero_grad(set_to_none=True)
        logits = response_logits(policy, ids, mask, P, lean)
        logprobs = response_logprobs(policy, ids, mask, P, 0.7, lean)
        values = response_values(critic, ids, mask, P, lean)
        loss = ((logprobs + values**2) * real).sum()
        loss.backward()
        grads = [p.grad.clone() for p in (*policy.parameters(), *critic.parameters())]
        results[lean] = (logits, logprobs, values, grads)
    (logits, logprobs, values, grads), lean = results[False], results[True]
    assert close(logits, lean[0], real) < ATOL
    assert close(logprobs, lean[1], real) < ATOL
    assert close(values, lean[2], real) < ATOL
    worst = 0.0
    for plain, fast in zip(grads, lean[3], strict=True):
        scale = max(1.0, float(plain.abs().max()))
        worst = max(worst, float((plain - fast).abs().max()) / scale)
    print(f"largest gradient gap, relative to its tensor's largest entry: {worst:.1e}")
    assert worst < ATOL


@pytest.mark.parametrize("padded", [False, True], ids=["even", "padded"])
def test_hidden_states_match_the_shared_critics_forward(models, padded, kernel) -> None:
    """``with_hidden``: the final hidden states PPO's shared value head reads, within ATOL."""
    policy = models["mha"]
    ids, mask = inputs(padded)
    out = policy(
        input_ids=ids,
        attention_mask=mask,
        position_ids=position_ids(mask),
        logits_to_keep=R + 1,
        output_hidden_states=True,
        use_cache=False,
    )
    hidden = out.hidden_states[-1][:, -(R + 1) : -1]
    logits, lean_hidden = lean_forward.lean_logits(policy, ids, mask, P, with_hidden=True)
    assert close(out.logits[:, :-1], logits, mask[:, P:]) < ATOL
    assert close(hidden, lean_hidden, mask[:, P:]) < ATOL


def test_models_it_cannot_run_take_the_ordinary_forward(models) -> None:
    """Eager attention, a hook inside, gradient checkpointing in training, LoRA adapters: not
    supported."""
    eager = copy.deepcopy(models["mha"])
    eager.set_attn_implementation("eager")
    assert not lean_forward.supports(eager)
    hooked = copy.deepcopy(models["mha"])
    hooked.model.layers[0].mlp.register_forward_hook(lambda *args: None)
    assert not lean_forward.supports(hooked)
    checkpointed = copy.deepcopy(models["mha"])
    checkpointed.activation_checkpointing_enable()
    assert not lean_forward.supports(checkpointed.train())
    # LoRA adapters injected into a critic's trunk (model.lora.targets=[critic]).
    peft = pytest.importorskip("peft")
    adapted = copy.deepcopy(models["mha_critic"])
    config = peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"])
    peft.inject_adapter_in_model(config, adapted.trunk)
    assert lean_forward.supports(models["mha_critic"]) and not lean_forward.supports(adapted)
    # Unsupported: lean=True gives exactly the ordinary forward.
    ids, mask = inputs(True)
    plain = response_logits(eager, ids, mask, P)
    assert torch.equal(response_logits(eager, ids, mask, P, lean=True), plain)
    # No response tokens: nothing to keep, the ordinary forward (an empty [N, 0, V]).
    empty = response_logits(models["mha"], ids, mask, P + R, lean=True)
    assert empty.shape == (4, 0, models["mha"].config.vocab_size)


def test_flops_are_charged_as_the_forward_with_the_same_inputs_and_outputs(models) -> None:
    """Forward and backward charges equal those of the equivalent Hugging Face calls."""
    ids, mask = inputs(True)
    charged = {}
    for lean in (False, True):
        policy, critic = copy.deepcopy(models["mha"]), copy.deepcopy(models["mha_critic"])
        counter = FlopCounter()
        counter.track(policy, "policy")
        counter.track(critic, "critic")
        if lean:
            logits = lean_forward.lean_logits(policy, ids, mask, P)
            values = lean_forward.lean_values(critic, ids, mask, P)
        else:  # what the lean forward stands for: the final token not fed, R positions kept
            short, short_mask = ids[:, :-1], mask[:, :-1]
            logits = policy(
                input_ids=short,
                attention_mask=short_mask,
                position_ids=position_ids(short_mask),
                logits_to_keep=R,
            ).logits
            values = critic(short, short_mask, positions_to_keep=R)
        assert logits.shape == (4, R, policy.config.vocab_size) and values.shape == (4, R)
        forward = dict(counter.by_model)
        (logits.logsumexp(-1).sum() + values.sum()).backward()
        charged[lean] = (forward, dict(counter.by_model))
        counter.close()
    assert charged[True] == charged[False]
    forward, total = charged[True]
    assert all(total[name] == 3 * forward[name] > 0 for name in forward)


#: The pinned PPO runs, and one with a reward model (reward.lean_forward reads it lean too).
TOLERANCE_RUNS = {
    **PPO_RUNS,
    "reward_model": ["reward=rm", "algo.ptx_coef=0", "algo.ppo_epochs=1", "algo.num_minibatches=1"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TOLERANCE_RUNS))
def test_ppo_steps_are_within_the_tolerance(
    tmp_path: Path, cache_dir: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every step metric of two tiny PPO steps with the lean forward and fused AdamW (and, with a
    reward model, ``reward.lean_forward``) is within 1e-3 relative (1e-5 absolute) of the
    default's, with the largest gap printed; the lean paths did run, their linears through
    oneDNN (forced onto the tiny models' every product) where PyTorch has it."""
    overrides = TOLERANCE_RUNS[name]
    fast = ["algo.lean_forward=true", "algo.fused_adamw=true"]
    if "reward=rm" in overrides:  # the reward model read at the last token alone, too
        fast.append("reward.lean_forward=true")
    plain = run_ppo(tmp_path, cache_dir, name, overrides)
    calls, onednn = count_lean_paths(monkeypatch, "prefill", "last_values", "lean_logits")
    lean = run_ppo(tmp_path, cache_dir, f"{name}_fast", [*overrides, *fast])
    # A lean switch that silently fell back to the ordinary forward would pass the tolerance.
    assert calls["prefill"] >= 2 and calls["lean_logits"] >= 2, calls
    assert (calls["last_values"] >= 2) == ("reward=rm" in overrides), calls
    assert onednn is None or onednn, "the lean forwards never called oneDNN"
    assert len(plain) == len(lean) == 2
    worst = (0.0, "")
    for step, (a, b) in enumerate(zip(plain, lean, strict=True)):
        assert set(a) == set(b)
        for key in a:
            gap = abs(a[key] - b[key]) / max(abs(a[key]), 1e-2)
            worst = max(worst, (gap, f"step {step} {key}: {a[key]} vs {b[key]}"))
            assert math.isclose(a[key], b[key], rel_tol=1e-3, abs_tol=1e-5), (key, a[key], b[key])
    print(f"largest relative gap {worst[0]:.2e} ({worst[1]})")


@pytest.mark.parametrize("padded", [False, True], ids=["even", "padded"])
@pytest.mark.parametrize("arch", ["mha", "gqa_bias"])
def test_a_reward_read_at_each_last_token_matches_the_hugging_face_forward(
    models, arch, padded, kernel
) -> None:
    """``last_values``: a scalar-head model's score at each sequence's last real token (rows
    ending at different positions when padded) within ATOL of ``model(...)`` read there, and
    charged as the call that feeds every token and projects one position per sequence."""
    from alignbench import ops

    reward_model = models[f"{arch}_critic"]
    ids, mask = inputs(padded)
    with torch.no_grad():
        expected = ops.gather_last(reward_model(ids, mask), mask)
        counter = FlopCounter()
        tracked = copy.deepcopy(reward_model)
        counter.track(tracked, "reward")
        scores = lean_forward.last_values(tracked, ids, mask)
        lean_charge = counter.total
        tracked(ids, mask, positions_to_keep=1)
        counter.close()
    assert scores.shape == (4,) and float((scores - expected).abs().max()) < ATOL
    assert lean_charge > 0 and counter.total == 2 * lean_charge


@pytest.mark.parametrize("arch", ["mha", "gqa_bias"])
def test_the_lean_prompt_pass_samples_as_the_hugging_face_one(
    models, arch, kernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``SamplingParams(lean_prefill=True)``: greedy decoding of ragged (left-padded) prompts
    gives the same tokens and log-probs within ATOL, and the same FLOPs, as the ordinary
    prompt pass; the decode steps after it are the static-cache decoder's."""
    from alignbench.sampling import SamplingParams, sample

    tokenizer = build_tokenizer(WORDS)
    prompts = [{"prompt": "w1 w2 w3"}, {"prompt": "w4"}, {"prompt": "w5 w6 w7 w8 w9 w10"}]
    calls, prefill = [], lean_forward.prefill
    monkeypatch.setattr(lean_forward, "prefill", lambda *args: calls.append(1) or prefill(*args))
    out, charged = {}, {}
    for lean in (False, True):
        model = copy.deepcopy(models[arch])
        counter = FlopCounter()
        counter.track(model, "policy")
        params = SamplingParams(max_new_tokens=6, greedy=True, lean_prefill=lean)
        out[lean] = sample(model, tokenizer, prompts, 2, params)
        charged[lean] = counter.total
        counter.close()
    assert torch.equal(out[True].input_ids, out[False].input_ids)
    assert torch.equal(out[True].response_mask, out[False].response_mask)
    assert float((out[True].logprobs - out[False].logprobs).abs().max()) < ATOL
    assert charged[True] == charged[False] > 0
    assert calls == [1]  # the lean pass ran, once


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["grpo", "rloo", "reinforce_pp"])
def test_group_algorithms_lean_forward_is_within_the_tolerance(
    tmp_path: Path, cache_dir: Path, algo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``algo.lean_forward=true`` for GRPO, RLOO and REINFORCE++ (the reference's and the
    policy's forwards and the prompt pass through the lean forward, oneDNN forced onto every
    linear): every step metric of two tiny steps within 1e-3 relative (1e-5 absolute) of the
    default's; the lean paths ran."""
    # reward=length varies within a group: with a reward that is equal across a group the
    # default's advantages are exactly 0 (no step at all) while rounding noise, scaled up by
    # advantage normalisation and AdamW, would take a full step: no tolerance holds there.
    overrides = [f"algo={algo}", "algo.prompts_per_step=4", "reward=length"]
    plain = run_algo(tmp_path, cache_dir, algo, overrides)
    calls, onednn = count_lean_paths(monkeypatch, "prefill", "lean_logits")
    lean = run_algo(tmp_path, cache_dir, f"{algo}_lean", [*overrides, "algo.lean_forward=true"])
    assert calls["prefill"] >= 2 and calls["lean_logits"] >= 4, calls  # reference and policy
    assert onednn is None or onednn, "the lean forwards never called oneDNN"
    assert len(plain) == len(lean) == 2
    for a, b in zip(plain, lean, strict=True):
        assert set(a) == set(b)
        for key in a:
            assert math.isclose(a[key], b[key], rel_tol=1e-3, abs_tol=1e-5), (key, a[key], b[key])
