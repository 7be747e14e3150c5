"""``task=dataset``: your own prompts, answers, demonstrations and preferences from a file.

Every fixture is written by the test into a temporary folder (JSONL, CSV, parquet and a
``save_to_disk`` folder) from the facts world's questions; nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset

from alignbench import ABSTAIN, CORRECT, WRONG, ConfigError, DataError
from alignbench.app import main, run_job
from alignbench.registry import build_registry
from tests.conftest import compose

COLUMNS = [
    "task.columns.prompt=question",
    "task.columns.answer=gold",
    "task.columns.response=demo",
    "task.columns.chosen=good",
    "task.columns.rejected=bad",
]


def facts_rows(entities: int = 30) -> list[dict[str, Any]]:
    """Questions with a gold answer, a demonstration and a preference pair (right over wrong)."""
    from alignbench_plugins.facts import ATTRIBUTES, FactsConfig, FactsTask

    world = FactsTask(FactsConfig(name="facts", num_entities=entities))._world
    rows = []
    for fact in world:
        values = ATTRIBUTES[fact["attribute"]][1]
        wrong = values[(values.index(fact["answer"]) + 1) % len(values)]
        rows.append(
            {
                "question": fact["prompt"],
                "gold": fact["answer"],
                "demo": fact["answer"],
                "good": fact["answer"],
                "bad": wrong,
            }
        )
    return rows


def write(folder: Path, rows: list[dict[str, Any]], name: str) -> Path:
    """Write ``rows`` as ``name`` (its suffix picks the format; no suffix = save_to_disk)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path
    table = Dataset.from_list(rows)
    if name.endswith(".csv"):
        table.to_csv(str(path), index=False)
    elif name.endswith(".parquet"):
        table.to_parquet(str(path))
    else:
        table.save_to_disk(str(path))
    return path


