"""``task=dataset`` reading conversational preference and demonstration files: ``chosen`` /
``rejected`` (and ``responses``) cells that are whole conversations (TRL's "conversational
preference" format, UltraFeedback-binarized, HH converted) or only the assistant's answer beside
a ``prompt`` (TRL's explicit-prompt form), and ``messages`` ending with the assistant's answer
(SFT rows); the start-up refusal of a rule reward on data without gold answers.

Every file is written by the test; the end-to-end run trains the built-in tiny model.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from alignbench import DataError
from alignbench.app import main, run_job
from alignbench.registry import build_registry
from alignbench_plugins.dataset import DatasetTask
from tests.conftest import compose
from tests.test_dataset_conversations import SMALL, make_task, write_jsonl

SYSTEM = {"role": "system", "content": "answer with one word"}
COLOURS = ("red", "blue", "green", "white", "black")
NAMES = ("kemi", "zo", "ada", "bo", "lu", "mo", "ri", "ta", "vi", "xu", "ye", "su")


def user(text: str) -> dict[str, str]:
    """A user message."""
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    """An assistant message."""
    return {"role": "assistant", "content": text}


def prompts() -> list[tuple[list[dict[str, str]], str, str]]:
    """``(prompt messages, right answer, wrong answer)``: multi-turn, every other one with a
    system message first."""
    out = []
    for i, name in enumerate(NAMES):
        for j, thing in enumerate(("car", "hat", "door")):
            messages = [
                user(f"i am {name} ."),
                assistant(f"hello {name} ."),
                user(f"what colour is my {thing} ?"),
            ]
            if (i + j) % 2:
                messages = [SYSTEM, *messages]
            right, wrong = COLOURS[(i + j) % 5], COLOURS[(i + j + 1) % 5]
            out.append((messages, right, wrong))
    return out


def string_rows() -> list[dict[str, Any]]:
    """The prompts as a messages column with text answers (the form read before)."""
    return [{"messages": m, "chosen": a, "rejected": b} for m, a, b in prompts()]


def ultrafeedback_rows() -> list[dict[str, Any]]:
    """The same pairs as whole conversations sharing the prompt (no prompt column)."""
    return [{"chosen": [*m, assistant(a)], "rejected": [*m, assistant(b)]} for m, a, b in prompts()]


def same_data(one: Any, other: Any) -> None:
    """Two tasks read the same records, splits and preference groups."""
    keys = ("prompt", "conversation", "response", "answers", "ranked", "split")
    assert [{k: r[k] for k in keys} for r in one.data.records] == [
        {k: r[k] for k in keys} for r in other.data.records
    ]
    assert one.data.split_of == other.data.split_of
    for name in ("sft", "rl", "dev", "test"):
        assert one.splits[name].to_list() == other.splits[name].to_list(), name
    groups = [(g.row, g.responses, g.preference) for g in one.preference_groups()]
    assert groups == [(g.row, g.responses, g.preference) for g in other.preference_groups()]
    assert groups


# -- accepted forms ------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["jsonl", "parquet", "csv"])
def test_conversational_pairs_equal_text_pairs(tmp_path: Path, suffix: str) -> None:
    """chosen / rejected as whole conversations (a shared multi-turn prefix, a system message
    on some rows): the prompt is the shared prefix, the answers the final assistant turns —
    the same records, splits and groups as the prefix in a messages column with text answers.
    Parquet stores the lists as structs, CSV as JSON text."""
    from datasets import Dataset

    text = make_task(write_jsonl(tmp_path / "text.jsonl", string_rows()))
    rows = ultrafeedback_rows()
    path = tmp_path / f"uf.{suffix}"
    if suffix == "jsonl":
        write_jsonl(path, rows)
    elif suffix == "parquet":
        Dataset.from_list(rows).to_parquet(str(path))
    else:
        encoded = [{k: json.dumps(v) for k, v in r.items()} for r in rows]
        Dataset.from_list(encoded).to_csv(str(path), index=False)
    same_data(make_task(path), text)


def test_ultrafeedback_binarized_columns(tmp_path: Path) -> None:
    """UltraFeedback-binarized's own columns: a prompt text, chosen / rejected conversations
    and messages (the chosen conversation): prompt, pair and demonstration as from text."""
    rows, text_rows = [], []
    for messages, a, b in prompts():
        question = messages[-1]["content"]
        rows.append(
            {
                "prompt": question,
                "chosen": [user(question), assistant(a)],
                "rejected": [user(question), assistant(b)],
                "messages": [user(question), assistant(a)],
                "score_chosen": 8.0,
            }
        )
        text_rows.append({"messages": [user(question)], "chosen": a, "rejected": b, "response": a})
    # Each question appears 12 times (one per name): the same prompt, several pairs.
    one = make_task(write_jsonl(tmp_path / "ufb.jsonl", rows))
    same_data(one, make_task(write_jsonl(tmp_path / "t.jsonl", text_rows)))
    assert {r["response"] for r in one.splits["sft"].to_list()} <= set(COLOURS)


@pytest.mark.parametrize("prompt_form", ["messages", "text"])
def test_explicit_prompt_form(tmp_path: Path, prompt_form: str) -> None:
    """TRL's explicit-prompt form: a prompt column (a message list, or text) and chosen /
    rejected holding only the assistant's answer — as the same prompt with text answers."""
    rows, text_rows = [], []
    for messages, a, b in prompts():
        prompt: Any = messages if prompt_form == "messages" else messages[-1]["content"]
        rows.append({"prompt": prompt, "chosen": [assistant(a)], "rejected": [assistant(b)]})
        key = "messages" if prompt_form == "messages" else "prompt"
        text_rows.append({key: prompt, "chosen": a, "rejected": b})
    one = make_task(write_jsonl(tmp_path / "explicit.jsonl", rows))
    same_data(one, make_task(write_jsonl(tmp_path / "t.jsonl", text_rows)))
    if prompt_form == "text":  # text prompts and answers: single-turn rows, no conversation key
        assert "conversation" not in one.splits["sft"].column_names


