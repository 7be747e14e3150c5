"""Every script in benchmarks/ still runs: each one's --smoke mode, as a subprocess.

A benchmark is a script that prints one or more ratio lines, ``<what> / <baseline> = <number>``
(for example ``PPO-ptx step / lower bound = 1.05``), and has a ``--smoke`` mode that runs a
couple of steps of tiny models in seconds and says so in its output (the word ``smoke``, so a
script that silently ignores the flag fails too). Scripts are found by glob, so a new one is covered
without touching this file.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# `_common.py` and the like are what the scripts share, not benchmarks.
BENCHMARKS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))
RATIO_LINE = re.compile(r"^\S.* / .+ = \d+\.\d+\b", re.MULTILINE)
#: Ratio lines a script must print, where it is more than one.
EXPECTED_RATIOS = {"ppo_step.py": 3, "generate.py": 2, "trl_parity.py": 4}


def test_benchmarks_are_found() -> None:
    assert BENCHMARKS, "no benchmarks/*.py found: the smoke tests below would silently cover none"


@pytest.mark.slow
@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_smoke(script: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(script.relative_to(ROOT)), "--smoke"],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "unrecognized arguments: --smoke" not in done.stderr, (
        f"{script.name} has no --smoke mode: every benchmark needs one (see this file's docstring)"
    )
    assert done.returncode == 0, f"{script.name} --smoke failed:\n{done.stdout}\n{done.stderr}"
    assert "smoke" in done.stdout.lower(), f"{script.name} ignored --smoke:\n{done.stdout}"
    ratios = RATIO_LINE.findall(done.stdout)
    assert len(ratios) >= EXPECTED_RATIOS.get(script.name, 1), done.stdout
