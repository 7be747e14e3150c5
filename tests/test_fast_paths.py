"""The fast paths change speed, not results.

* The sampler's static-cache decoder gives exactly what the plain Hugging Face decode loop gave
  (the loop ``alignbench.sampling`` ran before, kept here as the oracle): same tokens, same
  log-probabilities, same generator state afterwards.
* PPO gives the step metrics pinned in ``tests/pins/ppo_tiny.json``, recorded by the code before
  its forward passes were reused (``python tests/pins/make_ppo_pins.py``). On the machine that
  recorded them the new code reproduces them bit for bit; the test allows relative 1e-4
  (absolute 1e-6) because the pins are float32 results of one CPU's kernels: reusing the first
  mini-batch's critic forward for the rollout's values runs the same rows in a shuffled order,
  and another CPU's matrix kernels need not round identically when rows are permuted (1e-7
  relative, grown through two steps of AdamW; far below anything a metric reports). A CPU whose
  kernels round differently already in stage 1 can drift further: there, record the pins again
  with the script on commit 138ea6a (the code before the change) and compare.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaForCausalLM

from alignbench.batch import Batch, decode_responses, encode_prompts, pad_prompts
from alignbench.budget import FlopCounter
from alignbench.config import ModelConfig
from alignbench.decoding import StaticCacheDecoder
from alignbench.models import build_model, build_tokenizer, position_ids
from alignbench.sampling import SamplingParams, _filter_logits, sample
from tests.conftest import TINY, compose

PINS = Path(__file__).parent / "pins" / "ppo_tiny.json"

#: Tiny PPO runs whose step metrics are pinned: the default recipe (PPO-ptx, 2 epochs of 4
#: mini-batches), one epoch of one mini-batch (where the rollout's critic forward is reused), and
#: the shared critic.
PPO_RUNS: dict[str, list[str]] = {
    "default": [],
    "one_epoch": ["algo.ppo_epochs=1", "algo.num_minibatches=1"],
    "shared_one_epoch": ["algo.critic=shared", "algo.ppo_epochs=1", "algo.num_minibatches=1"],
    "plain_separate": ["algo.ptx_coef=0", "algo.ppo_epochs=1", "algo.num_minibatches=1"],
}
#: Step metrics that are not results: wall-clock time and the budget's own counters (FLOPs are
#: checked against hand counts in tests/test_flops.py).
UNPINNED = ("budget/", "flops/", "time/", "throughput/")


def run_ppo(tmp: Path, cache: Path, name: str, overrides: list[str]) -> list[dict[str, Any]]:
    """The step records of a 2-step tiny PPO job (one thread, so rounding is the same each run)."""
    return run_algo(tmp, cache, name, ["algo=ppo", *overrides])


def run_algo(tmp: Path, cache: Path, name: str, overrides: list[str]) -> list[dict[str, Any]]:
    """The step records of a 2-step tiny job of ``overrides``' algorithm (one thread)."""
    from alignbench.app import run_job

    cfg = compose([*TINY, f"cache_dir={cache}", "threads=1", "stage.sft.epochs=15", *overrides])
    run_job(cfg, tmp / name)
    lines = [json.loads(x) for x in (tmp / name / "metrics.jsonl").read_text().splitlines()]
    return [
        {k: v for k, v in x.items() if isinstance(v, float) and not k.startswith(UNPINNED)}
        for x in lines
        if x["kind"] == "step"
    ]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PPO_RUNS))
def test_ppo_metrics_are_pinned(tmp_path: Path, cache_dir: Path, name: str) -> None:
    """Every step metric of a tiny PPO run equals the pinned value within 1e-4 relative."""
    pinned = json.loads(PINS.read_text())[name]
    steps = run_ppo(tmp_path, cache_dir, name, PPO_RUNS[name])
    assert len(steps) == len(pinned)
    for step, expected in zip(steps, pinned, strict=True):
        assert set(step) == set(expected)
        for key, value in expected.items():
            assert math.isclose(step[key], value, rel_tol=1e-4, abs_tol=1e-6), (key, step[key])


