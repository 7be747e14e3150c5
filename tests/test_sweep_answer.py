"""A multirun ends with an answer: the comparison table, the plot paths, the model paths."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from alignbench.answer import sweep_answer
from tests.conftest import TINY


@pytest.mark.slow
def test_multirun_ends_with_table_plots_and_loadable_models(tmp_path: Path) -> None:
    """`python -m alignbench algo=sft,rrhf --multirun`: the last lines are the answer."""
    done = subprocess.run(
        [sys.executable, "-m", "alignbench", "algo=sft,rrhf", "--multirun", *TINY]
        + ["hydra.sweep.dir=sweep"],
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    answer = out[out.index("== Comparison of sweep (2 jobs) ==") :]
    assert "| group | seeds |" in answer and "Made by:" not in answer
    rows = [line for line in answer.splitlines() if line.startswith("| `algo=")]
    names = {r.split("|")[1].strip().removesuffix(" (baseline)") for r in rows}
    assert names == {"`algo=sft`", "`algo=rrhf`"}
    assert "Full report: sweep/comparison.md" in answer
    assert (tmp_path / "sweep" / "comparison.md").is_file()
    plots = re.findall(r"^  (sweep/comparison_\S+\.png)$", answer, re.M)
    assert plots and all((tmp_path / p).is_file() for p in plots)
    models = re.findall(r"^  (\S+/model)$", answer, re.M)
    assert len(models) == 2
    from transformers import AutoModelForCausalLM

    for folder in models:
        path = Path(folder) if Path(folder).is_absolute() else tmp_path / folder
        assert AutoModelForCausalLM.from_pretrained(path) is not None


def test_a_folder_without_jobs_has_no_answer(tmp_path: Path) -> None:
    assert sweep_answer(tmp_path) == ""
    assert sweep_answer(tmp_path / "missing") == ""