def test_a_whole_conversation_beside_its_prompt_column(tmp_path: Path) -> None:
    """A prompt column and chosen / rejected repeating it before the answer (with or without
    the row's system column message): read as the prompt with text answers."""
    rows, text_rows = [], []
    for messages, a, b in prompts():
        own = [m for m in messages if m["role"] != "system"]
        full = [SYSTEM, *own] if len(rows) % 2 else own
        rows.append(
            {
                "prompt": own,
                "system": SYSTEM["content"],
                "chosen": [*full, assistant(a)],
                "rejected": [*own, assistant(b)],
            }
        )
        text_rows.append({"messages": own, "system": SYSTEM["content"], "chosen": a, "rejected": b})
    one = make_task(write_jsonl(tmp_path / "p.jsonl", rows))
    same_data(one, make_task(write_jsonl(tmp_path / "t.jsonl", text_rows)))


def test_sft_messages_ending_with_the_answer_equal_prompt_and_response(tmp_path: Path) -> None:
    """A messages list ending with the assistant's answer is the prompt (everything before it)
    and its response; rows ending with the user's turn keep their meaning beside them."""
    rows, text_rows = [], []
    for i, (messages, a, _) in enumerate(prompts()):
        if i % 3:
            rows.append({"messages": [*messages, assistant(a)], "answer": a})
        else:  # a prompt row without a demonstration (its gold answer is the fallback)
            rows.append({"messages": messages, "answer": a})
        text_rows.append({"messages": messages, "response": a if i % 3 else None, "answer": a})
    one = make_task(write_jsonl(tmp_path / "sft.jsonl", rows), sft_share=0.8)
    same_data_sft = make_task(write_jsonl(tmp_path / "t.jsonl", text_rows), sft_share=0.8)
    assert one.data.records == [
        {**r, "where": r["where"].replace("t.jsonl", "sft.jsonl")}
        for r in same_data_sft.data.records
    ]
    for name in ("sft", "rl", "dev", "test"):
        assert one.splits[name].to_list() == same_data_sft.splits[name].to_list()
    # One user turn then the answer: the prompt and the demonstration of prompt / response text.
    single = make_task(
        write_jsonl(tmp_path / "one.jsonl", [{"messages": [user("q ?"), assistant("red")]}] * 3),
        dev_size=0,
        test_size=0,
        sft_share=1.0,
        rl_includes_sft=True,
    )
    [record] = single.data.records[:1]
    assert (record["prompt"], record["response"]) == ("q ?", "red")


def test_a_response_as_messages_equals_its_text(tmp_path: Path) -> None:
    """A response cell holding the whole conversation (no prompt column) or the answer alone
    beside the prompt: the same demonstrations as prompt + response text."""
    whole, alone, text_rows = [], [], []
    for messages, a, _ in prompts():
        whole.append({"response": [*messages, assistant(a)]})
        alone.append({"messages": messages, "response": [assistant(a)]})
        text_rows.append({"messages": messages, "response": a})
    text = make_task(write_jsonl(tmp_path / "t.jsonl", text_rows), rl_includes_sft=True)
    for name, rows in (("whole", whole), ("alone", alone)):
        one = make_task(write_jsonl(tmp_path / f"{name}.jsonl", rows), rl_includes_sft=True)
        for split in ("sft", "rl", "dev", "test"):
            assert one.splits[split].to_list() == text.splits[split].to_list(), (name, split)


