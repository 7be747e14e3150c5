"""A critic or reward model from its own folder: ``reward=rm reward.path=<folder>`` and
``algo=ppo algo.critic_path=<folder>``.

Every folder is written by the test (tiny Llama / GPT-2 sequence classifiers and causal LMs,
byte-level BPE tokenizers trained on the facts task's text, ``save_pretrained``); nothing is
downloaded (``HF_HUB_OFFLINE=1`` in conftest).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2ForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
)

from alignbench import ConfigError, RewardModel
from alignbench.batch import collate, encode_responses
from alignbench.budget import FlopCounter
from alignbench.checkpoint import config_fingerprint
from alignbench.cli import validate
from alignbench.job import Job
from alignbench.jobdir import flat_config
from alignbench.model_folders import (
    check_model_folder,
    load_scalar_model,
    same_tokenizer,
    same_vocabulary,
)
from alignbench.models import ScalarHeadModel, build_tokenizer
from alignbench.registry import build_registry
from alignbench_plugins.facts import FactsConfig, FactsTask
from tests.conftest import TINY, compose
from tests.test_hf_models import TEMPLATE, bpe_tokenizer, facts_texts

ROWS = [{"prompt": "what is the colour of kemi ?"}, {"prompt": "in which city does zo live ?"}]
ANSWERS = ["red", "i do not know", "paris", "blue"]


def llama_config(vocab_size: int, eos: int | None, **extra: object) -> LlamaConfig:
    """A two-layer Llama config small enough for a test."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=None,
        eos_token_id=eos,
        pad_token_id=None,
        **extra,
    )


def save_classifier(folder: Path, tokenizer, kind: str = "llama", labels: int = 1) -> Path:
    """A random sequence classifier with ``labels`` outputs and a non-zero score head."""
    torch.manual_seed(1)
    if kind == "gpt2":
        config = GPT2Config(
            vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, num_labels=labels
        )
        model = GPT2ForSequenceClassification(config)
    else:
        config = llama_config(len(tokenizer), tokenizer.eos_token_id, num_labels=labels)
        model = LlamaForSequenceClassification(config)
    torch.nn.init.normal_(model.score.weight, std=1.0)  # scores that differ between texts
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def facts_tokenizer():
    """The built-in word tokenizer of the tiny facts world (what the default policy uses)."""
    task = FactsTask(FactsConfig(name="facts", num_entities=40))
    return build_tokenizer(task.vocabulary())


