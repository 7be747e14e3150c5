"""The sampler's stop ids (every id of ``generation_config.eos_token_id``) and its ``draw``s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from alignbench.config import ModelConfig
from alignbench.models import build_model, build_tokenizer, load_pretrained, save_pretrained
from alignbench.sampling import SamplingParams, _draw_inverse_cdf, eos_ids, generate, sample

WORDS = "a b c d e f g h i j k l m n o p end".split()
PROMPTS = [{"prompt": "a b c"}, {"prompt": "d"}, {"prompt": "e f g h"}]


@pytest.fixture(scope="module")
def two_eos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, int]:
    """A tiny Llama saved and loaded back whose generation_config ends at ``<eos>`` and at the
    word ``end`` (as Llama 3 lists ``<|end_of_text|>`` and ``<|eot_id|>``), and that id."""
    tokenizer = build_tokenizer(WORDS)
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4), tokenizer
    )
    end = tokenizer.convert_tokens_to_ids("end")
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, end]
    path: Path = tmp_path_factory.mktemp("two_eos")
    save_pretrained(model, tokenizer, path)
    loaded, tokenizer = load_pretrained(path)
    return loaded.eval(), tokenizer, end


def _favour(model: Any, token: int, bias: float = 100.0) -> Any:
    """``model`` with an output bias that makes ``token`` by far the likeliest next token."""
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[token] = bias
    model.lm_head = head
    return model


def test_stop_ids_are_the_tokenizer_eos_then_the_generation_config_list(two_eos) -> None:
    """The tokenizer's eos first, each listed id once; a single int or no config: just eos."""
    model, tokenizer, end = two_eos
    assert eos_ids(model, tokenizer) == [tokenizer.eos_token_id, end]
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    try:
        assert eos_ids(model, tokenizer) == [tokenizer.eos_token_id]
    finally:
        model.generation_config.eos_token_id = [tokenizer.eos_token_id, end]
    assert eos_ids(object(), tokenizer) == [tokenizer.eos_token_id]


@pytest.mark.parametrize("greedy", [True, False])
def test_sampling_stops_at_a_second_listed_eos(two_eos, greedy: bool) -> None:
    """A response ends at the listed id that is not the tokenizer's eos: that token is its
    last (kept, masked in), and the batch stops after it."""
    model, tokenizer, end = two_eos
    favoured = _favour(load_again(model), end)
    params = SamplingParams(max_new_tokens=6, greedy=greedy)
    batch = sample(favoured, tokenizer, PROMPTS, 2, params, torch.Generator().manual_seed(0))
    assert batch.response_ids.shape[1] == 1
    assert batch.response_ids[:, 0].eq(end).all()
    assert batch.response_mask.eq(1).all()
    # With the tokenizer's eos alone (the old behaviour), it runs to max_new_tokens.
    ids = [tokenizer.encode(r["prompt"], add_special_tokens=False) for r in PROMPTS]
    out = generate(favoured, ids, params, torch.Generator().manual_seed(0), 1, 0)
    assert out[2].shape[1] == 6


def test_min_new_tokens_bans_every_listed_eos(two_eos) -> None:
    """Before ``min_new_tokens`` no listed id is drawn; at it, the favoured one ends the batch."""
    model, tokenizer, end = two_eos
    favoured = _favour(load_again(model), end)
    params = SamplingParams(max_new_tokens=8, min_new_tokens=3)
    batch = sample(favoured, tokenizer, PROMPTS, 2, params, torch.Generator().manual_seed(0))
    stops = torch.tensor([tokenizer.eos_token_id, end])
    assert not torch.isin(batch.response_ids[:, :3], stops).any()
    assert batch.response_ids.shape[1] == 4 and batch.response_ids[:, 3].eq(end).all()
    assert batch.response_mask.eq(1).all()