def test_rankings_of_conversations_equal_rankings_of_texts(tmp_path: Path) -> None:
    """responses as whole conversations (or answers alone beside a prompt) + ranking: the
    same groups as text responses."""
    rows, alone, text_rows = [], [], []
    for messages, a, b in prompts():
        c = "white" if a != "white" else "black"
        rows.append(
            {
                "responses": [[*messages, assistant(x)] for x in (b, a, c)],
                "ranking": [1, 0, 2],
            }
        )
        alone.append(
            {
                "messages": messages,
                "responses": [[assistant(x)] for x in (b, a, c)],
                "ranking": [1, 0, 2],
            }
        )
        text_rows.append({"messages": messages, "responses": [b, a, c], "ranking": [1, 0, 2]})
    text = make_task(write_jsonl(tmp_path / "t.jsonl", text_rows))
    same_data(make_task(write_jsonl(tmp_path / "r.jsonl", rows)), text)
    same_data(make_task(write_jsonl(tmp_path / "a.jsonl", alone)), text)


# -- refusals ------------------------------------------------------------------------------------

Q = [user("i am kemi ."), assistant("hello kemi ."), user("what colour is my car ?")]
OTHER = [user("i am zo ."), assistant("hello zo ."), user("what colour is my car ?")]
BAD = [
    (
        {"chosen": [*Q, assistant("red")], "rejected": [*OTHER, assistant("blue")]},
        "column 'chosen' (chosen) and column 'rejected' (rejected) hold different conversations "
        "before their answers (message 1 differs) — the answers to one prompt share its messages",
    ),
    (
        {"chosen": [*Q, assistant("red")], "rejected": [*Q[:1], assistant("blue")]},
        "hold different conversations before their answers (message 2 differs)",
    ),
    (
        {"chosen": [], "rejected": [*Q, assistant("blue")]},
        "column 'chosen' (chosen) is an empty list — give the conversation ending with the "
        "assistant's answer, or the answer alone",
    ),
    (
        {"chosen": [*Q, assistant(" ")], "rejected": [*Q, assistant("blue")]},
        "column 'chosen' (chosen), message 4 (assistant) has empty content",
    ),
    (
        {"chosen": [*Q, assistant("red")], "rejected": "blue"},
        "column 'chosen' (chosen) is a list of messages and column 'rejected' (rejected) is "
        "text — give every answer as a message list",
    ),
    (
        {"chosen": Q, "rejected": [*Q, assistant("blue")]},
        "column 'chosen' (chosen) ends with the user's message — a conversation with an answer "
        "ends with the assistant's message",
    ),
    (
        {"chosen": [assistant("red")], "rejected": [assistant("blue")]},
        "column 'chosen' (chosen) is the assistant's answer alone and the row has no prompt",
    ),
    (
        {"chosen": [*Q, assistant("hm"), assistant("red")], "rejected": [*Q, assistant("b")]},
        "column 'chosen' (chosen): its answer (the last message) follows the assistant's message",
    ),
    (
        {"prompt": OTHER, "chosen": [*Q, assistant("red")], "rejected": [assistant("blue")]},
        "column 'chosen' (chosen) holds messages before its answer that are not the row's prompt "
        "(column 'prompt') — ambiguous",
    ),
    (
        {"prompt": "what colour is my car ?", "chosen": [*Q, assistant("red")], "rejected": [*Q]},
        "column 'chosen' (chosen) holds messages before its answer that are not the row's prompt",
    ),
    (
        {"messages": [*Q, assistant("red")], "response": "red"},
        "column 'messages' (messages) ends with the assistant's answer and column 'response' "
        "(response) has one too — ambiguous",
    ),
    (
        {"responses": [[*Q, assistant("red")], "blue"], "ranking": [0, 1]},
        "column 'responses' (responses), response 1 is a list of messages and column "
        "'responses' (responses), response 2 is text",
    ),
    (
        {"responses": [[*Q, assistant("red")], [*OTHER, assistant("b")]], "ranking": [0, 1]},
        "response 1 and column 'responses' (responses), response 2 hold different conversations",
    ),
    (
        {
            "chosen": [*Q, assistant("red")],
            "rejected": [*Q, assistant("b")],
            "response": [*OTHER, assistant("red")],
        },
        "column 'response' (response) holds messages before its answer that are not the row's "
        "prompt (column 'chosen') — ambiguous",
    ),
    (
        {"prompt": [*Q, assistant("red")], "chosen": "a", "rejected": "b"},
        "column 'prompt' (prompt) ends with the assistant's message — a prompt ends with the "
        "user's turn",
    ),
]