def hf_score(folder: Path, ids: list[int]) -> float:
    """The folder's own classifier score of one unpadded sequence (transformers' forward)."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True)
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, 0].item()


@pytest.fixture(scope="module")
def bpe(tmp_path_factory: pytest.TempPathFactory):
    """A BPE tokenizer with a chat template, trained on the facts text, padding with eos (as
    load_pretrained leaves a policy's)."""
    tokenizer = bpe_tokenizer(facts_texts())
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# -- tokenizer identity ---------------------------------------------------------------------------


def test_same_tokenizer_is_exact(bpe, tmp_path: Path) -> None:
    """Saved and loaded again, with a pad token added (padding is masked): the same. Another
    chat template, another eos, another vocabulary, other merges: not the same."""
    from transformers import AutoTokenizer

    bpe.save_pretrained(tmp_path / "a")
    again = AutoTokenizer.from_pretrained(tmp_path / "a", local_files_only=True)
    assert same_tokenizer(bpe, again)
    again.pad_token = again.eos_token
    assert same_tokenizer(bpe, again)
    plain = AutoTokenizer.from_pretrained(tmp_path / "a", local_files_only=True)
    plain.chat_template = None
    assert not same_tokenizer(bpe, plain) and same_vocabulary(bpe, plain)
    other_eos = AutoTokenizer.from_pretrained(tmp_path / "a", local_files_only=True)
    other_eos.eos_token = "<|endoftext|>"
    assert not same_tokenizer(bpe, other_eos)
    smaller = bpe_tokenizer(facts_texts()[:30])  # fewer merges learnt: other ids
    assert not same_tokenizer(bpe, smaller) and not same_vocabulary(bpe, smaller)
    words = facts_tokenizer()
    assert same_tokenizer(words, facts_tokenizer()) and not same_tokenizer(words, bpe)


# -- loading -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_a_classifier_folder_scores_as_transformers_does(bpe, tmp_path: Path, kind: str) -> None:
    """The folder's trunk and ``score`` head as a ScalarHeadModel: its scalar at a sequence's
    last token is the classifier's own score of it, also inside a padded batch."""
    folder = save_classifier(tmp_path / kind, bpe, kind)
    model, tokenizer = load_scalar_model(folder, "reward.path", "reward")
    assert isinstance(model, ScalarHeadModel)
    texts = ["the colour of kemi is red", "paris", "i do not know the answer at all"]
    ids = [tokenizer.encode(t) for t in texts]
    length = max(map(len, ids))
    batch = torch.zeros(len(ids), length, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for i, seq in enumerate(ids):
        batch[i, : len(seq)], mask[i, : len(seq)] = torch.tensor(seq), 1
    with torch.no_grad():
        ours = model(batch, mask).gather(1, mask.sum(1, keepdim=True) - 1)[:, 0]
    expected = [hf_score(folder, seq) for seq in ids]
    assert ours.tolist() == pytest.approx(expected, abs=1e-5)
    assert len(set(expected)) == len(expected)  # the scores do differ between texts


def test_the_export_reads_back_with_its_head_bias(bpe, tmp_path: Path) -> None:
    """RewardModel.export writes alignbench's scalar-head format; reward.path reads it back
    to the same weights (the head's bias included) and the same scores."""
    torch.manual_seed(0)
    network = ScalarHeadModel(LlamaForCausalLM(llama_config(len(bpe), bpe.eos_token_id)))
    torch.nn.init.normal_(network.head.weight)
    torch.nn.init.constant_(network.head.bias, 0.75)
    RewardModel(network, bpe).export(tmp_path / "rm")
    assert check_model_folder(tmp_path / "rm", "reward.path", "reward") == "scalar_head"
    loaded = RewardModel.from_folder(tmp_path / "rm", bpe)
    state = loaded.network.state_dict()
    for key, value in network.state_dict().items():
        assert torch.equal(state[key], value), key
    assert loaded.reward_tokenizer is None and loaded.info["scores"] == "token_ids"
    assert loaded.score_texts(ROWS, ANSWERS[:2]) == pytest.approx(
        RewardModel(network.eval(), bpe).score_texts(ROWS, ANSWERS[:2]), abs=1e-6
    )


# -- scoring: the policy's ids, or its text ------------------------------------------------------


def test_the_same_tokenizer_scores_the_policys_ids(bpe, tmp_path: Path) -> None:
    """An RM folder whose tokenizer is the policy's: the batch's own ids are scored, and each
    reward is the classifier's score of that sequence's ids (padding removed)."""
    folder = save_classifier(tmp_path / "rm", bpe)
    policy_tokenizer = bpe_tokenizer(facts_texts())
    policy_tokenizer.pad_token = policy_tokenizer.eos_token  # as load_pretrained does
    policy_tokenizer.padding_side = "left"
    rm = RewardModel.from_folder(folder, policy_tokenizer)
    assert rm.reward_tokenizer is None
    rows = [ROWS[0], ROWS[0], ROWS[1], ROWS[1]]
    batch = collate(
        policy_tokenizer, rows, encode_responses(policy_tokenizer, ANSWERS), 1, [""] * 4
    )
    rewards = rm.score(batch)
    for i in range(4):
        ids = batch.input_ids[i][batch.attention_mask[i].bool()].tolist()
        assert rewards[i].item() == pytest.approx(hf_score(folder, ids), abs=1e-5)


@pytest.mark.parametrize("template", [TEMPLATE, None], ids=["chat_template", "plain"])
def test_another_tokenizer_scores_the_decoded_text(bpe, tmp_path: Path, template) -> None:
    """The built-in word-level policy and a BPE reward model: each response is decoded and
    written again in the RM's tokens — through its chat template (user turn = the prompt,
    assistant turn = the response), or as plain text + its eos — and scored there."""
    rm_tokenizer = bpe_tokenizer(facts_texts(), template)
    folder = save_classifier(tmp_path / "rm", rm_tokenizer)
    policy_tokenizer = facts_tokenizer()
    rm = RewardModel.from_folder(folder, policy_tokenizer)
    assert rm.reward_tokenizer is not None and rm.info["scores"] == "text"
    rows = [ROWS[0], ROWS[1]]
    answers = ["red", "paris"]
    rewards = rm.score_texts(rows, answers)
    for row, answer, reward in zip(rows, answers, rewards, strict=True):
        if template:
            conversation = [
                {"role": "user", "content": row["prompt"]},
                {"role": "assistant", "content": answer},
            ]
            text = rm_tokenizer.apply_chat_template(conversation, tokenize=False)
            ids = rm_tokenizer.encode(text, add_special_tokens=False)
            assert text.endswith(f"<|im_start|>assistant\n{answer}<|im_end|>\n")
        else:
            ids = rm_tokenizer.encode(f"{row['prompt']} {answer}") + [rm_tokenizer.eos_token_id]
        assert reward == pytest.approx(hf_score(folder, ids), abs=1e-5)


def test_a_text_longer_than_the_reward_models_positions_is_one_line(bpe, tmp_path: Path) -> None:
    """Written in the reward model's tokens, a sequence longer than its positions is refused in
    one line naming reward.path and the fixes, not an index error deep inside the model."""
    from alignbench.errors import DataError

    folder = save_classifier(tmp_path / "rm", bpe_tokenizer(facts_texts(), None))
    rm = RewardModel.from_folder(folder, facts_tokenizer())
    rm.network.trunk.config.max_position_embeddings = 4
    with pytest.raises(DataError, match=r"reward.path=.*more than its 4 positions") as info:
        rm.score_texts([ROWS[0]], ["red"])
    assert "\n" not in str(info.value)


def test_a_cut_off_response_stays_open_in_the_reward_models_template() -> None:
    """Written through a reward model's chat template, a response that ended is closed by the
    template's end of turn; one cut off by the token limit (no eos) is left open
    (continue_final_message), so the reward model can tell it from a finished answer."""
    from types import SimpleNamespace

    from alignbench.rm.model import reward_texts

    policy = facts_tokenizer()
    rm_tokenizer = bpe_tokenizer(facts_texts(), TEMPLATE)
    red = policy.encode("red", add_special_tokens=False)
    texts = {}
    for name, response in (("ended", [*red, policy.eos_token_id]), ("cut", red)):
        batch = SimpleNamespace(rows=[ROWS[0]], token_lists=lambda r=response: [(r, [], [])])
        texts[name] = rm_tokenizer.decode(reward_texts(batch, policy, rm_tokenizer)[0])
    assert texts["ended"].endswith("<|im_start|>assistant\nred<|im_end|>\n")
    assert texts["cut"].endswith("<|im_start|>assistant\nred")


def test_a_template_that_rewrites_a_cut_off_reply_still_leaves_it_open() -> None:
    """A template that rewrites replies (here: drops "red"), for which continue_final_message
    fails with a multi-line error: the cut-off reply follows the text the template writes before
    a reply; a template that writes no reply at all is refused in one line."""
    from types import SimpleNamespace

    from alignbench.errors import DataError
    from alignbench.rm.model import reward_texts

    policy = facts_tokenizer()
    rm_tokenizer = bpe_tokenizer(
        facts_texts(),
        TEMPLATE.replace("m['content']", "m['content'] | replace('red', '')"),
    )
    cut = policy.encode("red", add_special_tokens=False)
    batch = SimpleNamespace(rows=[ROWS[0]], token_lists=lambda: [(cut, [], [])])
    text = rm_tokenizer.decode(reward_texts(batch, policy, rm_tokenizer)[0])
    assert text.endswith("<|im_start|>assistant\nred")
    silent = bpe_tokenizer(facts_texts(), TEMPLATE.replace("m['content']", "''"))
    with pytest.raises(DataError, match="does not write the assistant's reply") as info:
        reward_texts(batch, policy, silent)
    assert "\n" not in str(info.value)


def test_the_folder_models_forwards_are_counted(bpe, tmp_path: Path) -> None:
    """Tracked like any model: 2 x (matrix parameters x tokens it reads + head x positions), on
    the RM's own tokens when it scores text (embedding lookups are not charged)."""
    folder = save_classifier(tmp_path / "rm", bpe)
    policy_tokenizer = facts_tokenizer()
    rm = RewardModel.from_folder(folder, policy_tokenizer)
    flops = FlopCounter()
    flops.track(rm.network, "reward_model")
    batch = collate(
        policy_tokenizer, ROWS, encode_responses(policy_tokenizer, ["red", "paris"]), 1, ["", ""]
    )
    rm.score(batch)
    flops.close()
    from alignbench.rm.model import retokenized

    ids, _ = retokenized(batch, policy_tokenizer, rm.reward_tokenizer)
    head = sum(p.numel() for p in rm.network.head.parameters())  # scores every position
    lookup = rm.network.get_input_embeddings().weight.numel()
    body = sum(p.numel() for p in rm.network.parameters()) - lookup - head
    assert ids.shape[1] > batch.input_ids.shape[1]  # the RM's BPE writes more tokens
    assert flops.by_model["reward_model"] == 2.0 * (body + head) * ids.numel()


# -- jobs ----------------------------------------------------------------------------------------


def _job(tmp_path: Path, cache_dir: Path, *overrides: str) -> Job:
    registry = build_registry()
    cfg = compose([*TINY, f"cache_dir={cache_dir}", *overrides], registry)
    return Job(cfg, tmp_path / "job", registry)


def test_ppo_with_a_reward_folder_runs_and_its_rewards_are_the_folders_scores(
    bpe, tmp_path: Path, cache_dir: Path, tiny_job
) -> None:
    """reward=rm reward.path=<classifier>: no stage 2 (no ranked groups), the rewards of a
    rollout are the classifier's scores of the decoded texts, its forwards are charged, and a
    whole PPO job finishes."""
    folder = save_classifier(tmp_path / "rm", bpe)
    job = _job(tmp_path, cache_dir, "algo=ppo", "reward=rm", f"reward.path={folder}")
    run = job.build()
    job.start()
    try:
        assert "stage/rm" not in job.stages and job.stages["reward/folder"]["scores"] == "text"
        # Where the policy's answers end, for the text it writes again (set when the run starts).
        assert run.reward.reward_model.stops == (run.tokenizer.eos_token_id,)
        hook = run.pm.hook
        batch = hook.alignbench_rollout(run=run, prompts=run.task.splits["rl"].to_list()[:3])
        batch = hook.alignbench_score(run=run, batch=batch)
        assert run.flops.by_model["reward_model"] > 0
    finally:
        job.close()
    rm_tokenizer = run.reward.reward_model.reward_tokenizer
    lists = batch.token_lists()
    for i, (row, answer) in enumerate(zip(batch.rows, batch.responses, strict=True)):
        conversation = [
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": answer},
        ]
        # A response cut off by the token limit stays open in the template (no end of turn).
        ended = lists[i][0][-1:] == [run.tokenizer.eos_token_id]
        text = rm_tokenizer.apply_chat_template(
            conversation, tokenize=False, continue_final_message=not ended
        )
        expected = hf_score(folder, rm_tokenizer.encode(text, add_special_tokens=False))
        assert batch.rewards[i].item() == pytest.approx(expected, abs=1e-5)
    summary = tiny_job("algo=ppo", "reward=rm", f"reward.path={folder}", out="whole")
    assert summary["status"] == "finished", summary.get("error")
    assert "stage/rm" not in summary and summary["reward/folder"]["path"] == str(folder)
    assert summary["flops_by_model"]["reward_model"] > 0


@pytest.mark.parametrize("kind", ["classifier", "causal_lm"])
def test_a_critic_from_its_folder_starts_with_its_weights(
    tmp_path: Path, cache_dir: Path, kind: str
) -> None:
    """algo.critic_path: the critic's weights are the folder's — a classifier's score head as
    its head, a causal LM's trunk with a zero head — and it trains (an update moves it)."""
    tokenizer = facts_tokenizer()
    folder = tmp_path / kind
    if kind == "classifier":
        save_classifier(folder, tokenizer)
    else:
        torch.manual_seed(2)
        LlamaForCausalLM(llama_config(len(tokenizer), tokenizer.eos_token_id)).save_pretrained(
            folder
        )
        tokenizer.save_pretrained(folder)
    expected, _ = load_scalar_model(folder, "algo.critic_path", "critic")
    job = _job(tmp_path, cache_dir, "algo=ppo", f"algo.critic_path={folder}")
    run = job.build()
    ppo = job.start()
    try:
        start = {k: v.clone() for k, v in ppo.critic.state_dict().items()}
        hook = run.pm.hook
        batch = hook.alignbench_rollout(run=run, prompts=run.task.splits["rl"].to_list()[:4])
        batch = hook.alignbench_score(run=run, batch=batch)
        hook.alignbench_update(run=run, batch=batch)
    finally:
        job.close()
    for key, value in expected.state_dict().items():
        assert torch.equal(start[key], value), key
    assert bool(start["head.weight"].any()) == (kind == "classifier")
    assert not torch.equal(ppo.critic.state_dict()["head.bias"], start["head.bias"])


# -- identity ------------------------------------------------------------------------------------


def test_the_folders_contents_are_part_of_the_fingerprint(bpe, tmp_path: Path) -> None:
    """Empty keys leave the default fingerprint and record alone; a folder adds its path and
    its files' contents: the same name with other weights is another job."""
    registry = build_registry()
    default = compose(["algo=ppo", "reward=rm"], registry)
    assert not {"algo.critic_path", "reward.path"} & set(flat_config(default))
    folder = save_classifier(tmp_path / "rm", bpe)
    with_folder = compose(["algo=ppo", "reward=rm", f"reward.path={folder}"], registry)
    first = config_fingerprint(with_folder)
    assert first != config_fingerprint(default)
    assert config_fingerprint(with_folder) == first  # stable (and hashed once)
    save_classifier(folder, bpe, labels=1, kind="gpt2")  # other weights behind the same name
    assert config_fingerprint(with_folder) != first


# -- refused up front ----------------------------------------------------------------------------


def test_unusable_folders_are_one_line_each_before_stage_1(
    bpe, tmp_path: Path, cache_dir: Path
) -> None:
    """Missing folder, no config.json, two labels, a causal LM as a reward model, a critic on
    another vocabulary, a shared critic, online rounds: each one line naming the key and the
    fix, from the command line's validation and from the Job's own check (no stage trained)."""
    registry = build_registry()
    (tmp_path / "empty").mkdir()
    two = save_classifier(tmp_path / "two", bpe, labels=2)
    lm = tmp_path / "lm"
    LlamaForCausalLM(llama_config(len(bpe), bpe.eos_token_id)).save_pretrained(lm)
    bpe.save_pretrained(lm)
    one = save_classifier(tmp_path / "one", bpe)
    cases = [
        (["reward=rm", f"reward.path={tmp_path / 'nope'}"], "not a local folder"),
        (["reward=rm", f"reward.path={tmp_path / 'empty'}"], "no config.json"),
        (["reward=rm", f"reward.path={two}"], "2 labels, a score needs one"),
        (["reward=rm", f"reward.path={lm}"], "without a trained scalar head"),
        (["algo=ppo", f"algo.critic_path={one}"], "vocabulary is not the policy's"),
        (["algo=ppo", "algo.critic=shared", f"algo.critic_path={lm}"], "algo.critic=separate"),
        (["reward=rm", f"reward.path={one}", "feedback.rounds=2"], "set feedback.rounds=0"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message) as info:
            validate(registry, [*TINY, f"cache_dir={cache_dir}", *overrides])
        assert "\n" not in str(info.value) and " — " in str(info.value)
    # The Job's own check (library callers) refuses the vocabulary before stage 1.
    job = _job(tmp_path, tmp_path / "cache", "algo=ppo", f"algo.critic_path={one}")
    with pytest.raises(ConfigError, match="must share the policy's tokenizer"):
        job.check()
    assert not (tmp_path / "cache").exists()
    # The policy's own tokenizer passes: a model folder over the built-in facts vocabulary.
    words = facts_tokenizer()
    ok = save_classifier(tmp_path / "ok", words)
    validate(registry, [*TINY, "algo=ppo", f"algo.critic_path={ok}"])
    assert json.loads((ok / "config.json").read_text())["id2label"] == {"0": "LABEL_0"}
