"""``task=dataset`` with conversations and system prompts: a ``messages`` column (a list of
``{role, content}`` ending with the user's turn), a ``system`` column and ``task.system_prompt``.

Every fixture is written by the test (JSONL / CSV) and every model is built by it: a byte-level
BPE with a ChatML-like chat template, or the built-in word-level model (no template: the plain
rendering). Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from alignbench import (
    DataError,
    collate,
    encode_prompts,
    encode_responses,
    plain_prompt,
    prompt_messages,
    prompt_text,
)
from alignbench.app import run_job
from alignbench.registry import build_registry
from tests.conftest import compose
from tests.test_hf_models import TEMPLATE, bpe_tokenizer, tiny_causal_lm

SYSTEM = "answer with one word"
COLOURS = ("red", "blue", "green", "white", "black")
NAMES = ("kemi", "zo", "ada", "bo", "lu", "mo", "ri", "ta", "vi", "xu", "ye", "su")


def conversation_rows() -> list[dict[str, Any]]:
    """Two-turn conversations ending with a question, its gold answer and a pair."""
    rows = []
    for i, name in enumerate(NAMES):
        for j, thing in enumerate(("car", "hat", "door")):
            colour = COLOURS[(i + j) % len(COLOURS)]
            wrong = COLOURS[(i + j + 1) % len(COLOURS)]
            rows.append(
                {
                    "messages": [
                        {"role": "user", "content": f"i am {name} ."},
                        {"role": "assistant", "content": f"hello {name} ."},
                        {"role": "user", "content": f"what colour is my {thing} ?"},
                    ],
                    "answer": colour,
                    "chosen": colour,
                    "rejected": wrong,
                }
            )
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    """``rows`` as JSON lines at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_task(path: Path, **options: Any) -> Any:
    """The dataset task of ``path`` (validated as at start-up)."""
    from alignbench_plugins.dataset import DatasetConfig, DatasetTask

    config = DatasetConfig(name="dataset", path=str(path), **options)
    config.validate()
    return DatasetTask(config)


def chat_tokenizer() -> Any:
    """A BPE tokenizer with the ChatML-like template, trained on the conversations' text."""
    texts = [
        json.dumps(r["messages"]) + f" {r['answer']} {r['rejected']} {SYSTEM}"
        for r in conversation_rows()
    ]
    tokenizer = bpe_tokenizer(texts * 3 + ["system user assistant"] * 10, TEMPLATE)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


# -- rendering -----------------------------------------------------------------------------------

MESSAGES = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "i am kemi ."},
    {"role": "assistant", "content": "hello kemi ."},
    {"role": "user", "content": "what colour is my car ?"},
]


def test_a_conversation_is_rendered_by_the_chat_template() -> None:
    """encode_prompts, collate and the sampler's rows: exactly the template's tokens for the
    messages with the generation prompt; a single user turn as it always was."""
    tokenizer = chat_tokenizer()
    expected = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True)
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    # A BatchEncoding in newer transformers, a list of ids in older ones.
    expected = list(expected["input_ids"] if hasattr(expected, "keys") else expected)
    assert encode_prompts(tokenizer, [MESSAGES])[0] == expected
    assert tokenizer.encode(text, add_special_tokens=False) == expected
    row = {"prompt": "user: ... (shown in results)", "conversation": MESSAGES}
    assert prompt_messages(row) == MESSAGES
    batch = collate(tokenizer, [row], encode_responses(tokenizer, ["red"]), 1, ["demo"])
    prompt = batch.input_ids[0, : batch.prompt_length][
        batch.attention_mask[0, : batch.prompt_length].bool()
    ]
    assert prompt.tolist() == expected
    from alignbench import SamplingParams
    from alignbench.sampling import sample

    model = tiny_causal_lm("llama", len(tokenizer), tokenizer.eos_token_id)
    rollout = sample(model, tokenizer, [row], 1, SamplingParams(max_new_tokens=2))
    assert rollout.input_ids[0, : rollout.prompt_length].tolist() == expected
    single = [{"role": "user", "content": "what colour is my car ?"}]
    assert encode_prompts(tokenizer, ["what colour is my car ?"]) == encode_prompts(
        tokenizer, [single]
    )
    assert prompt_messages({"prompt": "q"}) == [{"role": "user", "content": "q"}]