@pytest.mark.parametrize(("bad", "expected"), BAD, ids=[e[:40] for _, e in BAD])
def test_a_bad_conversational_row_is_one_line_naming_file_and_row(
    tmp_path: Path, bad: dict[str, Any], expected: str
) -> None:
    """Mismatched prefixes, empty lists, text beside lists, no answer, ambiguous rows: one
    line naming the file, row 3, the column and the fix (before anything runs)."""
    good = [
        {"chosen": [*Q, assistant("red")], "rejected": [*Q, assistant("blue")]},
        {"chosen": [*OTHER, assistant("red")], "rejected": [*OTHER, assistant("blue")]},
    ]
    if "responses" in bad:
        good = [{"responses": [r["chosen"], r["rejected"]], "ranking": [0, 1]} for r in good]
    if "prompt" in bad:  # good rows with their own prompts
        good = [{**g, "prompt": g["chosen"][:-1]} for g in good]
    if "response" in bad:
        good = [{**g, "response": g["chosen"]} for g in good]
    if "messages" in bad:
        good = [{"messages": [*Q, assistant("red")]}, {"messages": [*OTHER, assistant("red")]}]
    path = tmp_path / "bad.jsonl"
    with pytest.raises(DataError) as info:
        check_rows(path, [*good, bad])
    message = str(info.value)
    assert "\n" not in message and f"{path}: row 3: " in message, message
    assert expected in message, message


