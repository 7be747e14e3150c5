"""The core's conversations (issue 15): turn masks, chat encoding, the multi-turn sampler, GAE
across turns, reward placement at turn ends, and the up-front checks of what may run together.

A toy multi-turn task lives here so the core is tested without the built-in dialogue plugin.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from datasets import Dataset

import alignbench
from alignbench import ops
from alignbench.batch import Turns, demonstration_batch, encode_dialogue, encode_user_turn, join
from alignbench.config import ModelConfig, RewardConfig
from alignbench.models import build_model, build_tokenizer, response_logprobs
from alignbench.reward import Reward, turn_rewards
from alignbench.sampling import SamplingParams, converse, sample

WORDS = "say a b c d please now and then ok".split()


class EchoTask(alignbench.Task):
    """The user asks for a letter, then (at random) for another, up to ``max_turns`` replies."""

    multi_turn = True

    def __init__(self, max_turns: int = 3) -> None:
        self.config = type("C", (), {"max_turns": max_turns, "seed": 0, "name": "echo"})()

    def build_splits(self) -> dict[str, Dataset]:
        """Unused here."""
        return {}

    def vocabulary(self) -> list[str]:
        """The toy words."""
        return WORDS

    def user_reply(
        self, row: dict[str, Any], messages: list[dict[str, str]], rng: np.random.Generator
    ) -> str | None:
        """End with probability 1/4, else ask for a random letter."""
        if rng.random() < 0.25:
            return None
        return f"now say {rng.choice(list('abcd'))}"

    def judge(self, row: dict[str, Any], response: str) -> str:
        """Unused here."""
        return alignbench.WRONG


class TurnCount(Reward):
    """Reward t+1 on the t-th assistant turn (easy to check by hand)."""

    multi_turn = True

    def score_turns(self, rows, dialogues):  # type: ignore[no-untyped-def]
        """1, 2, 3, ... per assistant turn."""
        return [
            [float(t + 1) for t in range(sum(m["role"] == "assistant" for m in d))]
            for d in dialogues
        ]


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    """A random tiny Llama over the toy words with the built-in chat template."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer(WORDS, chat=True)
    cfg = ModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2)
    return build_model(cfg, tokenizer).eval(), tokenizer


def _dialogue(*turns: str) -> list[dict[str, str]]:
    roles = ["user", "assistant"]
    return [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]


def test_built_in_chat_template_has_role_tokens_and_single_turn_has_none() -> None:
    """Conversations get <user>/<assistant> tokens; a single-turn tokenizer stays as it was."""
    chat = build_tokenizer(WORDS, chat=True)
    plain = build_tokenizer(WORDS)
    assert chat.convert_ids_to_tokens(chat.encode("<user> say a <assistant>")) == [
        "<user>",
        "say",
        "a",
        "<assistant>",
    ]
    assert plain.chat_template is None and "<user>" not in plain.get_vocab()


def test_encode_dialogue_masks_user_turns_out() -> None:
    """Assistant replies (and their eos) are in the mask with their turn number; user turns are
    context: mask 0, turn -1, and end with the assistant's generation prompt."""
    tokenizer = build_tokenizer(WORDS, chat=True)
    ids, mask, index = encode_dialogue(tokenizer, _dialogue("say a", "a", "now say b please", "b"))
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens == [
        "a",
        "<eos>",
        "<user>",
        "now",
        "say",
        "b",
        "please",
        "<assistant>",
        "b",
        "<eos>",
    ]
    assert mask == [1, 1, 0, 0, 0, 0, 0, 0, 1, 1]
    assert index == [0, 0, -1, -1, -1, -1, -1, -1, 1, 1]


def test_user_turn_of_a_template_with_its_own_turn_markers() -> None:
    """A ChatML-style template (separators after the reply's end token) keeps its separators."""
    tokenizer = build_tokenizer([*WORDS, "<|im_start|>", "<|im_end|>", "user", "assistant"])
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> "
        "{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant{% endif %}"
    )
    tokens = tokenizer.convert_ids_to_tokens(encode_user_turn(tokenizer, "say b"))
    assert tokens == ["<|im_start|>", "user", "say", "b", "<|im_end|>", "<|im_start|>", "assistant"]