def test_without_a_chat_template_a_conversation_is_plain_text() -> None:
    """Role lines then ``Assistant:``; one user message is its text alone (as before)."""
    tokenizer = chat_tokenizer()
    tokenizer.chat_template = None
    text = plain_prompt(MESSAGES)
    assert text == (
        f"System: {SYSTEM}\nUser: i am kemi .\nAssistant: hello kemi .\n"
        "User: what colour is my car ?\nAssistant:"
    )
    assert encode_prompts(tokenizer, [MESSAGES])[0] == tokenizer.encode(
        text, add_special_tokens=False
    )
    assert plain_prompt([{"role": "user", "content": "q ?"}]) == "q ?"
    assert encode_prompts(tokenizer, ["q ?"]) == encode_prompts(
        tokenizer, [[{"role": "user", "content": "q ?"}]]
    )
    assert prompt_text({"prompt": "q ?"}) == "q ?"
    assert prompt_text({"prompt": "x", "conversation": MESSAGES}) == text


def test_the_reward_models_text_path_renders_the_same_conversation() -> None:
    """A reward model read through its own tokenizer sees the conversation, then the answer:
    through its chat template, or as the plain text the policy's prompt was."""
    from alignbench.rm.model import reward_texts

    tokenizer = chat_tokenizer()
    row = {"prompt": "shown", "conversation": MESSAGES}
    batch = collate(tokenizer, [row], encode_responses(tokenizer, ["red"]), 1, ["demo"])
    [ids] = reward_texts(batch, tokenizer, tokenizer)
    text = tokenizer.apply_chat_template(
        [*MESSAGES, {"role": "assistant", "content": "red"}], tokenize=False
    )
    assert ids == tokenizer.encode(text, add_special_tokens=False)
    plain = chat_tokenizer()
    plain.chat_template = None
    batch = collate(plain, [row], encode_responses(plain, ["red"]), 1, ["demo"])
    [ids] = reward_texts(batch, plain, plain)
    # The answer continues the text as the policy's decoding does (byte-level: no space added).
    assert plain.decode(ids, skip_special_tokens=True) == plain_prompt(MESSAGES) + "red"
    assert ids[-1] == plain.eos_token_id


# -- reading the file ----------------------------------------------------------------------------


def test_messages_and_system_prompts_become_prompt_rows(tmp_path: Path) -> None:
    """Rows carry their conversation (task-wide system prompt first unless they have one);
    results name the prompt by a readable transcript; splits and groups keep it."""
    rows = conversation_rows()[:20]
    rows[0] = {**rows[0], "messages": [{"role": "system", "content": "be kind"}, *MESSAGES[1:]]}
    rows[1] = {"prompt": "plain question ?", "answer": "red", "chosen": "red", "rejected": "blue"}
    task = make_task(
        write_jsonl(tmp_path / "c.jsonl", rows), system_prompt=SYSTEM, dev_size=0, test_size=0
    )
    by_prompt = {r["prompt"]: r for split in ("sft", "rl") for r in task.splits[split].to_list()}
    own = by_prompt[
        "system: be kind | user: i am kemi . | assistant: hello kemi . | user: what "
        "colour is my car ?"
    ]
    assert own["conversation"][0] == {"role": "system", "content": "be kind"}
    plain = by_prompt["plain question ?"]
    assert plain["conversation"] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "plain question ?"},
    ]
    other = by_prompt["user: i am zo . | assistant: hello zo . | user: what colour is my car ?"]
    assert other["conversation"][0] == {"role": "system", "content": SYSTEM}
    assert other["conversation"][1:] == rows[3]["messages"]
    groups = task.preference_groups()
    assert all(g.row["conversation"][0]["role"] == "system" for g in groups)
    # The built-in word tokenizer is built from the plain rendering: its role lines included.
    words = set(task.vocabulary())
    assert {"System:", "User:", "Assistant:", "answer", "kind"} <= words


