"""The comparison command: grouping by overrides minus seed, intervals, failed jobs shown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignbench.compare import bootstrap_ci, main


def _job(sweep: Path, name: str, overrides: list[str], summary: dict | None) -> None:
    folder = sweep / name
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))


def _summary(algo: str, hallucination: float, status: str = "finished") -> dict:
    return {
        "status": status,
        "algorithm": algo,
        "eval/hallucination_unknown": hallucination,
        "initial": {"eval/hallucination_unknown": 0.8},
        "stage/sft": {"key": "abcdef0123456789"},
    }


def test_bootstrap_interval_contains_the_mean_and_shrinks_to_a_point() -> None:
    """The 95% interval brackets the mean; one value gives a point; equal values a point."""
    low, high = bootstrap_ci([0.1, 0.5, 0.3, 0.2])
    assert low <= 0.275 <= high and low < high
    assert bootstrap_ci([0.4]) == (0.4, 0.4)
    assert bootstrap_ci([0.2, 0.2, 0.2]) == pytest.approx((0.2, 0.2))


def test_table_groups_seeds_and_shows_failures(tmp_path: Path, capsys) -> None:
    """Seeds of one algorithm form one row; failed and unfinished jobs are counted, not hidden."""
    sweep = tmp_path / "sweep"
    _job(sweep, "0", ["algo=ppo", "seed=0"], _summary("ppo", 0.4))
    _job(sweep, "1", ["algo=ppo", "seed=1"], _summary("ppo", 0.6))
    _job(sweep, "2", ["algo=ppo", "seed=2"], _summary("ppo", 0.9, status="failed"))
    _job(sweep, "3", ["algo=rrhf", "seed=0"], _summary("rrhf", 0.3))
    _job(sweep, "4", ["algo=rrhf", "seed=1"], None)  # never finished
    assert main([str(sweep), "--metric", "eval/hallucination_unknown"]) == 0
    table = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    assert "| 2/3 | 0.500 [0.400, 0.600] |" in rows["`algo=ppo`"]
    assert "| 1/2 | 0.300 |" in rows["`algo=rrhf`"]  # one seed: no interval to show
    assert "| — | 0.800 |" in rows["stage-1 SFT model `abcdef01`"]
    assert (sweep / "comparison.md").read_text().strip() == table.strip()


def test_several_sweeps_make_one_table(tmp_path: Path, capsys) -> None:
    """Two sweep folders compare in one table written where --out says."""
    _job(tmp_path / "a", "0", ["algo=ppo", "seed=0"], _summary("ppo", 0.4))
    _job(tmp_path / "b", "0", ["algo=ppo", "algo.ptx_coef=0", "seed=0"], _summary("ppo", 0.5))
    out = tmp_path / "report.md"
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    text = out.read_text()
    assert "`algo=ppo`" in text and "`algo=ppo algo.ptx_coef=0`" in text


def test_not_a_sweep_is_one_line(tmp_path: Path, capsys) -> None:
    """A folder without jobs is a one-line error and exit code 2."""
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds no jobs" in err and "\n" not in err
