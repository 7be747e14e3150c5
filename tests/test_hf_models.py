"""Any local Hugging Face causal LM: Llama, GPT-2 and Qwen2 configs with a BPE tokenizer.

Every model here is built by the test with tiny sizes and saved with ``save_pretrained`` into a
temporary folder; the tokenizer is a byte-level BPE trained on the facts task's own text and
given a chat template. Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from alignbench import ConfigError
from alignbench.batch import collate, encode_prompts, encode_responses
from alignbench.budget import FlopCounter
from alignbench.models import (
    ScalarHeadModel,
    check_loadable,
    load_pretrained,
    response_logprobs,
    response_values,
)
from alignbench.sampling import SamplingParams, sample

TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
ARCHITECTURES = ("llama", "gpt2", "qwen2")


def bpe_tokenizer(
    texts: list[str], chat_template: str | None = TEMPLATE
) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on ``texts``: eos is the end-of-turn token, no pad token."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=800,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>")
    tokenizer.chat_template = chat_template
    return tokenizer


def tiny_causal_lm(kind: str, vocab_size: int, eos: int) -> torch.nn.Module:
    """A two-layer model of the given architecture, small enough to train in seconds."""
    torch.manual_seed(0)
    ids = {"bos_token_id": None, "eos_token_id": eos, "pad_token_id": None}
    if kind == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=128,
            **ids,
        )
        return LlamaForCausalLM(config)
    if kind == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=128, **ids
        )
        return GPT2LMHeadModel(config)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
        **ids,
    )
    return Qwen2ForCausalLM(config)


def facts_texts() -> list[str]:
    """Every prompt and answer of the tiny facts world the jobs below use (40 entities)."""
    from alignbench_plugins.facts import ABSTENTION, FactsConfig, FactsTask

    task = FactsTask(FactsConfig(name="facts", num_entities=40))
    return [f"{f['prompt']} {f['answer']}" for f in task._world] + [ABSTENTION] * 20


def save_model(folder: Path, kind: str, chat_template: str | None = TEMPLATE) -> Path:
    """Save a tiny ``kind`` model and the BPE tokenizer into ``folder``; returns it."""
    tokenizer = bpe_tokenizer(facts_texts(), chat_template)
    model = tiny_causal_lm(kind, len(tokenizer), tokenizer.eos_token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One saved model folder per architecture."""
    root = tmp_path_factory.mktemp("hf_models")
    return {kind: save_model(root / kind, kind) for kind in ARCHITECTURES}


ROWS = [{"prompt": "what is the colour of kemi ?"}, {"prompt": "in which city does zo live ?"}]


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_loads_offline_pads_with_eos_and_keeps_the_vocabulary(folders, kind: str) -> None:
    """No pad token: eos pads (no new token, no resized embeddings); prompts are left-padded.
    (Qwen2's tokenizer class brings its own pad, ``<|endoftext|>``, which is kept.)"""
    model, tokenizer = load_pretrained(folders[kind])
    pad = "<|endoftext|>" if kind == "qwen2" else tokenizer.eos_token
    assert tokenizer.pad_token == pad
    assert tokenizer.padding_side == "left"
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert tokenizer.decode(tokenizer.encode("i do not know", add_special_tokens=False)) == (
        "i do not know"
    )