def test_a_system_column_and_a_csv_messages_cell(tmp_path: Path) -> None:
    """A row's system column goes first (and into its name); a CSV cell holds JSON text."""
    path = tmp_path / "s.csv"
    messages = json.dumps([{"role": "user", "content": "hi"}, *MESSAGES[2:]]).replace('"', '""')
    path.write_text(f'messages,system,response\n"{messages}",be brief,red\n"{messages}",,blue\n')
    task = make_task(path, dev_size=0, test_size=0, sft_share=1.0, rl_includes_sft=True)
    rows = {r["prompt"]: r for r in task.splits["sft"].to_list()}
    assert set(rows) == {
        "system: be brief | user: hi | assistant: hello kemi . | user: what colour is my car ?",
        "user: hi | assistant: hello kemi . | user: what colour is my car ?",
    }
    first = rows[
        "system: be brief | user: hi | assistant: hello kemi . | user: what colour is my car ?"
    ]
    assert first["conversation"][0] == {"role": "system", "content": "be brief"}


def test_single_turn_rows_are_unchanged(tmp_path: Path) -> None:
    """No messages or system column and no system_prompt: no conversation key, as before."""
    path = write_jsonl(
        tmp_path / "p.jsonl", [{"prompt": f"q{i}", "response": "a"} for i in range(9)]
    )
    task = make_task(path)
    assert set(task.splits["sft"].column_names) == {"prompt", "response", "answers", "answer"}


BAD = [
    ("hello", "is text, not a list of messages"),
    (3, "is not a list (3)"),
    ([], "is an empty list"),
    ([{"role": "bot", "content": "x"}], "message 1 has role 'bot' — use one of: system, user"),
    ([{"role": "user", "content": " "}], "message 1 (user) has empty content"),
    ([{"role": "user"}], 'message 1 is not {"role": ..., "content": ...}'),
    # Ending with the assistant's answer is a demonstration (see test_dataset_chat_formats.py);
    # two answers in a row, an answer alone or a system message alone are not.
    ([*MESSAGES[1:3], MESSAGES[2]], "its answer (the last message) follows the assistant's"),
    ([MESSAGES[2]], "is the assistant's answer alone — put the user's turn"),
    ([MESSAGES[0]], "ends with the system's message — a prompt ends with the user's turn"),
    ([MESSAGES[1], MESSAGES[0], MESSAGES[3]], "message 2 is a system message after the first"),
]


@pytest.mark.parametrize(("bad", "expected"), BAD, ids=[e[:24] for _, e in BAD])
def test_a_bad_conversation_is_one_line_naming_file_and_row(
    tmp_path: Path, bad: Any, expected: str
) -> None:
    """Not a list, an unknown role, empty content, no user turn before the end: file, row 3."""
    good = conversation_rows()[:2]
    path = write_jsonl(tmp_path / "bad.jsonl", [*good, {**good[0], "messages": bad}])
    with pytest.raises(DataError) as info:
        make_task(path)
    message = str(info.value)
    assert "\n" not in message and f"{path}: row 3: column 'messages'" in message, message
    assert expected in message, message


def test_a_row_without_messages_or_prompt_is_refused(tmp_path: Path) -> None:
    """A row of a conversation file with neither a conversation nor a prompt: one line."""
    good = conversation_rows()[:2]
    path = write_jsonl(
        tmp_path / "m.jsonl", [*good, {"answer": "red", "chosen": "a", "rejected": "b"}]
    )
    with pytest.raises(DataError, match="row 3: no prompt and column 'messages'"):
        make_task(path)