# -- the sampler ----------------------------------------------------------------------------------


@torch.no_grad()
def oracle_sample(
    model: Any,
    tokenizer: Any,
    prompts: list[dict[str, Any]],
    num_samples: int,
    params: SamplingParams,
    generator: torch.Generator | None,
) -> Batch:
    """The decode loop the sampler ran before its fast path: every step through ``model(...)``."""
    model.eval()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompt_ids = encode_prompts(tokenizer, [row["prompt"] for row in prompts])
    ids, mask = pad_prompts([p for p in prompt_ids for _ in range(num_samples)], pad)
    n, prompt_mask = ids.shape[0], mask
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=position_ids(mask),
        use_cache=True,
        logits_to_keep=1,
    )
    cache, logits = out.cache, out.logits[:, -1].float()
    next_position = position_ids(mask)[:, -1:] + 1
    tokens, logprobs, response_mask = [], [], []
    finished = torch.zeros(n, dtype=torch.bool)
    for t in range(params.max_new_tokens):
        if t < params.min_new_tokens:
            logits = logits.clone()
            logits[:, eos] = float("-inf")
        if params.greedy:
            token = logits.argmax(-1)
            logp = torch.log_softmax(logits, -1).gather(-1, token[:, None])[:, 0]
        else:
            scaled = logits / params.temperature
            filtered = _filter_logits(scaled, params.top_k, params.top_p)
            token = torch.multinomial(torch.softmax(filtered, -1), 1, generator=generator)[:, 0]
            logp = torch.log_softmax(scaled, -1).gather(-1, token[:, None])[:, 0]
        token = torch.where(finished, torch.full_like(token, pad), token)
        response_mask.append((~finished).long())
        logprobs.append(torch.where(finished, torch.zeros_like(logp), logp))
        tokens.append(token)
        finished = finished | (token == eos)
        if bool(finished.all()) or t == params.max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones(n, 1, dtype=torch.long)], dim=1)
        out = model(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=next_position,
            cache=cache,
            use_cache=True,
        )
        cache, logits = out.cache, out.logits[:, -1].float()
        next_position = next_position + 1
    r_ids, r_mask = torch.stack(tokens, 1), torch.stack(response_mask, 1)
    return Batch(
        prompts=list(prompts),
        group_size=num_samples,
        input_ids=torch.cat([ids, r_ids], dim=1),
        attention_mask=torch.cat([prompt_mask, r_mask], dim=1),
        prompt_length=ids.shape[1],
        response_mask=r_mask,
        responses=decode_responses(tokenizer, r_ids, r_mask),
        sources=["policy"] * n,
        logprobs=torch.stack(logprobs, 1),
    )


WORDS = "a b c d e f g h i j k l m n o p".split()
#: Prompts of different lengths (left padding) and of one length (no padding at all).
PROMPT_SETS = {
    "ragged": [{"prompt": "a b c"}, {"prompt": "d"}, {"prompt": "e f g h i j"}],
    "even": [{"prompt": "a b c"}, {"prompt": "d e f"}],
}
SETTINGS = {
    "greedy": SamplingParams(max_new_tokens=12, greedy=True),
    "sampled": SamplingParams(max_new_tokens=12),
    "fixed_length": SamplingParams(max_new_tokens=9, min_new_tokens=9),
    "temperature_top_k": SamplingParams(max_new_tokens=10, temperature=0.7, top_k=5),
    "top_p": SamplingParams(max_new_tokens=10, top_p=0.8),
    "one_token": SamplingParams(max_new_tokens=1),
}


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    """Tiny Llamas: multi-head, grouped-query attention, and an untied head with biases."""
    tokenizer = build_tokenizer(WORDS)
    torch.manual_seed(0)
    out = {"tokenizer": tokenizer}
    out["mha"] = build_model(
        ModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4), tokenizer
    ).eval()
    config = copy.deepcopy(out["mha"].config)
    config.num_key_value_heads = 2
    config.attention_bias = True
    config.mlp_bias = True
    out["gqa_bias"] = LlamaForCausalLM(config).eval()
    # Eager attention: not the static-cache decoder's case, so decoded through model(...).
    out["eager"] = copy.deepcopy(out["mha"])
    out["eager"].set_attn_implementation("eager")
    return out


