"""compare: one-line warnings when a table mixes tasks, budgets or SFT starts, and group names
without noise (ignored keys, overrides that restate a default, long floats)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from alignbench.report.cli import main
from alignbench.report.jobs import short_number


def _job(
    sweep: Path,
    name: str,
    overrides: list[str],
    *,
    algo: str = "ppo",
    task: dict | None = None,
    budget: tuple[str, float] = ("flops", 6e11),
    sft_key: str = "abcdef0123456789",
    world: int = 0,
    lr: float = 3e-4,
) -> None:
    """A finished job folder: overrides, composed config and summary, as a real job writes them."""
    folder = sweep / name
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    config = {
        "algo": {"name": algo, "lr": lr},
        "task": {"name": "facts", "seed": world, "num_entities": 600, **(task or {})},
        "budget": {"kind": budget[0], "amount": budget[1]},
        "threads": 0,
    }
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    summary = {
        "status": "finished",
        "algorithm": algo,
        "task": config["task"]["name"],
        "world": world,
        "test/reward": 0.5,
        "stage/sft": {"key": sft_key},
    }
    (folder / "summary.json").write_text(json.dumps(summary))


def _compare(capsys: pytest.CaptureFixture[str], *sweeps: Path) -> tuple[str, list[str]]:
    """Run compare (no plots); returns the table and the warning lines on stderr."""
    assert main([*map(str, sweeps), "--metric", "test/reward", "--no-plots"]) == 0
    captured = capsys.readouterr()
    return captured.out, [line for line in captured.err.splitlines() if line]


@pytest.mark.parametrize(
    ("text", "short"),
    [
        ("100000000000.0", "1e11"),
        ("9600000000000.0", "9.6e12"),
        ("600000000000.0", "6e11"),
        ("0.0003", "3e-4"),
        ("0.05", "0.05"),
        ("100.0", "100"),
        ("12345678", "12345678"),  # an integer is never rewritten
        ("ppo", "ppo"),
    ],
)
def test_numbers_print_short(text: str, short: str) -> None:
    assert short_number(text) == short


def test_group_names_drop_noise_and_print_budgets_short(tmp_path: Path, capsys) -> None:
    """`threads=1` and an override equal to the default go; `budget.amount=1e11` stays short."""
    a, b = tmp_path / "a", tmp_path / "b"
    _job(a, "0", ["algo=ppo", "seed=0"])
    _job(a, "1", ["algo=rrhf", "seed=0"], algo="rrhf")
    # Sweep b restates PPO's default lr and sets threads: the same configuration as sweep a's.
    _job(b, "0", ["algo=ppo", "algo.lr=0.0003", "threads=1", "seed=1"])
    table, warnings = _compare(capsys, a, b)
    assert "| `algo=ppo` (baseline) | 2/2 |" in table  # one group, not two
    assert "threads" not in table and "algo.lr" not in table
    assert warnings == []
    c = tmp_path / "c"
    _job(c, "0", ["algo=ppo", "budget.amount=100000000000.0"], budget=("flops", 1e11))
    _job(c, "1", ["algo=ppo", "budget.amount=600000000000.0"], budget=("flops", 6e11))
    table, warnings = _compare(capsys, c)
    assert "`algo=ppo budget.amount=1e11`" in table and "`algo=ppo budget.amount=6e11`" in table
    assert "100000000000.0" not in table
    assert warnings == []  # the budgets are grouped apart


def test_a_group_that_mixes_budgets_is_one_warning_line(tmp_path: Path, capsys) -> None:
    """Two sweeps run at different default budgets land in one group: warned, in one line."""
    a, b = tmp_path / "a", tmp_path / "b"
    _job(a, "0", ["algo=ppo", "seed=0"], budget=("flops", 6e11))
    _job(b, "0", ["algo=ppo", "seed=1"], budget=("flops", 1e11))
    table, warnings = _compare(capsys, a, b)
    assert warnings == [
        "warning: group `algo=ppo` mixes budgets: flops 1e11, flops 6e11 — keep them apart "
        "with --group-by budget.amount or --where"
    ]
    assert f"**{warnings[0]}**" in table  # and in comparison.md


def test_groups_at_different_budgets_are_warned_unless_named(tmp_path: Path, capsys) -> None:
    """PPO from one sweep against RRHF from another at another budget: an unfair table."""
    a, b = tmp_path / "a", tmp_path / "b"
    _job(a, "0", ["algo=ppo"], budget=("flops", 6e11))
    _job(b, "0", ["algo=rrhf"], algo="rrhf", budget=("steps", 100.0))
    _, warnings = _compare(capsys, a, b)
    assert len(warnings) == 1
    assert warnings[0].startswith("warning: the groups were run with different budgets (")
    assert "`algo=ppo`: flops 6e11" in warnings[0] and "`algo=rrhf`: steps 100" in warnings[0]


def test_a_group_that_mixes_tasks_is_one_warning_line(tmp_path: Path, capsys) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _job(a, "0", ["algo=ppo"])
    _job(b, "0", ["algo=ppo", "seed=1"], task={"name": "rubric"})
    _, warnings = _compare(capsys, a, b)
    assert warnings == [
        "warning: group `algo=ppo` mixes tasks: facts, rubric — keep them apart with "
        "--group-by task or --where"
    ]


def test_a_task_setting_is_a_different_task(tmp_path: Path, capsys) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _job(a, "0", ["algo=ppo"])
    _job(b, "0", ["algo=ppo", "seed=1"], task={"num_entities": 40})
    _, warnings = _compare(capsys, a, b)
    assert len(warnings) == 1 and "mixes tasks" in warnings[0] and "num_entities" in warnings[0]


def test_different_sft_starts_in_one_world_are_warned(tmp_path: Path, capsys) -> None:
    """Same world, other stage-1 model (e.g. a changed model default): one line; worlds are not."""
    a, b = tmp_path / "a", tmp_path / "b"
    _job(a, "0", ["algo=ppo", "seed=0"], sft_key="1111111111")
    _job(b, "0", ["algo=ppo", "seed=1"], sft_key="2222222222")
    _, warnings = _compare(capsys, a, b)
    assert warnings == [
        "warning: group `algo=ppo` mixes stage-1 SFT models in world 0: 11111111, 22222222 — "
        "their model, stage.sft settings or code differ; compare jobs of one SFT model "
        "(--where, or rerun with cache_rebuild=true)"
    ]
    c = tmp_path / "c"  # two worlds, two SFT models: that is what worlds are, no warning
    _job(c, "0", ["algo=ppo", "world=0"], sft_key="1111111111", world=0)
    _job(c, "1", ["algo=ppo", "world=1"], sft_key="2222222222", world=1)
    _, warnings = _compare(capsys, c)
    assert warnings == []
    d = tmp_path / "d"  # across groups of one world, not named apart
    _job(d, "0", ["algo=ppo"], sft_key="1111111111")
    _job(d, "1", ["algo=rrhf"], algo="rrhf", sft_key="3333333333")
    _, warnings = _compare(capsys, d)
    assert len(warnings) == 1
    assert warnings[0].startswith("warning: in world 0 the groups start from different stage-1")
