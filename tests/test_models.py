"""The built-in model and tokenizer, loading a local HF model, and the shared sampler."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from alignbench.batch import collate, encode_responses
from alignbench.config import ModelConfig
from alignbench.models import (
    build_model,
    build_tokenizer,
    count_parameters,
    load_pretrained,
    response_logprobs,
    save_pretrained,
)
from alignbench.sampling import SamplingParams, sample

WORDS = [
    "what",
    "is",
    "the",
    "colour",
    "of",
    "zorbia",
    "kemi",
    "?",
    "red",
    "blue",
    "green",
    "i",
    "do",
    "not",
    "know",
]


@pytest.fixture(scope="module")
def tiny() -> tuple:
    """A small random Llama and the word tokenizer."""
    tokenizer = build_tokenizer(WORDS)
    torch.manual_seed(0)
    cfg = ModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2)
    return build_model(cfg, tokenizer).eval(), tokenizer


PROMPTS = [{"prompt": "what is the colour of zorbia ?"}, {"prompt": "kemi ?"}]


def test_tokenizer_round_trip(tmp_path: Path, tiny) -> None:
    """The word tokenizer has distinct pad and eos, and survives save/load."""
    model, tokenizer = tiny
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    ids = tokenizer.encode("what is the colour of zorbia ?", add_special_tokens=False)
    assert tokenizer.decode(ids) == "what is the colour of zorbia ?"
    save_pretrained(model, tokenizer, tmp_path)
    loaded_model, loaded_tok = load_pretrained(tmp_path)
    assert loaded_tok.encode("red blue", add_special_tokens=False) == tokenizer.encode(
        "red blue", add_special_tokens=False
    )
    x = torch.tensor([ids])
    torch.testing.assert_close(loaded_model(input_ids=x).logits, model(input_ids=x).logits)


def test_default_model_size() -> None:
    """The default built-in model has about 1 M parameters with a facts-sized vocabulary."""
    tokenizer = build_tokenizer([f"w{i}" for i in range(300)])
    n = count_parameters(build_model(ModelConfig(), tokenizer))
    assert 0.5e6 < n < 3e6


def test_dropout_free_forward_is_deterministic(tiny) -> None:
    """Two forward passes give identical log-probabilities (no dropout anywhere)."""
    model, tokenizer = tiny
    batch = sample(model, tokenizer, PROMPTS, 2, SamplingParams(max_new_tokens=5))
    model.train()  # even in train mode: every dropout probability is 0
    a = response_logprobs(model, batch.input_ids, batch.attention_mask, batch.prompt_length)
    b = response_logprobs(model, batch.input_ids, batch.attention_mask, batch.prompt_length)
    model.eval()
    assert torch.equal(a, b)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logprobs_match_training_forward(tiny, temperature: float) -> None:
    """The sampler's log-probs equal a training forward's (logits / temperature) to 1e-5."""
    model, tokenizer = tiny
    params = SamplingParams(max_new_tokens=6, temperature=temperature)
    g = torch.Generator().manual_seed(0)
    batch = sample(model, tokenizer, PROMPTS, 3, params, g)
    recomputed = response_logprobs(
        model, batch.input_ids, batch.attention_mask, batch.prompt_length, temperature
    )
    mask = batch.response_mask.bool()
    gap = (recomputed - batch.logprobs)[mask].abs().max()
    assert gap < 1e-5
    assert (batch.logprobs[~mask] == 0).all()


def test_sampler_is_deterministic_under_a_seed(tiny) -> None:
    """Same generator seed, same samples; another seed, other samples."""
    model, tokenizer = tiny
    params = SamplingParams(max_new_tokens=6)
    runs = [
        sample(model, tokenizer, PROMPTS, 4, params, torch.Generator().manual_seed(s)).input_ids
        for s in (1, 1, 2)
    ]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_sampler_stops_at_eos_and_keeps_it_in_the_mask(tiny) -> None:
    """A response ends at its eos, which is inside the response mask; padding follows."""
    model, tokenizer = tiny
    eos = tokenizer.eos_token_id
    with torch.no_grad():  # make eos the likeliest token from the start
        model.lm_head.weight[eos] += 5.0 * model.lm_head.weight.norm(dim=1).max()
    try:
        batch = sample(model, tokenizer, PROMPTS, 2, SamplingParams(max_new_tokens=6, greedy=True))
    finally:
        with torch.no_grad():
            model.lm_head.weight[eos] -= 5.0 * model.lm_head.weight.norm(dim=1).max()
    assert batch.response_ids.shape[1] == 1  # everyone finished at once: no wasted steps
    assert (batch.response_ids[:, 0] == eos).all()
    assert (batch.response_mask[:, 0] == 1).all()
    assert batch.responses == ["", "", "", ""]


def test_top_k_one_equals_greedy(tiny) -> None:
    """Sampling with top_k=1 is greedy decoding; top_p tiny too."""
    model, tokenizer = tiny
    greedy = sample(model, tokenizer, PROMPTS, 1, SamplingParams(max_new_tokens=5, greedy=True))
    for params in (
        SamplingParams(max_new_tokens=5, top_k=1),
        SamplingParams(max_new_tokens=5, top_p=1e-6),
    ):
        other = sample(model, tokenizer, PROMPTS, 1, params, torch.Generator().manual_seed(3))
        assert torch.equal(greedy.input_ids, other.input_ids)


def test_collate_layout_matches_sampler(tiny) -> None:
    """collate() lays out given responses exactly as the sampler lays out generated ones."""
    model, tokenizer = tiny
    batch = sample(model, tokenizer, PROMPTS, 1, SamplingParams(max_new_tokens=4))
    ids = [
        row[m.bool()].tolist()
        for row, m in zip(batch.response_ids, batch.response_mask, strict=True)
    ]
    again = collate(tokenizer, PROMPTS, ids, 1, ["policy", "policy"])
    width = again.input_ids.shape[1]
    assert torch.equal(again.input_ids, batch.input_ids[:, :width])
    assert torch.equal(again.response_mask, batch.response_mask[:, : width - again.prompt_length])
    demo = collate(
        tokenizer, PROMPTS, encode_responses(tokenizer, ["red", "i do not know"]), 1, ["d", "d"]
    )
    assert demo.responses == ["red", "i do not know"]
    assert demo.response_mask.sum(1).tolist() == [2, 5]  # eos included


def test_pretrained_model_from_a_local_folder(tmp_path: Path, tiny_job) -> None:
    """`model.name_or_path=<folder>` runs the whole pipeline from a saved HF model, offline."""
    from alignbench_plugins.facts import FactsConfig, FactsTask

    words = FactsTask(FactsConfig(name="facts", num_entities=40)).vocabulary()
    tokenizer = build_tokenizer(words)
    cfg = ModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2)
    save_pretrained(build_model(cfg, tokenizer), tokenizer, tmp_path / "hf_model")
    summary = tiny_job(f"model.name_or_path={tmp_path / 'hf_model'}", "algo=sft")
    assert summary["status"] == "finished"
    assert summary["stage/sft"]["parameters"] == count_parameters(build_model(cfg, tokenizer))


def test_missing_model_path_is_one_line(tiny_job, tmp_path: Path) -> None:
    """A model path that does not exist is a ConfigError naming the key."""
    from alignbench import ConfigError

    with pytest.raises(ConfigError, match="model.name_or_path") as info:
        tiny_job(f"model.name_or_path={tmp_path / 'nope'}")
    assert "\n" not in str(info.value)