def check_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Check ``rows`` as the task checks a file's records, naming ``path`` and each row (Arrow
    cannot hold text beside lists in one column: the records are given as Python objects)."""
    from alignbench_plugins.dataset import ColumnsConfig, check_row, resolve_columns

    names = list(dict.fromkeys(k for r in rows for k in r))
    full = [{k: r.get(k) for k in names} for r in rows]

    class Table:  # the little of datasets.Dataset that resolve_columns reads
        column_names = names

        def __getitem__(self, name: str) -> list[Any]:
            return [r[name] for r in full]

    cols = resolve_columns(path, Table(), ColumnsConfig())  # type: ignore[arg-type]
    for i, row in enumerate(full):
        check_row(f"{path}: row {i + 1}", row, cols)


def test_a_refusal_from_a_file_and_the_command_line(tmp_path: Path, monkeypatch, capsys) -> None:
    """The same refusal through the real reader and `python -m alignbench`: exit 2, one line,
    no folder."""
    rows = ultrafeedback_rows()[:4]
    rows[2] = {"chosen": [*Q, assistant("red")], "rejected": [*OTHER, assistant("blue")]}
    path = write_jsonl(tmp_path / "uf.jsonl", rows)
    with pytest.raises(DataError, match=r"uf.jsonl: row 3: column 'chosen' \(chosen\) and"):
        make_task(path)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["task=dataset", "task.path=uf.jsonl", "logger=none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "uf.jsonl: row 3: column 'chosen' (chosen) and column" in err[0]
    assert not (tmp_path / "results").exists()


def test_text_answers_without_a_prompt_column_keep_their_error(tmp_path: Path) -> None:
    """No prompt column and text answers: the missing column, as before."""
    path = write_jsonl(tmp_path / "p.jsonl", [{"chosen": "a", "rejected": "b"}] * 3)
    with pytest.raises(DataError, match="no column 'prompt' \\(task.columns.prompt\\)"):
        make_task(path)


# -- a rule reward on data without gold answers --------------------------------------------------

TINY_JOB = [*SMALL, "algo=rrhf", "stage.sft.epochs=1"]


@pytest.mark.parametrize("reward", ["exact_match", "abstention"])
def test_a_rule_reward_without_gold_answers_stops_before_stage_1(
    tmp_path: Path, reward: str
) -> None:
    """reward=exact_match / abstention on a file without an answer column: one line naming the
    file and the fixes before stage 1 — no job folder, no stage cache (it failed at the first
    evaluation, after stage 1 had trained)."""
    data = write_jsonl(tmp_path / "data" / "prefs.jsonl", ultrafeedback_rows())
    cache = tmp_path / "cache"
    cfg = compose(
        ["task=dataset", f"task.path={data}", f"reward={reward}", f"cache_dir={cache}", *TINY_JOB]
    )
    with pytest.raises(DataError) as refused:
        run_job(cfg, tmp_path / "job", registry=build_registry())
    message = str(refused.value)
    assert "\n" not in message, message
    assert message.startswith(
        f"reward={reward} judges responses against gold answers, but {data} has no gold answers "
        "(no answer column, or every cell empty) — map them with task.columns.answer=<column>; "
        "or use a reward that needs none ("
    ), message
    assert "reward=rm" in message and "reward=exact_match" not in message.split("needs none")[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no job folder, no cache


def test_the_command_line_refuses_a_rule_reward_without_gold(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "p.jsonl", ultrafeedback_rows())
    capsys.readouterr()
    assert main(["task=dataset", "task.path=p.jsonl", "reward=exact_match", "logger=none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reward=exact_match judges responses against gold answers" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl"]


def test_gold_on_some_prompts_names_the_first_without(tmp_path: Path) -> None:
    """Gold answers on some RL / evaluation prompts only: refused naming how many and the first
    row; on every prompt, or rewards that need none, or a reward that declares nothing: no
    refusal."""
    from alignbench.job import check_gold_answers
    from alignbench.reward import Reward

    rows = [{**r, "answer": r["chosen"][-1]["content"]} for r in ultrafeedback_rows()]
    path = write_jsonl(tmp_path / "g.jsonl", rows)
    registry = build_registry()

    def check(reward: str, path: Path = path, *more: str) -> None:
        cfg = compose(["task=dataset", f"task.path={path}", f"reward={reward}", *more], registry)
        check_gold_answers(registry, cfg, lambda: make_task(path, rl_includes_sft=True))

    for reward in ("exact_match", "abstention", "rm", "length"):
        check(reward)
    rows[4] = {**rows[4], "answer": None}
    rows[7] = {**rows[7], "answer": ""}
    lacking = write_jsonl(tmp_path / "h.jsonl", rows)
    with pytest.raises(DataError) as refused:
        check("exact_match", lacking)
    assert "2 of the 36 RL and evaluation prompts of" in str(refused.value)
    assert "have none (the first: row 5) — give each an answer" in str(refused.value)
    # Evaluation prompts are scored too: only the sft split (without RL on it) is not.
    assert (
        "or put them in the sft split with a split column (and task.rl_includes_sft=false); or use"
        in str(refused.value)
    )

    class Undeclared(Reward):  # a third-party rule reward that declares nothing
        def score(self, rows: list[dict[str, Any]], responses: list[str]) -> list[float]:
            """Nothing to judge."""
            return [0.0] * len(responses)

    class Stub:  # the registry with that reward
        def get(self, group: str, name: str) -> Any:
            return SimpleNamespace(cls=Undeclared if group == "reward" else DatasetTask)

        def names(self, group: str) -> list[str]:
            return ["undeclared"]

    cfg = OmegaConf.create({"task": {"name": "dataset"}, "reward": {"name": "undeclared"}})
    check_gold_answers(Stub(), cfg, lambda: make_task(lacking, rl_includes_sft=True))  # type: ignore[arg-type]


def test_simulated_feedback_without_gold_stops_before_stage_1(tmp_path: Path) -> None:
    """Simulated annotators rank the RL prompts' groups by gold answers: where the reward model
    or DPO asks them, RL prompts without gold are refused in one line naming the sources that
    need none (stage 2 failed there); not where nothing asks them (a rule-free reward, a reward
    model from reward.path), not with rankings by people, not for gold missing on evaluation
    prompts only (a rule reward, which scores those, still is)."""
    from alignbench.job import check_gold_answers

    rows = [{**r, "answer": r["chosen"][-1]["content"]} for r in ultrafeedback_rows()]
    task = make_task(write_jsonl(tmp_path / "g.jsonl", rows), rl_includes_sft=True)
    rl = set(task.splits["rl"]["prompt"])
    test = set(task.splits["test"]["prompt"])
    prompt_of = [r["prompt"] for r in task.data.records]
    registry = build_registry()

    def check(path: Path, *overrides: str) -> None:
        cfg = compose(["task=dataset", f"task.path={path}", *overrides], registry)
        check_gold_answers(registry, cfg, lambda: make_task(path, rl_includes_sft=True))

    no_rl_gold = [{**r, "answer": None} if prompt_of[i] in rl else r for i, r in enumerate(rows)]
    lacking = write_jsonl(tmp_path / "rl.jsonl", no_rl_gold)
    for asks in (["reward=rm"], ["reward=length", "algo=dpo"]):
        with pytest.raises(DataError) as refused:
            check(lacking, *asks, "feedback=simulated")
        message = str(refused.value)
        assert "\n" not in message, message
        assert message.startswith(
            f"feedback=simulated ranks responses by their gold answers, but {len(rl)} of the "
            f"{len(rl)} RL prompts of {lacking} have none (the first: row "
        ), message
        assert message.endswith(
            "; or use rankings by people (feedback=dataset, feedback=file, feedback=page)"
        ), message
    check(lacking, "reward=rm", "feedback=dataset")
    check(lacking, "reward=length", "feedback=simulated")  # no one asks the annotators
    check(lacking, "reward=rm", "reward.path=models/rm", "feedback=simulated")  # no stage 2
    # A rule reward and DPO's simulated rankings: both named, the reward first.
    with pytest.raises(DataError) as refused:
        check(lacking, "reward=exact_match", "algo=dpo", "feedback=simulated")
    assert str(refused.value).startswith("reward=exact_match judges responses against gold")
    assert str(refused.value).endswith(
        " — and as feedback=simulated ranks by gold answers too, a reward model or DPO needs "
        "rankings by people (feedback=dataset, feedback=file, feedback=page)"
    ), str(refused.value)
    # The same where nothing asks the annotators yet: the reward=rm it suggests would.
    with pytest.raises(DataError) as refused:
        check(lacking, "reward=exact_match", "feedback=simulated")
    assert "a reward model or DPO needs rankings by people" in str(refused.value)
    # Gold missing on test prompts only: the annotators never rank those; a rule reward scores them.
    assert test and not test & rl
    no_test_gold = [
        {**r, "answer": None} if prompt_of[i] in test else r for i, r in enumerate(rows)
    ]
    eval_only = write_jsonl(tmp_path / "test.jsonl", no_test_gold)
    check(eval_only, "reward=rm", "feedback=simulated")
    with pytest.raises(DataError, match="RL and evaluation prompts of"):
        check(eval_only, "reward=exact_match")


# -- end to end ----------------------------------------------------------------------------------


def test_conversational_preferences_train_rm_then_dpo(tmp_path: Path) -> None:
    """UltraFeedback-style rows (whole conversations, no prompt column, a multi-turn prefix and
    system messages) with gold answers: SFT -> the reward model on the file's pairs -> DPO
    (about 2 s)."""
    rows = [{**r, "answer": r["chosen"][-1]["content"]} for r in ultrafeedback_rows()]
    data = write_jsonl(tmp_path / "uf.jsonl", rows)
    registry = build_registry()
    cfg = compose(
        [
            "task=dataset",
            f"task.path={data}",
            "task.test_size=6",
            "task.dev_size=0",
            f"cache_dir={tmp_path / 'cache'}",
            *SMALL,
            "algo=dpo",
            "reward=rm",
            "feedback=dataset",
        ],
        registry,
    )
    summary = run_job(cfg, tmp_path / "dpo", registry=registry)
    assert summary["status"] == "finished", summary.get("error")
    # 30 training pairs (36 prompts, 6 held out for the test) trained the reward model.
    assert summary["stage/rm"]["groups"] == 30
    assert summary["stage/rm"]["labels_accuracy_gold"] == 1.0  # the file's pairs: gold first
    assert torch.isfinite(torch.tensor(summary["test/reward"]))
    assert 0.0 <= summary["test/accuracy"] <= 1.0
    written = "".join(p.read_text() for p in (tmp_path / "dpo").rglob("*.jsonl"))
    assert "system: answer with one word | user: i am " in written


# -- review: every cell kind alike -----------------------------------------------------------------


def columnar(messages: list[dict[str, str]]) -> dict[str, list[str]]:
    """A message list in datasets' columnar form (a Sequence of a {role, content} struct)."""
    return {"role": [m["role"] for m in messages], "content": [m["content"] for m in messages]}