def test_the_static_cache_decoder_is_taken_only_where_it_is_exact(models) -> None:
    """Plain Llamas take the fast path; eager attention or a hook inside falls back to model()."""
    assert StaticCacheDecoder.supports(models["mha"])
    assert StaticCacheDecoder.supports(models["gqa_bias"])
    assert not StaticCacheDecoder.supports(models["eager"])
    hooked = copy.deepcopy(models["mha"])
    hooked.model.layers[0].mlp.register_forward_hook(lambda *args: None)
    assert not StaticCacheDecoder.supports(hooked)


def test_hidden_state_capturing_hooks_leave_the_fast_paths_on(models) -> None:
    """A forward with ``output_hidden_states=True`` (PPO's shared critic) leaves Hugging Face's
    output-capturing hooks on every layer for good; they do nothing outside such a forward, so
    the static-cache decoder and the lean forward stay on, and the sampler's result equals the
    plain loop's."""
    from alignbench import lean_forward

    model, tokenizer = copy.deepcopy(models["mha"]), models["tokenizer"]
    model(input_ids=torch.ones(2, 3, dtype=torch.long), output_hidden_states=True)
    assert any(layer._forward_hooks for layer in model.model.layers)  # installed
    assert StaticCacheDecoder.supports(model) and lean_forward.supports(model)
    rows, params = PROMPT_SETS["ragged"], SETTINGS["sampled"]
    fast = sample(model, tokenizer, rows, 2, params, torch.Generator().manual_seed(7))
    oracle = oracle_sample(model, tokenizer, rows, 2, params, torch.Generator().manual_seed(7))
    assert torch.equal(fast.input_ids, oracle.input_ids)
    assert torch.equal(fast.logprobs, oracle.logprobs)


@pytest.mark.parametrize("prompts", list(PROMPT_SETS))
@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("arch", ["mha", "gqa_bias", "eager"])
def test_sampler_equals_the_plain_decode_loop(models, prompts: str, setting: str, arch: str):
    """Same tokens, log-probs, masks and generator state as the loop through ``model(...)``."""
    model, tokenizer = models[arch], models["tokenizer"]
    rows, params = PROMPT_SETS[prompts], SETTINGS[setting]
    g_fast, g_oracle = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    fast = sample(model, tokenizer, rows, 3, params, g_fast)
    oracle = oracle_sample(model, tokenizer, rows, 3, params, g_oracle)
    assert torch.equal(fast.input_ids, oracle.input_ids)
    assert torch.equal(fast.attention_mask, oracle.attention_mask)
    assert torch.equal(fast.response_mask, oracle.response_mask)
    assert torch.equal(fast.logprobs, oracle.logprobs)
    assert fast.responses == oracle.responses
    assert torch.equal(g_fast.get_state(), g_oracle.get_state())


def test_sampler_stops_early_when_every_sequence_ended(models) -> None:
    """Once every sequence has produced eos, no further decode step runs (and none is charged)."""
    model, tokenizer = copy.deepcopy(models["mha"]), models["tokenizer"]
    # An output layer with a bias that makes eos the only likely token.
    head = torch.nn.Linear(model.config.hidden_size, len(tokenizer), bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[tokenizer.eos_token_id] = 100.0
    model.lm_head = head
    counter = FlopCounter()
    counter.track(model, "policy")
    batch = sample(model, tokenizer, PROMPT_SETS["ragged"], 2, SamplingParams(max_new_tokens=8))
    counter.close()
    assert batch.response_ids.shape[1] == 1
    one_pass = counter.total
    assert one_pass > 0 and counter.by_model == {"policy": one_pass}  # the prompt pass only