def test_demonstration_batch_trains_on_assistant_turns_only(tiny: tuple[Any, Any]) -> None:
    """A multi-turn demonstration's loss covers assistant tokens; changing a user word changes
    the context (the logits) but never adds a loss term."""
    _, tokenizer = tiny
    rows = [
        {"prompt": "say a", "response": "a", "messages": _dialogue("say a", "a", "now say b", "b")}
    ]
    batch = demonstration_batch(tokenizer, rows)
    assert batch.turns is not None
    attended = batch.attention_mask[:, batch.prompt_length :]
    user = (attended == 1) & (batch.response_mask == 0)
    assert int(user.sum()) == 5  # <user> now say b <assistant>
    assert torch.equal(batch.turns.index[user], torch.full((5,), -1))
    assert batch.num_response_tokens == 4  # a <eos> b <eos>


def test_converse_is_deterministic_per_seed_and_masks_user_tokens(tiny: tuple[Any, Any]) -> None:
    """Same generator seed: same dialogues; the sampler's log-probs are those a training forward
    recomputes at assistant tokens, and 0 at user tokens."""
    model, tokenizer = tiny
    task = EchoTask()
    rows = [{"prompt": "say a"}, {"prompt": "say c please"}]
    params = SamplingParams(max_new_tokens=4)
    first = converse(model, tokenizer, task, rows, 3, params, torch.Generator().manual_seed(1))
    again = converse(model, tokenizer, task, rows, 3, params, torch.Generator().manual_seed(1))
    other = converse(model, tokenizer, task, rows, 3, params, torch.Generator().manual_seed(2))
    assert first.turns.dialogues == again.turns.dialogues
    assert torch.equal(first.input_ids, again.input_ids)
    assert first.turns.dialogues != other.turns.dialogues
    assert first.turns.count.max() > 1  # some conversations went on
    recomputed = response_logprobs(
        model, first.input_ids, first.attention_mask, first.prompt_length
    )
    mask = first.response_mask.bool()
    assert torch.allclose(recomputed[mask], first.logprobs[mask], atol=1e-5)
    assert torch.all(first.logprobs[~mask] == 0)
    attended = first.attention_mask[:, first.prompt_length :].bool()
    assert bool((attended & ~mask).any())  # user tokens: attended, never in the mask
    for dialogue, count in zip(first.turns.dialogues, first.turns.count.tolist(), strict=True):
        assert sum(m["role"] == "assistant" for m in dialogue) == count
        assert dialogue[-1]["role"] == "assistant"


def test_single_turn_task_samples_exactly_as_before(tiny: tuple[Any, Any]) -> None:
    """A one-turn conversation has the tokens of ``sample`` (same generator, same prompts)."""
    model, tokenizer = tiny
    rows = [{"prompt": "say a"}, {"prompt": "say b"}]
    params = SamplingParams(max_new_tokens=4)
    single = sample(model, tokenizer, rows, 2, params, torch.Generator().manual_seed(3))
    one_turn = converse(
        model,
        tokenizer,
        EchoTask(max_turns=1),
        rows,
        2,
        params,
        torch.Generator().manual_seed(3),
        user_seeds=[0, 1, 2, 3],
    )
    assert torch.equal(
        single.response_ids, one_turn.response_ids[:, : single.response_ids.shape[1]]
    )
    assert torch.allclose(single.logprobs, one_turn.logprobs[:, : single.logprobs.shape[1]])