# -- fingerprints --------------------------------------------------------------------------------

#: task=dataset fingerprints of the same file before conversations existed (2ef4693).
PINNED = {
    (): "21e62792edd50892",
    (
        "algo=ppo",
        "reward=rm",
        "feedback=dataset",
        "task.columns.chosen=response",
        "task.columns.rejected=response",
    ): "97c786a096753ee4",
}


@pytest.mark.parametrize("overrides", list(PINNED), ids=lambda o: " ".join(o) or "default")
def test_single_turn_fingerprints_and_stage_keys_are_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: tuple[str, ...]
) -> None:
    """New keys unset: the job fingerprint, the record and the SFT key's task part as before;
    set, they count."""
    from omegaconf import OmegaConf

    from alignbench.cache import config_hash
    from alignbench.checkpoint import config_fingerprint
    from alignbench.config import omit_unset_task_keys
    from alignbench.jobdir import flat_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "qa.jsonl").write_text(
        '{"prompt": "q1", "response": "a"}\n{"prompt": "q2", "response": "b"}\n'
    )
    registry = build_registry()
    cfg = compose(["task=dataset", "task.path=qa.jsonl", *overrides], registry)
    assert config_fingerprint(cfg) == PINNED[overrides]
    assert not {"task.system_prompt", "task.columns.messages", "task.columns.system"} & set(
        flat_config(cfg)
    )
    task = omit_unset_task_keys(OmegaConf.to_container(cfg.task, resolve=True))
    if not overrides:
        assert config_hash(task) == "c6df20acbe90dc9c"  # the SFT key's task part, as before
    for key in ("task.system_prompt=hi", "task.columns.messages=turns", "task.columns.system=s"):
        on = compose(["task=dataset", "task.path=qa.jsonl", *overrides, key], registry)
        assert config_fingerprint(on) != config_fingerprint(cfg), key


# -- end to end ----------------------------------------------------------------------------------

SMALL = [
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.num_layers=2",
    "model.num_heads=2",
    "stage.sft.epochs=4",
    "stage.rm.epochs=2",
    "algo.prompts_per_step=4",
    "algo.sampling.max_new_tokens=4",
    "eval.max_new_tokens=4",
    "budget.kind=steps",
    "budget.amount=2",
    "eval.points=0",
    "logger=none",
    "threads=1",
]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["chat_template", "built_in"])
def test_conversations_train_sft_rm_ppo_end_to_end(tmp_path: Path, model: str) -> None:
    """Multi-turn messages and a system prompt: SFT -> reward model (the file's pairs) -> PPO,
    on a model with a chat template and on the built-in one (plain rendering)."""
    data = write_jsonl(tmp_path / "chat.jsonl", conversation_rows())
    overrides = [
        "task=dataset",
        f"task.path={data}",
        f"task.system_prompt={SYSTEM!r}",
        "task.test_size=6",
        "task.dev_size=0",
        f"cache_dir={tmp_path / 'cache'}",
        *SMALL,
    ]
    if model == "chat_template":
        folder = tmp_path / "model"
        tokenizer = chat_tokenizer()
        network = tiny_causal_lm("llama", len(tokenizer), tokenizer.eos_token_id)
        network.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        overrides.append(f"model.name_or_path={folder}")
    registry = build_registry()
    cfg = compose([*overrides, "algo=ppo", "reward=rm", "feedback=dataset"], registry)
    summary = run_job(cfg, tmp_path / "ppo", registry=registry)
    assert summary["status"] == "finished", summary.get("error")
    assert summary["stage/rm"]["groups"] > 0 and summary["flops_by_model"]["reward_model"] > 0
    assert summary["stage/rm"]["labels_accuracy_gold"] == 1.0
    assert 0.0 <= summary["test/accuracy"] <= 1.0
    assert torch.isfinite(torch.tensor(summary["stage/sft"]["final_loss"]))
    # The results name each prompt by its readable transcript.
    written = "".join(p.read_text() for p in (tmp_path / "ppo").rglob("*.jsonl"))
    assert "user: i am " in written and "| assistant: hello " in written