def test_sequences_that_ended_are_padded_and_masked(two_eos) -> None:
    """Rows end at either id at different steps: after its stop a row is pad, mask 0, log-prob 0,
    and a row's mask covers exactly its tokens up to and including its first stop id."""
    model, tokenizer, end = two_eos
    stops = {tokenizer.eos_token_id, end}
    generator = torch.Generator().manual_seed(3)
    favoured = _favour(load_again(model), end, bias=2.5)
    with torch.no_grad():
        favoured.lm_head.bias[tokenizer.eos_token_id] = 2.5
    batch = sample(favoured, tokenizer, PROMPTS, 4, SamplingParams(max_new_tokens=10), generator)
    ended = 0
    for ids, mask, logp in zip(
        batch.response_ids, batch.response_mask, batch.logprobs, strict=True
    ):
        hits = [i for i, token in enumerate(ids.tolist()) if token in stops and mask[i]]
        length = hits[0] + 1 if hits else len(ids)
        assert mask.tolist() == [1] * length + [0] * (len(ids) - length)
        assert ids[length:].eq(tokenizer.pad_token_id).all() and logp[length:].eq(0).all()
        ended += bool(hits)
    assert ended >= 2  # the biases make both ids likely: the check above saw rows end


def load_again(model: Any) -> Any:
    """A copy of ``model`` (each test changes its own output layer)."""
    import copy

    return copy.deepcopy(model)


# -- draw="inverse_cdf" ---------------------------------------------------------------------------


def test_inverse_cdf_draws_the_distribution() -> None:
    """100 000 draws from a fixed distribution with zero-mass tokens: the frequencies within
    4 standard errors of the probabilities everywhere, and a zero-mass token never drawn."""
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([0.0, 0.5, 0.0, 0.2, 0.1, 0.15, 0.05, 0.0])
    tokens = torch.cat([_draw_inverse_cdf(probs.expand(1000, -1), g) for _ in range(100)])
    freq = torch.bincount(tokens, minlength=len(probs)).double() / len(tokens)
    stderr = (probs.double() * (1 - probs.double()) / len(tokens)).sqrt()
    assert (freq - probs.double()).abs().le(4 * stderr + 1e-12).all()
    assert freq[probs == 0].eq(0).all()


def test_inverse_cdf_never_draws_past_the_last_token_with_mass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A uniform draw at the top of [0, 1) still lands on a token with mass (float rounding of
    the total cannot carry it onto a zero-mass tail)."""
    top = torch.full((1, 1), 1.0 - 2**-53, dtype=torch.float64)
    monkeypatch.setattr(torch, "rand", lambda *args, **kwargs: top)
    probs = torch.tensor([[0.25, 0.75, 0.0, 0.0]])
    assert _draw_inverse_cdf(probs, None).tolist() == [1]


def test_inverse_cdf_sampling_is_seeded_and_consistent(two_eos) -> None:
    """``draw=inverse_cdf``: the same seed gives the same batch, its log-probs are those of the
    tokens it drew (the training forward's), and a bad name is refused."""
    from alignbench.models import response_logprobs

    model, tokenizer, _ = two_eos
    params = SamplingParams(max_new_tokens=6, draw="inverse_cdf")
    a = sample(model, tokenizer, PROMPTS, 2, params, torch.Generator().manual_seed(5))
    b = sample(model, tokenizer, PROMPTS, 2, params, torch.Generator().manual_seed(5))
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.logprobs, b.logprobs)
    recomputed = response_logprobs(model, a.input_ids, a.attention_mask, a.prompt_length)
    assert torch.allclose(recomputed * a.response_mask, a.logprobs, atol=1e-5)
    with pytest.raises(ValueError, match="draw='gumbel'"):
        sample(model, tokenizer, PROMPTS, 1, SamplingParams(draw="gumbel"))


def test_the_sampled_batch_trains(two_eos) -> None:
    """The sampler decodes under inference mode, but what it returns are ordinary tensors: a
    training forward on them runs its backward (an inference tensor would be refused)."""
    from alignbench.models import response_logprobs

    model, tokenizer, _ = two_eos
    batch = sample(model, tokenizer, PROMPTS, 2, SamplingParams(max_new_tokens=4))
    for tensor in (batch.input_ids, batch.attention_mask, batch.response_mask, batch.logprobs):
        assert not tensor.is_inference()
    logprobs = response_logprobs(model, batch.input_ids, batch.attention_mask, batch.prompt_length)
    ((logprobs - batch.logprobs) * batch.response_mask).sum().backward()
    assert model.lm_head.weight.grad is not None
    model.zero_grad(set_to_none=True)