def test_turn_rewards_discount_between_turns() -> None:
    """Per-turn rewards [N, T] and returns sum_t gamma**t r_t; a wrong count is one line."""
    reward = TurnCount(RewardConfig(name="count"), None)  # type: ignore[arg-type]
    reward.config.turn_gamma = 0.5  # type: ignore[attr-defined]
    dialogues = [_dialogue("say a", "a", "now say b", "b"), _dialogue("say c", "c")]
    per_turn, returns = turn_rewards(reward, [{}, {}], dialogues)
    assert per_turn.tolist() == [[1.0, 2.0], [1.0, 0.0]]
    assert returns.tolist() == [1.0 + 0.5 * 2.0, 1.0]

    class Short(TurnCount):
        def score_turns(self, rows, dialogues):  # type: ignore[no-untyped-def]
            return [[1.0] for _ in dialogues]

    with pytest.raises(alignbench.PluginError, match="1 values for dialogue 0 with 2"):
        turn_rewards(Short(RewardConfig(name="short"), None), [{}, {}], dialogues)  # type: ignore[arg-type]


def test_place_turn_rewards_at_each_turns_last_token() -> None:
    """r_t lands on turn t's last token; user tokens and padding get nothing."""
    index = torch.tensor([[0, 0, -1, -1, 1, 1, 1, -1], [0, 0, 0, -1, -1, -1, -1, -1]])
    placed = ops.place_turn_rewards(torch.tensor([[1.0, 2.0], [3.0, 0.0]]), index)
    assert placed.tolist() == [
        [0, 1.0, 0, 0, 0, 0, 2.0, 0],
        [0, 0, 3.0, 0, 0, 0, 0, 0],
    ]


def test_gae_across_turns_matches_a_hand_computed_example() -> None:
    """Two turns of two tokens with two user tokens between (skipped), gamma=1, lam=0.5 within a
    turn and turn_gamma=0.9 between turns, worked out by hand."""
    mask = torch.tensor([[1, 1, 0, 0, 1, 1]])
    index = torch.tensor([[0, 0, -1, -1, 1, 1]])
    rewards = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 0.4, 9.0, 9.0, 0.3, 0.2]])  # user-token values are ignored
    adv, ret = ops.gae(rewards, values, mask, 1.0, 0.5, turn_index=index, turn_gamma=0.9)
    # Backwards over the valid tokens 5, 4 | 1, 0:
    d5 = 2.0 + 0 - 0.2  # 1.8, A5 = 1.8
    d4 = 0.0 + 0.2 - 0.3  # -0.1, A4 = -0.1 + 0.5 * 1.8 = 0.8
    d1 = 1.0 + 0.9 * 0.3 - 0.4  # 0.87, A1 = 0.87 + 0.9 * 0.5 * 0.8 = 1.23
    d0 = 0.0 + 0.4 - 0.5  # -0.1, A0 = -0.1 + 0.5 * 1.23 = 0.515
    expected = [
        d0 + 0.5 * (d1 + 0.45 * (d4 + 0.5 * d5)),
        d1 + 0.45 * (d4 + 0.5 * d5),
        0,
        0,
        d4 + 0.5 * d5,
        d5,
    ]
    assert torch.allclose(adv, torch.tensor([expected]), atol=1e-6)
    assert torch.allclose(adv[0], torch.tensor([0.515, 1.23, 0, 0, 0.8, 1.8]), atol=1e-6)
    assert torch.all(ret[0, 2:4] == 0)  # user tokens get no return, no advantage


def _textbook_gae(rewards, values, mask, gamma, lam):  # type: ignore[no-untyped-def]
    """The recursion on each row's valid prefix, written plainly."""
    out = torch.zeros_like(values)
    for i in range(values.shape[0]):
        n, last = int(mask[i].sum()), 0.0
        for t in reversed(range(n)):
            nxt = values[i, t + 1] if t + 1 < n else 0.0
            last = rewards[i, t] + gamma * nxt - values[i, t] + gamma * lam * last
            out[i, t] = last
    return out


def test_gae_on_single_responses_is_the_textbook_recursion() -> None:
    """Right-padded single responses: the same numbers as before conversations existed."""
    torch.manual_seed(0)
    mask = (torch.arange(7)[None] < torch.tensor([[7], [3], [1], [5]])).long()
    rewards, values = torch.randn(4, 7), torch.randn(4, 7)
    adv, _ = ops.gae(rewards, values, mask, 0.97, 0.9)
    assert torch.allclose(adv, _textbook_gae(rewards, values, mask, 0.97, 0.9), atol=1e-6)