def test_an_empty_column_name_switches_a_role_off(tmp_path: Path) -> None:
    """A file whose `messages` and `system` columns serve another purpose (here: a transcript
    ending with the answer, and a label) is read as before with task.columns.messages='' and
    task.columns.system='': prompts and responses from their own columns, no conversation."""
    from alignbench_plugins.dataset import ColumnsConfig

    rows = [
        {
            "prompt": f"q{i} ?",
            "response": "a",
            "messages": [
                {"role": "user", "content": f"q{i} ?"},
                {"role": "assistant", "content": "a"},
            ],
            "system": "gpt-4",
        }
        for i in range(9)
    ]
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    task = make_task(
        path,
        columns=ColumnsConfig(messages="", system=""),
        dev_size=0,
        test_size=0,
        sft_share=1.0,
        rl_includes_sft=True,
    )
    got = task.splits["sft"].to_list()
    assert {r["prompt"] for r in got} == {f"q{i} ?" for i in range(9)}
    assert all("conversation" not in r for r in got)


def test_a_ranking_of_an_unknown_prompt_is_refused_when_prompts_are_conversations(
    tmp_path: Path,
) -> None:
    """feedback=file: a ranked prompt that is none of the task's rows would be a bare prompt,
    without the system prompt the policy is given; refused in one line (a known one is read)."""
    from alignbench.errors import DataError
    from alignbench_plugins.feedback import FileConfig, FileFeedback

    path = write_jsonl(
        tmp_path / "p.jsonl", [{"prompt": f"q{i} ?", "answer": "a"} for i in range(9)]
    )
    task = make_task(path, system_prompt=SYSTEM, dev_size=0, test_size=0)
    known = task.splits["rl"].to_list()[0]["prompt"]
    rankings = tmp_path / "r.jsonl"
    line = {"responses": ["a", "b"], "ranking": [0, 1]}
    rankings.write_text(json.dumps({"prompt": known, **line}) + "\n")
    source = FileFeedback(FileConfig(name="file", path=str(rankings)), task)
    [group] = source.load_groups()
    assert group.row["conversation"][0] == {"role": "system", "content": SYSTEM}
    rankings.write_text(json.dumps({"prompt": "never asked ?", **line}) + "\n")
    with pytest.raises(DataError, match=r"r.jsonl:1: prompt 'never asked \?' is none") as info:
        source.load_groups()
    assert "\n" not in str(info.value)


def test_a_columnar_messages_feature_is_read_as_its_messages(tmp_path: Path) -> None:
    """A messages column saved as a Sequence of {role, content} (datasets gives each cell as
    {"role": [...], "content": [...]}) is the same conversation as the list of messages."""
    import datasets

    rows = conversation_rows()[:9]
    features = datasets.Features(
        {
            "messages": datasets.Sequence(
                {"role": datasets.Value("string"), "content": datasets.Value("string")}
            ),
            "answer": datasets.Value("string"),
        }
    )
    columnar = [
        {
            "messages": {
                "role": [m["role"] for m in r["messages"]],
                "content": [m["content"] for m in r["messages"]],
            },
            "answer": r["answer"],
        }
        for r in rows
    ]
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(columnar, features=features).save_to_disk(str(folder))
    assert isinstance(datasets.load_from_disk(str(folder))[0]["messages"], dict)
    plain = write_jsonl(
        tmp_path / "p.jsonl", [{k: r[k] for k in ("messages", "answer")} for r in rows]
    )
    options = dict(dev_size=0, test_size=0)
    got = make_task(folder, **options).splits["rl"].to_list()
    want = make_task(plain, **options).splits["rl"].to_list()
    assert [r["conversation"] for r in got] == [r["conversation"] for r in want]