def test_columnar_answers_from_save_to_disk_equal_their_lists(tmp_path: Path) -> None:
    """chosen / rejected saved as a Sequence of {role, content} (each cell read back as
    {"role": [...], "content": [...]}): the same records, splits and pairs as the lists (they
    were read as empty: no pair, and no error). A prompt, a ranking's responses and a response
    in that form: the same record as their lists."""
    import datasets

    from alignbench_plugins.dataset import check_row

    struct = datasets.Sequence(
        {"role": datasets.Value("string"), "content": datasets.Value("string")}
    )
    folder = tmp_path / "saved"
    rows = ultrafeedback_rows()
    features = datasets.Features({"chosen": struct, "rejected": struct})
    encoded = [{k: columnar(v) for k, v in r.items()} for r in rows]
    datasets.Dataset.from_list(encoded, features=features).save_to_disk(str(folder))
    assert isinstance(datasets.load_from_disk(str(folder))[0]["chosen"], dict)
    same_data(make_task(folder), make_task(write_jsonl(tmp_path / "t.jsonl", rows)))
    cols = {k: k for k in ("prompt", "responses", "ranking", "response")}
    for messages, a, b in prompts()[:4]:
        listed = {
            "prompt": messages,
            "responses": [[assistant(b)], [*messages, assistant(a)]],
            "ranking": [1, 0],
            "response": [assistant(a)],
        }
        cells = {
            "prompt": columnar(listed["prompt"]),
            "responses": [columnar(r) for r in listed["responses"]],
            "ranking": [1, 0],
            "response": columnar(listed["response"]),
        }
        assert check_row("r", cells, cols) == check_row("r", listed, cols)
        assert check_row("r", cells, cols)["response"] == a