def test_kl_shaped_rewards_put_the_score_on_the_last_assistant_token() -> None:
    """With user tokens inside the response, the score goes on the last *valid* position."""
    mask = torch.tensor([[1, 1, 0, 0, 1, 0]])
    shaped = ops.kl_shaped_rewards(torch.tensor([5.0]), torch.zeros(1, 6), mask, 0.1)
    assert shaped.tolist() == [[0, 0, 0, 0, 5.0, 0]]


def test_policy_loss_ignores_user_tokens() -> None:
    """Whatever the log-probs or advantages at user tokens, the loss is the same."""
    mask = torch.tensor([[1, 1, 0, 0, 1]])
    logprobs, old = torch.randn(1, 5), torch.randn(1, 5)
    advantages = torch.randn(1, 5)
    base, _ = ops.policy_loss(logprobs, old, advantages, mask, 0.2)
    noisy = logprobs.clone()
    noisy[0, 2:4] += 100.0
    adv = advantages.clone()
    adv[0, 2:4] = -50.0
    changed, _ = ops.policy_loss(noisy, old, adv, mask, 0.2)
    assert torch.allclose(base, changed)


def test_join_keeps_conversations_and_regroups_prompt_major(tiny: tuple[Any, Any]) -> None:
    """Candidates of several sources per prompt, in order; single-turn parts become one-turn
    conversations when another part holds conversations."""
    model, tokenizer = tiny
    rows = [{"prompt": "say a", "response": "a"}, {"prompt": "say b", "response": "b"}]
    demos = demonstration_batch(tokenizer, rows)
    sampled = converse(
        model,
        tokenizer,
        EchoTask(),
        rows,
        2,
        SamplingParams(max_new_tokens=3),
        torch.Generator().manual_seed(0),
    )
    joined = join(tokenizer, rows, [demos, sampled])
    assert joined.group_size == 3
    assert joined.sources == ["demonstration", "policy", "policy"] * 2
    assert joined.turns.dialogues[0] == _dialogue("say a", "a")
    assert joined.turns.dialogues[1] == sampled.turns.dialogues[0]
    assert joined.turns.dialogues[5] == sampled.turns.dialogues[3]
    assert torch.equal(
        joined.response_mask[1, : sampled.response_mask.shape[1]], sampled.response_mask[0]
    )


def test_turns_ends_and_count() -> None:
    """The last position of each turn and the number of turns of each conversation."""
    turns = Turns(index=torch.tensor([[0, 0, -1, 1, -1], [0, -1, -1, -1, -1]]), dialogues=[[], []])
    assert turns.count.tolist() == [2, 1]
    assert turns.ends().tolist() == [[1, 3], [0, -1]]


def test_an_algorithm_answering_evaluation_itself_is_refused_on_a_multi_turn_task() -> None:
    """A multi-turn algorithm with its own alignbench_respond would be ignored silently (the
    evaluation of a conversation is the core's greedy dialogue): refused in one line."""
    from types import SimpleNamespace

    from alignbench.app import check_multi_turn

    class Answers:
        multi_turn = True

        def alignbench_respond(self, run, rows):  # type: ignore[no-untyped-def]
            return None

    classes = {
        ("algo", "answers"): Answers,
        ("task", "echo"): EchoTask,
        ("reward", "count"): TurnCount,
    }
    registry = SimpleNamespace(
        get=lambda group, name: SimpleNamespace(cls=classes[(group, name)]),
        names=lambda group: [n for g, n in classes if g == group],
    )
    with pytest.raises(alignbench.ConfigError, match="answers evaluation questions itself"):
        check_multi_turn(registry, "answers", "echo", "count")  # type: ignore[arg-type]
    Answers.alignbench_respond = None  # type: ignore[assignment]
    del Answers.alignbench_respond
    check_multi_turn(registry, "answers", "echo", "count")  # type: ignore[arg-type]
