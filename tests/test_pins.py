"""Pinned summaries of tiny jobs beyond PPO (issue 12: a refactor must not change the numbers).

RRHF with the rule reward, RRHF with the learned reward (stage 2 included) and PPO on the
multi-turn dialogue task: every evaluation metric of the summary equals the pinned value.
Record them again only on code whose results are the reference:

    python tests/pins/make_summary_pins.py tests/pins/summary_tiny.json
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TINY, compose

PINS = Path(__file__).parent / "pins" / "summary_tiny.json"
#: Tiny jobs whose summaries are pinned (one thread, so rounding is the same each run).
SUMMARY_RUNS: dict[str, list[str]] = {
    "rrhf": ["algo=rrhf"],
    "rrhf_rm": ["algo=rrhf", "reward=rm"],
    "dialogue_ppo": [
        "task=dialogue",
        "reward=turn",
        "algo=ppo",
        "task.eval_size=8",
        "stage.sft.epochs=30",
    ],
}
#: Evaluation metrics; budget, time, paths and hashes are not results.
PINNED_PREFIXES = ("test/", "dev/", "eval_rl/", "rm/")


def run_summary(tmp: Path, cache: Path, name: str, overrides: list[str]) -> dict[str, float]:
    """The pinned part of a tiny job's summary."""
    from alignbench.app import run_job

    cfg = compose([*TINY, f"cache_dir={cache}", "threads=1", *overrides])
    summary = run_job(cfg, tmp / name)
    return {
        key: float(value)
        for key, value in summary.items()
        if key.startswith(PINNED_PREFIXES) and isinstance(value, int | float)
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SUMMARY_RUNS))
def test_tiny_summaries_are_pinned(tmp_path: Path, cache_dir: Path, name: str) -> None:
    """Every evaluation metric of the tiny job equals the pinned value within 1e-4 relative."""
    pinned: dict[str, Any] = json.loads(PINS.read_text())[name]
    summary = run_summary(tmp_path, cache_dir, name, SUMMARY_RUNS[name])
    assert set(summary) == set(pinned)
    for key, value in pinned.items():
        assert math.isclose(summary[key], value, rel_tol=1e-4, abs_tol=1e-6), (key, summary[key])