LOOKS_LISTED = [
    ("chosen", "[{'role': 'assistant', 'content': 'red'}]"),
    ("rejected", "  [ {'role': 'assistant', 'content': 'blue'}]"),
    ("chosen", "[]"),
    ("response", "[{'role': 'user', 'content': 'x'}, {'role': 'assistant', 'content': 'y'}]"),
    ("prompt", "[{'role': 'user', 'content': 'what colour is my car ?'}]"),
]


@pytest.mark.parametrize(("column", "cell"), LOOKS_LISTED)
def test_a_csv_cell_that_looks_like_a_list_but_is_not_json_is_refused(
    tmp_path: Path, column: str, cell: str
) -> None:
    """A CSV cell holding pandas' repr of a message list (single quotes) or `[]`: one line
    naming the file, the row, the column and the fix (it was trained on as the text)."""
    from datasets import Dataset

    rows = [
        {"prompt": f"q{i} ?", "chosen": "red", "rejected": "blue", "response": "red"}
        for i in range(6)
    ]
    rows[2][column] = cell
    path = tmp_path / "p.csv"
    Dataset.from_list(rows).to_csv(str(path), index=False)
    with pytest.raises(DataError) as info:
        make_task(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(f"{path}: row 3: column {column!r} ({column}) is text that looks "), (
        message
    )
    what = "prompt" if column == "prompt" else "answer"
    assert message.endswith(f"write the list as JSON (json.dumps), or the {what} as plain text")


def test_text_answers_starting_with_a_bracket_stay_text(tmp_path: Path) -> None:
    """Answers starting with "[" that are not lists of objects ("[1, 2]", "[citation] ...")
    are text, as before."""
    rows = [
        {"prompt": f"q{i} ?", "chosen": "[1, 2]", "rejected": "[citation] no"} for i in range(6)
    ]
    task = make_task(write_jsonl(tmp_path / "b.jsonl", rows))
    assert {r["response"] for r in task.data.records} == {"[1, 2]"}


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        (
            {"chosen": json.dumps([{"content": "red"}]), "rejected": json.dumps([assistant("b")])},
            'column \'chosen\' (chosen), message 1 is not {"role": ..., "content": ...}',
        ),
        (
            {"responses": [[assistant("red")], None], "ranking": [0, 1]},
            "column 'responses' (responses), response 2 is missing or empty — ",
        ),
    ],
)
def test_a_malformed_message_is_named_as_one(
    tmp_path: Path, cell: dict[str, Any], expected: str
) -> None:
    """A message without a role (JSON text) and a null response: named as that message or
    entry, not as text beside lists."""
    row = {"prompt": "what colour is my car ?", **cell}
    with pytest.raises(DataError) as info:
        check_rows(tmp_path / "m.jsonl", [row])
    assert expected in str(info.value), str(info.value)


def test_a_system_message_equal_to_the_task_wide_one_keeps_the_prompt_identity(
    tmp_path: Path,
) -> None:
    """Gold rows as text and pairs as whole conversations that carry task.system_prompt's
    message themselves: identical conversations, so the same prompts, the same split, and the
    pairs' prompts have the gold answers (they were named "system: … | user: Q" and split
    apart: test prompts' pairs trained the reward model)."""
    system = SYSTEM["content"]
    rows: list[dict[str, Any]] = []
    for i in range(30):
        question = f"what colour is thing {i} ?"
        right, wrong = COLOURS[i % 5], COLOURS[(i + 1) % 5]
        rows.append({"prompt": question, "answer": right})
        rows.append(
            {
                "chosen": [SYSTEM, user(question), assistant(right)],
                "rejected": [SYSTEM, user(question), assistant(wrong)],
            }
        )
    task = make_task(write_jsonl(tmp_path / "g.jsonl", rows), system_prompt=system)
    records = task.data.records
    assert len({r["prompt"] for r in records}) == 30
    for gold, pair in zip(records[::2], records[1::2], strict=True):
        assert gold["prompt"] == pair["prompt"] == gold["conversation"][-1]["content"]
        assert gold["conversation"] == pair["conversation"]
    assert task.missing_gold() is None
    for split in ("dev", "test"):
        assert all(r["answers"] for r in task.splits[split].to_list())


