"""Hyperparameter search: the Optuna sweeper on a search space, the objective, the best trial."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alignbench import ConfigError
from alignbench.app import validate
from alignbench.registry import build_registry
from alignbench.tuning import check_metric, objective
from tests.conftest import TINY

pytest.importorskip(
    "hydra_plugins.hydra_optuna_sweeper", reason="hydra-optuna-sweeper is not installed (.[tune])"
)


def test_objective_is_the_metric_of_a_finished_job() -> None:
    """A finished job returns its metric; a failed one returns None (a failed trial)."""
    assert objective({"status": "finished", "dev/gold_reward": 0.25}, "dev/gold_reward") == 0.25
    assert objective({"status": "failed", "dev/gold_reward": 0.25}, "dev/gold_reward") is None
    assert objective({"status": "finished"}, "dev/gold_reward") is None


@pytest.mark.parametrize(
    ("metric", "match"),
    [("test/gold_reward", "leaks it into the comparison"), ("gold_reward", "with its split")],
)
def test_objective_on_test_or_without_split_is_refused(metric: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        check_metric(metric)
    with pytest.raises(ConfigError, match=match):
        validate(build_registry(), ["hparams_search=ppo_facts", f"optimized_metric={metric}"])


def test_search_space_and_interval_syntax_pass_validation() -> None:
    """hparams_search=... composes (Optuna sweeper, PPO) and lets interval(...) through."""
    registry = build_registry()
    validate(registry, ["hparams_search=ppo_facts"])
    validate(registry, ["hparams_search=ppo_facts", "algo.vf_coef=interval(0.05,0.2)"])
    validate(registry, ["hparams_search=ppo_facts", "algo.clip_range=choice(0.1,0.3)"])


@pytest.mark.slow
def test_two_trial_search_writes_the_best_trial_as_an_experiment(tmp_path: Path) -> None:
    """`python -m alignbench hparams_search=ppo_facts --multirun` with 2 tiny trials: each
    returns dev/gold_reward to Optuna, and the best one becomes <sweep>/ppo_facts_best.yaml (and
    a copy in experiment_dir) holding its sampled hyperparameters, with the tuning cost."""
    sweep, experiments = tmp_path / "search", tmp_path / "experiment"
    args = [
        "hparams_search=ppo_facts",
        "hydra.sweeper.n_trials=2",
        *TINY,
        "algo.samples_per_prompt=2",
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={sweep}",
        f"hydra.callbacks.best_trial.experiment_dir={experiments}",
        "--multirun",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "alignbench", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    optuna = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = yaml.safe_load((sweep / "ppo_facts_best.yaml").read_text())
    assert (experiments / "ppo_facts_best.yaml").read_text() == (
        sweep / "ppo_facts_best.yaml"
    ).read_text()
    assert {
        f"algo.{k}": v for k, v in best["algo"].items() if k in ("lr", "kl_coef", "clip_range")
    } == optuna["best_params"]
    # The search's algorithm and the command line's logger=none; nothing of Hydra's own.
    assert best["defaults"] == [{"override /algo": "ppo"}, {"override /logger": "none"}]
    assert "hydra" not in best and "cache_dir" not in best
    assert best["budget"] == {"kind": "steps", "amount": 2}  # the command line's, over the file's
    cost = json.loads((sweep / "tuning.json").read_text())
    assert cost["trials"] == 2 and cost["best_value"] == optuna["best_value"]
    summaries = [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")]
    assert cost["flops"] == sum(s["budget/flops"] for s in summaries) > 0
    assert "tuning: best dev/gold_reward" in done.stdout
