"""The completions behind every evaluation: a JSON-lines file per eval set and a W&B table."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from alignbench.observers import WandbLogger, completions_path, write_completions
from tests.test_wandb import _run, fake_wandb  # noqa: F401 - the fake wandb module fixture


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_completions_file_agrees_with_the_metrics_of_the_same_evaluation(
    tiny_job: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    """The final test-set file reproduces test/reward, gold reward and the verdict shares."""
    summary = tiny_job("algo=sft")
    out = tmp_path / "out"
    steps = summary["steps"]
    names = sorted(p.name for p in (out / "completions").iterdir())
    # Every eval set at the initial (step 0) and the final evaluation; no temp files left.
    assert names == sorted(
        f"{p}_step{s}.jsonl" for p in ("dev", "eval_rl", "test") for s in (0, steps)
    )
    records = _read(completions_path(out, "test", steps))
    assert records and set(records[0]) >= {
        "prompt",
        "response",
        "reward",
        "gold_reward",
        "verdict",
        "kind",
    }
    mean = sum(r["reward"] for r in records) / len(records)
    assert mean == pytest.approx(summary["test/reward"], abs=1e-6)
    gold = sum(r["gold_reward"] for r in records) / len(records)
    assert gold == pytest.approx(summary["test/gold_reward"], abs=1e-9)
    known = [r for r in records if r["known"]]
    share = sum(r["verdict"] == "correct" for r in known) / len(known)
    assert share == pytest.approx(summary["test/accuracy_known"], abs=1e-9)
    obscure = [r for r in records if r["kind"] == "obscure" and not r["known"]]
    if obscure:
        abstained = sum(r["verdict"] == "abstain" for r in obscure) / len(obscure)
        assert abstained == pytest.approx(summary["test/abstain_unknown_obscure"], abs=1e-9)
    # The initial evaluation's file matches the initial metrics recorded in the summary.
    first = _read(completions_path(out, "dev", 0))
    first_mean = sum(r["reward"] for r in first) / len(first)
    assert first_mean == pytest.approx(summary["initial"]["dev/reward"], abs=1e-6)


def test_completions_are_written_atomically(tmp_path: Path) -> None:
    """A rewrite replaces the file whole (temp file + rename); NaN becomes null (strict JSON)."""
    records = [{"prompt": "q", "response": "a", "reward": float("nan"), "verdict": None}]
    (path,) = write_completions(tmp_path, 3, {"test": records})
    assert path == tmp_path / "completions" / "test_step3.jsonl"
    assert _read(path) == [{"prompt": "q", "response": "a", "reward": None, "verdict": None}]
    write_completions(tmp_path, 3, {"test": records * 2})
    assert len(_read(path)) == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["test_step3.jsonl"]


def test_completions_are_a_wandb_table_per_eval_set(
    tmp_path: Path,
    fake_wandb: Callable[..., Any],  # noqa: F811 - the fixture imported above
) -> None:
    """`completions/<prefix>` is logged as a table beside the metrics, against budget/flops."""
    wandb = fake_wandb()
    logger = WandbLogger(_run(tmp_path), "sweep-a", tags=[])
    records = [
        {"prompt": "q1", "response": "a", "reward": 1.0, "verdict": "correct", "kind": "famous"},
        {"prompt": "q2", "response": "b", "reward": -1.0, "verdict": "wrong", "kind": "obscure"},
    ]
    logger.alignbench_on_eval(
        metrics={"budget/flops": 5.0, "test/reward": 0.0}, samples={"test": records}
    )
    (logged,) = [c[1] for c in wandb.calls if c[0] == "log"]
    table = logged["completions/test"]
    assert table.columns == ["prompt", "response", "reward", "verdict", "kind"]
    assert table.data[1] == ["q2", "b", -1.0, "wrong", "obscure"]
    assert logged["budget/flops"] == 5.0