def test_prompt_column_off_reads_prompts_from_the_conversations(tmp_path: Path) -> None:
    """task.columns.prompt='' (Capybara: a prompt column holding the first user turn of
    multi-turn answers): the prompts are read from the answers' conversations, as without the
    column (it was "no column ''"; left on, the rows are refused as ambiguous)."""
    from alignbench_plugins.dataset import ColumnsConfig

    rows = [
        {"prompt": m[0]["content"] if m[0]["role"] == "user" else m[1]["content"], **r}
        for (m, _, _), r in zip(prompts(), ultrafeedback_rows(), strict=True)
    ]
    path = write_jsonl(tmp_path / "capybara.jsonl", rows)
    with pytest.raises(DataError, match="ambiguous") as refused:
        make_task(path)
    assert str(refused.value).endswith(
        ", or read each prompt from the conversations (task.columns.prompt='')"
    )
    off = make_task(path, columns=ColumnsConfig(prompt=""))
    same_data(off, make_task(write_jsonl(tmp_path / "u.jsonl", ultrafeedback_rows())))


# -- Anthropic HH-RLHF's raw transcripts ----------------------------------------------------------


def hh_text(messages: list[dict[str, str]]) -> str:
    """``messages`` (user / assistant turns) as HH-RLHF writes a transcript."""
    names = {"user": "Human", "assistant": "Assistant"}
    return "".join(f"\n\n{names[m['role']]}: {m['content']}" for m in messages)


def hh_prompts() -> list[tuple[list[dict[str, str]], str, str]]:
    """The test prompts without system messages (HH has none)."""
    return [(m, a, b) for m, a, b in prompts() if m[0]["role"] != "system"]


@pytest.mark.parametrize("form", ["transcripts", "prompt_column"])
def test_hh_rlhf_transcripts_equal_message_lists(tmp_path: Path, form: str) -> None:
    """HH-RLHF's raw chosen / rejected text (``\\n\\nHuman: …\\n\\nAssistant: …``, multi-turn)
    reads as the same conversations given as message lists: the same records, splits and
    groups; so does a prompt column in HH's form, ending with an empty ``Assistant:``."""
    listed = [
        {"chosen": [*m, assistant(a)], "rejected": [*m, assistant(b)]} for m, a, b in hh_prompts()
    ]
    rows = [{k: hh_text(v) for k, v in r.items()} for r in listed]
    if form == "prompt_column":
        rows = [
            {"prompt": hh_text(m) + "\n\nAssistant:", **r}
            for (m, _, _), r in zip(hh_prompts(), rows, strict=True)
        ]
        listed = [{"prompt": m, **r} for (m, _, _), r in zip(hh_prompts(), listed, strict=True)]
    hh = make_task(write_jsonl(tmp_path / "hh.jsonl", rows))
    same_data(hh, make_task(write_jsonl(tmp_path / "listed.jsonl", listed)))
    record = hh.data.records[0]
    assert record["conversation"][-1] == user("what colour is my car ?")
    assert [len(r["conversation"]) for r in hh.data.records] == [3] * len(rows)


def test_hh_text_is_read_only_where_it_is_a_transcript() -> None:
    """Text that does not open as HH's do (a blank line, then ``Human:``) or has no
    ``Assistant:`` turn stays text; a ``Human:`` inside a turn (not after a blank line) stays
    in it; contents are stripped; only a prompt drops a trailing empty ``Assistant:``."""
    from alignbench_plugins.dataset import hh_messages

    assert hh_messages("the answer is red") is None
    assert hh_messages("\n\nHuman: only a question") is None
    assert hh_messages("Assistant: red\n\nHuman: why") is None
    # A few-shot prompt in HH's words but not its opening blank line stays text.
    assert hh_messages("Human: 2+2?\n\nAssistant: 4\n\nHuman: 3+3?") is None
    # A trailing empty Assistant: is a prompt's (dropped there), an answer's empty message.
    assert hh_messages("\n\nHuman: q\n\nAssistant:", prompt=True) == [user("q")]
    assert hh_messages("\n\nHuman: q\n\nAssistant:") == [user("q"), assistant("")]
    assert hh_messages("\n\nHuman: say 'Human: hi'\n\nAssistant:  Human: hi ") == [
        user("say 'Human: hi'"),
        assistant("Human: hi"),
    ]


def test_a_bad_hh_transcript_is_one_line_naming_the_row(tmp_path: Path) -> None:
    """An HH pair whose chosen transcript ends with an empty ``Assistant:`` (no answer) is
    refused naming the file, the row, the column and the empty message (drop the row)."""
    good = {
        "chosen": hh_text([user("i am ada ."), assistant("red")]),
        "rejected": hh_text([user("i am ada ."), assistant("blue")]),
    }
    bad = {"chosen": hh_text([user("i am bo .")]) + "\n\nAssistant:", "rejected": good["rejected"]}
    path = tmp_path / "hh.jsonl"
    with pytest.raises(DataError) as info:
        check_rows(path, [good, good, bad])
    message = str(info.value)
    assert "\n" not in message, message
    assert message == (
        f"{path}: row 3: column 'chosen' (chosen), message 2 (assistant) has empty content — "
        "write the message or drop it"
    ), message
