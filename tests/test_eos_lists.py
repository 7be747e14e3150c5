"""Every end id of a chat model (``alignbench.eos_ids``) ends a response outside the sampler
too: stage 2's beams stop there, and a reward model read through another tokenizer sees such a
response as finished."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from alignbench.models import build_tokenizer
from alignbench.rm.groups import beam_responses
from alignbench.rm.model import reward_texts
from tests.test_sampling_eos import PROMPTS, _favour, load_again, two_eos  # noqa: F401


def test_beams_stop_at_every_listed_eos(two_eos) -> None:  # noqa: F811
    """A model that always says ``end`` (its second listed eos): each beam is that one word, not
    ``end end ...`` up to the token limit (generate's eos list was the tokenizer's alone)."""
    model, tokenizer, end = two_eos
    favoured = _favour(load_again(model), end)
    beams = beam_responses(favoured, tokenizer, PROMPTS, 2, max_new_tokens=6)
    assert [b[0] for b in beams] == ["end"] * len(PROMPTS)


def test_a_response_that_ended_at_a_listed_eos_is_finished_for_the_reward_model(
    two_eos,  # noqa: F811
) -> None:
    """Written again in a reward model's tokenizer without a chat template, a response ending
    at the second listed id gets the reward model's eos when that id is among the stops, and
    none when only the tokenizer's eos counts (a cut-off answer)."""
    _, tokenizer, end = two_eos
    reward_tokenizer = build_tokenizer("a b c d e f g h i j k l m n o p end".split())
    reward_tokenizer.chat_template = None
    response = [tokenizer.convert_tokens_to_ids("a"), end]
    batch: Any = SimpleNamespace(
        rows=[{"prompt": "a b c"}], token_lists=lambda: [(response, [], [])]
    )
    stops = (tokenizer.eos_token_id, end)
    finished = reward_texts(batch, tokenizer, reward_tokenizer, stops)[0]
    cut = reward_texts(batch, tokenizer, reward_tokenizer)[0]
    assert finished[-1] == reward_tokenizer.eos_token_id
    assert finished[:-1] == cut and cut[-1] != reward_tokenizer.eos_token_id
