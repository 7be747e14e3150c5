"""The reward-model study command: runs a tiny grid and writes its table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignbench.rm_study import main
from tests.conftest import TINY

#: The tiny world of the other tests, with a reward model small and quick enough for a grid.
STUDY = [
    *[o for o in TINY if o.split("=")[0].startswith(("task.", "model.", "stage."))],
    "stage.rm.epochs=2",
    "feedback.k=3",
    "feedback.pool_factor=2",
    "threads=1",
]


@pytest.mark.slow
def test_study_writes_its_table(tmp_path: Path, cache_dir: Path) -> None:
    """Every selection x budget x seed is trained; the report has references and differences."""
    out = tmp_path / "report.md"
    argv = ["--seeds", "2", "--budgets", "6,10", "--out", str(out)]
    assert main([*argv, *STUDY, f"cache_dir={cache_dir}"]) == 0
    text = out.read_text()
    assert "python -m alignbench.rm_study --seeds 2 --budgets 6,10" in text
    assert "- Commit: `" in text and "- Date: " in text
    for row in ("| always abstain (reference) |", "| gold utility (ceiling) |  | 1.000 |"):
        assert row in text
    for selection in ("random", "uncertainty", "diversity"):
        for labels in (6, 10):
            assert f"| {selection} | {labels} | " in text
    assert "| uncertainty − random | 6 | " in text and "| diversity − random | 10 | " in text
    assert "samples + demonstration" in text  # the contrast census
    raw = json.loads(out.with_suffix(".json").read_text())
    assert len(raw["runs"]) == 3 * 2 * 2
    assert {r["seed"] for r in raw["runs"]} == {0, 1}
    assert all(0.0 <= r["probe/accuracy"] <= 1.0 for r in raw["runs"])
    # The Markdown can be rewritten from the saved numbers alone, identically.
    out.write_text("")
    assert main(["--out", str(out), "--report-only"]) == 0
    assert out.read_text() == text