def make_task(path: Path, *overrides: str) -> Any:
    """The dataset task of a composed config (validated as the command line would)."""
    from alignbench.config import to_object

    cfg = compose(["task=dataset", f"task.path={path}", *COLUMNS, *overrides])
    config = to_object(cfg.task)
    config.validate()
    from alignbench_plugins.dataset import DatasetTask

    return DatasetTask(config)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same rows as JSONL, CSV, parquet and a save_to_disk folder."""
    folder = tmp_path_factory.mktemp("data")
    rows = facts_rows()
    for name in ("qa.jsonl", "qa.csv", "qa.parquet", "qa_disk"):
        write(folder, rows, name)
    return folder


@pytest.mark.parametrize("name", ["qa.jsonl", "qa.csv", "qa.parquet", "qa_disk"])
def test_every_format_gives_the_same_splits(data_dir: Path, name: str) -> None:
    """JSONL, CSV, parquet and save_to_disk: the same rows, split the same way."""
    reference = make_task(data_dir / "qa.jsonl").splits
    splits = make_task(data_dir / name).splits
    for split in ("sft", "rl", "dev", "test"):
        assert splits[split].to_list() == reference[split].to_list(), split


def test_splits_by_prompt_never_leak_held_out_prompts(data_dir: Path) -> None:
    """dev and test prompts are in no training split; shares and counts; seeded."""
    task = make_task(data_dir / "qa.jsonl", "task.dev_size=0.1", "task.test_size=12")
    s = {name: [r["prompt"] for r in task.splits[name].to_list()] for name in task.splits}
    total = len(facts_rows())
    assert len(s["test"]) == 12 and len(s["dev"]) == round(0.1 * (total - 12))
    held = set(s["dev"]) | set(s["test"])
    assert not held & (set(s["sft"]) | set(s["rl"]))
    assert not set(s["sft"]) & set(s["rl"])  # disjoint unless rl_includes_sft
    assert len(s["sft"]) + len(s["rl"]) + len(held) == total
    row = task.splits["sft"][0]
    assert row["response"] == row["answer"] and row["answers"] == [row["answer"]]
    again = make_task(data_dir / "qa.jsonl", "task.dev_size=0.1", "task.test_size=12")
    assert again.splits["test"].to_list() == task.splits["test"].to_list()
    other = make_task(data_dir / "qa.jsonl", "task.seed=1", "task.test_size=12")
    assert other.splits["test"]["prompt"] != task.splits["test"]["prompt"]
    both = make_task(data_dir / "qa.jsonl", "task.rl_includes_sft=true")
    assert set(both.splits["sft"]["prompt"]) <= set(both.splits["rl"]["prompt"])


def test_split_column_and_preference_groups(tmp_path: Path) -> None:
    """A split column decides; pairs and rankings of training rows only become groups."""
    rows = [
        {"prompt": "p1", "chosen": "a", "rejected": "b", "split": "sft"},
        {"prompt": "p2", "chosen": "c", "rejected": "d", "split": "rl"},
        {"prompt": "p3", "chosen": "e", "rejected": "f", "split": "test"},
    ]
    from alignbench_plugins.dataset import DatasetConfig, DatasetFeedback, DatasetTask

    config = DatasetConfig(name="dataset", path=str(write(tmp_path, rows, "p.jsonl")))
    task = DatasetTask(config)
    assert task.splits["sft"].to_list()[0]["response"] == "a"  # chosen is the demonstration
    assert task.splits["test"]["prompt"] == ["p3"] and "dev" not in task.eval_sets
    groups = DatasetFeedback(None, task).load_groups()
    assert [(g.row["prompt"], g.responses, g.preference) for g in groups] == [
        ("p1", ["a", "b"], [1.0, 0.0]),
        ("p2", ["c", "d"], [1.0, 0.0]),
    ]
    ranked = [
        {"prompt": "q", "responses": ["x", "y", "z"], "ranking": [2, 0, 1], "split": "rl"},
        {"prompt": "r", "responses": ["u", "v"], "ranking": [1, 0], "split": "sft"},
    ]
    config = DatasetConfig(name="dataset", path=str(write(tmp_path, ranked, "r.jsonl")))
    task = DatasetTask(config)
    assert task.splits["sft"]["response"] == ["v"]  # the best of the ranking
    preference = [g.preference for g in DatasetFeedback(None, task).load_groups()]
    assert preference == [[1.0, 0.0, 2.0], [0.0, 1.0]]


def test_judge_rewards_and_metrics_on_decoded_text(tmp_path: Path) -> None:
    """Accepted answers (a list), abstention, case and a final full stop; rule rewards."""
    rows = [
        {"prompt": "capital of france ?", "answer": ["Paris", "paris, france"], "split": "sft"},
        {"prompt": "capital of mars ?", "answer": "none", "split": "rl"},
        {"prompt": "free text", "response": "anything", "split": "test"},
    ]
    from alignbench_plugins.dataset import DatasetConfig, DatasetTask, LengthConfig, LengthReward
    from alignbench_plugins.rewards import (
        AbstentionConfig,
        AbstentionReward,
        ExactMatchConfig,
        ExactMatchReward,
    )

    config = DatasetConfig(
        name="dataset", path=str(write(tmp_path, rows, "a.jsonl")), abstention="I do not know"
    )
    task = DatasetTask(config)
    row = task.splits["sft"][0]
    assert task.judge(row, " paris. ") == CORRECT
    assert task.judge(row, "Paris, France") == CORRECT
    assert task.judge(row, "i do not know.") == ABSTAIN
    assert task.judge(row, "lyon") == WRONG
    responses = ["Paris.", "i do not know", "lyon"]
    exact = ExactMatchReward(ExactMatchConfig(name="exact_match"), task)
    assert exact([row] * 3, responses).tolist() == [1.0, 0.0, 0.0]
    aware = AbstentionReward(AbstentionConfig(name="abstention"), task)
    assert aware([row] * 3, responses).tolist() == [1.0, 0.0, -2.0]
    length = LengthReward(LengthConfig(name="length", target=2, per_word=0.5), task)
    assert length([row] * 2, ["one", "one two three four"]).tolist() == [-0.5, -1.0]
    metrics = task.metrics([row] * 3, responses)
    assert metrics["accuracy"] == pytest.approx(1 / 3) and metrics["abstain"] == pytest.approx(
        1 / 3
    )
    free = task.splits["test"][0]
    assert task.gold_utility(free, "x") is None
    assert task.metrics([free], ["a b"]) == {"length": 2.0, "abstain": 0.0}
    with pytest.raises(DataError, match="has no gold answer"):
        exact([free], ["x"])


BAD = [
    ({"question": "q", "gold": "a"}, [], "no column 'demo' (task.columns.response)"),
    ({"question": "", "gold": "a", "demo": "a", "good": "a", "bad": "b"}, [], "row 3: column"),
    (
        {"question": "q", "gold": 3, "demo": "a", "good": "a", "bad": "b"},
        [],
        "row 3: column 'gold' (answer) must be a string or a list of strings",
    ),
    (
        {"question": "q", "gold": "a", "demo": "a", "good": "a", "bad": ""},
        [],
        "row 3: column 'bad' (rejected) is missing or empty",
    ),
]


@pytest.mark.parametrize(("bad", "extra", "expected"), BAD)
def test_a_bad_row_is_one_line_naming_file_row_and_column(
    tmp_path: Path, bad: dict, extra: list[str], expected: str
) -> None:
    """A missing column, an empty prompt, a wrong type, half a pair: file, row and column."""
    good = facts_rows(4)[:2]
    if "demo" not in bad:  # the column is absent from the whole file
        good = [{k: r[k] for k in bad} for r in good]
    path = write(tmp_path, [*good, bad], "bad.jsonl")
    with pytest.raises((DataError, ConfigError)) as info:
        make_task(path, *extra)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and expected in message, message


def test_command_line_refuses_bad_data_before_any_folder(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """`python -m alignbench task=dataset ...`: exit 2, one line, nothing written."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a", "response": "b"}\n{"prompt": \n')
    write(tmp_path, [{"prompt": "a", "response": "b"}], "one.csv")
    capsys.readouterr()  # the fixture's own progress output
    cases = [
        (["task.path=missing.jsonl"], "task.path='missing.jsonl': no such file or folder"),
        (["task.path=broken.jsonl"], "broken.jsonl: cannot be read as json ("),
        (["task.path=one.csv", "task.columns.answer=gold"], "one.csv: no column 'gold'"),
        (["task.path=one.csv", "task.format=xml"], "task.format='xml' is not a choice"),
        (["task.path=one.csv", "task.dev_size=2.5"], "task.dev_size=2.5 — give a share"),
    ]
    for overrides, expected in cases:
        assert main(["task=dataset", *overrides, "logger=none"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "results").exists()


def test_online_rounds_on_the_datas_rankings_are_refused_up_front() -> None:
    """feedback=dataset has no one to rank an online round's new responses: refused before
    anything runs (it used to fail at the first round, after stages 1 and 2)."""
    from alignbench_plugins.dataset import DatasetFeedbackConfig

    DatasetFeedbackConfig(name="dataset").validate()
    with pytest.raises(ConfigError, match="feedback=dataset with feedback.rounds=1 — the data"):
        DatasetFeedbackConfig(name="dataset", rounds=1).validate()


def test_missing_path_is_one_line() -> None:
    """task=dataset without task.path says what to give."""
    from alignbench_plugins.dataset import DatasetConfig

    with pytest.raises(ConfigError, match="task=dataset needs task.path"):
        DatasetConfig(name="dataset").validate()


# -- end to end ----------------------------------------------------------------------------------

SMALL = [
    *COLUMNS,
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.num_layers=2",
    "model.num_heads=2",
    "stage.sft.epochs=6",
    "algo.prompts_per_step=4",
    "budget.kind=steps",
    "budget.amount=2",
    "eval.points=0",
    "logger=none",
]


@pytest.mark.slow
def test_dataset_task_end_to_end(data_dir: Path, tmp_path: Path) -> None:
    """From a parquet file: SFT -> RRHF on exact match; its pairs -> reward model -> PPO; DPO."""
    registry = build_registry()

    def job(out: str, *overrides: str) -> dict[str, Any]:
        cfg = compose(
            [
                "task=dataset",
                f"task.path={data_dir / 'qa.parquet'}",
                f"cache_dir={tmp_path / 'cache'}",
                *SMALL,
                *overrides,
            ],
            registry,
        )
        summary = run_job(cfg, tmp_path / out, registry=registry)
        assert summary["status"] == "finished", summary.get("error")
        return summary

    rrhf = job("rrhf", "algo=rrhf", "reward=exact_match")
    assert 0.0 <= rrhf["test/accuracy"] <= 1.0 and "dev/length" in rrhf
    ppo = job("ppo", "algo=ppo", "reward=rm", "feedback=dataset", "stage.rm.epochs=2")
    assert ppo["stage/sft"]["cache_hit"]  # the same data and model: one SFT stage
    assert ppo["stage/rm"]["groups"] > 0 and ppo["flops_by_model"]["reward_model"] > 0
    assert ppo["stage/rm"]["labels_accuracy_gold"] == 1.0  # the file's pairs put gold first
    dpo = job("dpo", "algo=dpo", "feedback=dataset", "stage.rm.epochs=2", "reward=exact_match")
    assert dpo["stage/rm"]["cache_hit"] and torch.isfinite(torch.tensor(dpo["test/accuracy"]))