def test_prompts_go_through_the_chat_template(folders) -> None:
    """`auto` renders one user turn and the assistant's opening; `none` keeps the plain text."""
    _, tokenizer = load_pretrained(folders["gpt2"])
    ids = encode_prompts(tokenizer, ["what is the colour of kemi ?"])[0]
    assert tokenizer.decode(ids) == (
        "<|im_start|>user\nwhat is the colour of kemi ?<|im_end|>\n<|im_start|>assistant\n"
    )
    _, plain = load_pretrained(folders["gpt2"], chat_template="none")
    assert plain.decode(encode_prompts(plain, ["what is x ?"])[0]) == "what is x ?"
    with pytest.raises(ConfigError, match="model.chat_template='always'"):
        load_pretrained(folders["gpt2"], chat_template="always")


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_sampler_logprobs_match_the_training_forward(folders, kind: str) -> None:
    """Left-padded prompts of different lengths: the sampler's log-probs are what training
    recomputes, and eos (= pad) stays inside the response mask where it is generated."""
    model, tokenizer = load_pretrained(folders[kind])
    model.eval()
    batch = sample(
        model,
        tokenizer,
        ROWS,
        3,
        SamplingParams(max_new_tokens=6),
        torch.Generator().manual_seed(0),
    )
    again = response_logprobs(model, batch.input_ids, batch.attention_mask, batch.prompt_length)
    mask = batch.response_mask.bool()
    assert torch.allclose(again[mask], batch.logprobs[mask], atol=1e-5)
    demo = collate(
        tokenizer, ROWS, encode_responses(tokenizer, ["red", "i do not know"]), 1, ["d", "d"]
    )
    assert demo.responses == ["red", "i do not know"]
    last = demo.response_mask.sum(1) - 1
    assert demo.response_ids[torch.arange(2), last].tolist() == [tokenizer.eos_token_id] * 2


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_scalar_head_on_every_backbone(folders, kind: str) -> None:
    """Critic / reward model: the backbone's trunk with a scalar head, charged for FLOPs."""
    backbone, tokenizer = load_pretrained(folders[kind])
    critic = ScalarHeadModel(backbone)
    batch = collate(
        tokenizer, ROWS, encode_responses(tokenizer, ["red", "i do not know"]), 1, ["d", "d"]
    )
    flops = FlopCounter()
    flops.track(critic, "critic")
    values = response_values(critic, batch.input_ids, batch.attention_mask, batch.prompt_length)
    assert values.shape == batch.response_mask.shape
    assert torch.equal(values, torch.zeros_like(values))  # the zero head starts every value at 0
    values.sum().backward()
    assert critic.head.weight.grad is not None and flops.total > 0


def test_flop_count_leaves_out_every_embedding_lookup(folders) -> None:
    """GPT-2's learned position embedding is a lookup like the token embedding: not charged."""
    model, _ = load_pretrained(folders["gpt2"])
    flops = FlopCounter()
    flops.track(model, "policy")
    ids = torch.ones(1, 5, dtype=torch.long)
    model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=1)
    lookups = {
        id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()
    }
    head = model.get_output_embeddings().weight
    body = sum(p.numel() for p in model.parameters() if id(p) not in lookups | {id(head)})
    assert flops.total == 2 * (body * 5 + head.numel() * 1)


def test_a_hub_id_or_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    """Nothing is downloaded: a hub id, a missing folder or a non-causal model is refused."""
    for path, why in (
        ("Qwen/Qwen2-0.5B", "not a local folder"),
        (str(tmp_path / "nope"), "not a local folder"),
    ):
        with pytest.raises(ConfigError, match=why) as info:
            check_loadable(path)
        assert "\n" not in str(info.value)
    (tmp_path / "t5").mkdir()
    (tmp_path / "t5" / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(ConfigError, match="not a causal LM"):
        check_loadable(tmp_path / "t5")


# -- whole pipeline ------------------------------------------------------------------------------

PIPELINE = [
    "stage.sft.epochs=6",
    "stage.sft.lr=3e-3",
    "reward=rm",
    "feedback.labels=24",
    "feedback.k=3",
    "stage.rm.epochs=2",
    "eval.max_new_tokens=6",
]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_sft_rm_ppo_and_rrhf_end_to_end(folders, kind: str, tiny_job) -> None:
    """SFT -> reward model (reward=rm) -> PPO and RRHF, on a BPE model with a chat template."""
    path = f"model.name_or_path={folders[kind]}"
    ppo = tiny_job(path, "algo=ppo", *PIPELINE, "algo.sampling.max_new_tokens=6", out="ppo")
    rrhf = tiny_job(path, "algo=rrhf", *PIPELINE, "algo.sampling.max_new_tokens=6", out="rrhf")
    for summary in (ppo, rrhf):
        assert summary["status"] == "finished", summary.get("error")
        assert summary["stage/sft"]["final_loss"] < 6.0
        assert 0.0 <= summary["test/accuracy_known"] <= 1.0
    assert rrhf["stage/sft"]["cache_hit"] and rrhf["stage/rm"]["cache_hit"]
    assert set(ppo["flops_by_model"]) >= {"policy", "critic", "reference", "reward_model"}
