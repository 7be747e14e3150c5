"""Hyperparameter search: the Optuna sweeper on a search space, the objective, the best trial."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from alignbench import ConfigError, tuning
from alignbench.app import validate
from alignbench.registry import build_registry
from alignbench.tuning import BestTrial, check_metric, objective
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


def _finished_trial(sweep: Path, name: str, overrides: list[str], value: float) -> None:
    """A trial folder as a search leaves it: Hydra's record, and a finished summary."""
    record = sweep / name / ".hydra"
    record.mkdir(parents=True)
    choices = {"algo": "dpo", "hparams_search": "facts", "logger": "wandb"}
    (record / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    (record / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    summary = {"status": "finished", "dev/gold_reward": value, "budget/flops": 1e9}
    (sweep / name / "summary.json").write_text(json.dumps(summary))


def _end_config(sweep: Path) -> object:
    """The config a callback gets at the end of `hparams_search=facts algo=dpo --multirun`."""
    return OmegaConf.create(
        {
            "optimized_metric": "dev/gold_reward",
            "hydra": {
                "sweep": {"dir": str(sweep)},
                "runtime": {"choices": {"hparams_search": "facts", "algo": "dpo"}},
            },
        }
    )


def test_a_named_search_reads_the_search_file_it_ran(tmp_path: Path) -> None:
    """One file serves every algorithm (hparams_search=facts, name=dpo_facts): the best trial
    is written under the name, with the file's fixed settings and the trial's sampled values."""
    sweep = tmp_path / "sweep"
    _finished_trial(sweep, "a", ["hparams_search=facts", "algo=dpo", "algo.beta=0.3"], 0.2)
    _finished_trial(sweep, "b", ["hparams_search=facts", "algo=dpo", "algo.beta=0.05"], 0.4)
    BestTrial(name="dpo_facts").on_multirun_end(_end_config(sweep))
    best = yaml.safe_load((sweep / "dpo_facts_best.yaml").read_text())
    assert best["algo"] == {"beta": 0.05}
    assert best["defaults"] == [{"override /algo": "dpo"}]
    assert best["budget"] == {"kind": "flops"} and best["eval"] == {"points": 0}
    assert json.loads((sweep / "tuning.json").read_text())["best_value"] == 0.4
    # The same values as an algo choice, to sweep beside other tuned algorithms.
    choice = yaml.safe_load((sweep / "dpo_facts_algo.yaml").read_text())
    assert choice == {"defaults": ["dpo", "_self_"], "beta": 0.05}


def test_a_best_trial_that_cannot_be_written_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Hydra turns a callback's exception into a warning; the search records one line instead,
    which makes the command exit 1 (cli.main reads tuning.FAILURES)."""
    sweep, blocked = tmp_path / "sweep", tmp_path / "file"
    blocked.write_text("")
    _finished_trial(sweep, "a", ["hparams_search=facts", "algo=dpo", "algo.beta=0.3"], 0.2)
    tuning.FAILURES.clear()
    BestTrial(name="dpo_facts", experiment_dir=str(blocked / "sub")).on_multirun_end(
        _end_config(sweep)
    )
    assert len(tuning.FAILURES) == 1 and "dpo_facts could not be written" in tuning.FAILURES[0]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: tuning:") and str(sweep) in err[0]
    tuning.FAILURES.clear()
