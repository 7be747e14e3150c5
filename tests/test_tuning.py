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
        "prune.pruner=none",  # TINY evaluates at the end only: nothing to prune by
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


def _metrics(folder: Path, values: list[float]) -> None:
    """A trial's metrics.jsonl: the start, a step line, then one evaluation per value."""
    lines = [{"kind": "eval", "step": 0, "dev/gold_reward": -9.0}, {"kind": "step", "step": 1}]
    lines += [
        {"kind": "eval", "step": 10 * (i + 1), "dev/gold_reward": v} for i, v in enumerate(values)
    ]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def _sibling(sweep: Path, name: str, values: list[float], pruned: bool = False) -> None:
    _finished_trial(
        sweep, name, ["hparams_search=facts", "algo=dpo", f"algo.beta={values[-1]}"], values[-1]
    )
    _metrics(sweep / name, values)
    if pruned:
        summary = json.loads((sweep / name / "summary.json").read_text())
        (sweep / name / "summary.json").write_text(json.dumps({**summary, "tuning/pruned_at": 1}))


def _pruner(sweep: Path, pruner: str = "median", startup: int = 3, direction: str = "maximize"):
    prune = OmegaConf.create(
        {"pruner": pruner, "startup_trials": startup, "warmup_points": 1, "percentile": 25.0}
    )
    return tuning.TrialPruner(sweep / "me", "dev/gold_reward", prune, direction)


def test_eval_values_are_the_evaluations_after_the_start(tmp_path: Path) -> None:
    _metrics(tmp_path, [0.1, 0.2, 0.3])
    assert tuning.eval_values(tmp_path / "metrics.jsonl", "dev/gold_reward") == {
        1: 0.1,
        2: 0.2,
        3: 0.3,
    }
    assert tuning.eval_values(tmp_path / "missing.jsonl", "dev/gold_reward") == {}


def test_a_trial_behind_the_median_of_earlier_trials_is_pruned(tmp_path: Path) -> None:
    """Optuna's MedianPruner over the sweep's finished siblings at the same evaluation point;
    never before `startup_trials` trials have finished; pruned siblings are not finished ones."""
    sweep = tmp_path / "sweep"
    for name, value in (("a", 0.5), ("b", 0.6), ("c", 0.7)):
        _sibling(sweep, name, [value, value, value])
    assert _pruner(sweep).should_prune(1, {"dev/gold_reward": 0.1})
    assert not _pruner(sweep).should_prune(1, {"dev/gold_reward": 0.9})
    assert not _pruner(sweep, startup=4).should_prune(1, {"dev/gold_reward": 0.1})
    # Lower is better: the same low value is now ahead.
    assert not _pruner(sweep, direction="minimize").should_prune(1, {"dev/gold_reward": 0.1})
    assert _pruner(sweep, direction="minimize").should_prune(1, {"dev/gold_reward": 0.9})
    # No value to judge by (another rank's empty metrics) never prunes.
    assert not _pruner(sweep).should_prune(1, {})
    _sibling(sweep, "d", [0.9], pruned=True)  # a pruned trial does not count as finished
    assert not _pruner(sweep, startup=4).should_prune(1, {"dev/gold_reward": 0.1})


def test_successive_halving_prunes_a_trial_behind_the_earlier_ones(tmp_path: Path) -> None:
    """prune.pruner=halving: the siblings' values at the first rung (point 1) are what a trial
    competes against there (Optuna keeps them as rung attributes, which a rebuilt study must
    carry: without them a trial only ever competed against itself and was never pruned)."""
    sweep = tmp_path / "sweep"
    for i in range(8):
        _sibling(sweep, f"t{i}", [0.5 + i / 100] * 4)
    assert _pruner(sweep, pruner="halving").should_prune(1, {"dev/gold_reward": -5.0})
    assert not _pruner(sweep, pruner="halving").should_prune(1, {"dev/gold_reward": 0.9})
    # prune.startup_trials holds for halving too: not before that many trials have finished.
    assert not _pruner(sweep, "halving", startup=9).should_prune(1, {"dev/gold_reward": -5.0})
    # A rung is judged once: a trial ahead at point 1 is not judged again before rung 1 (4).
    ahead = _pruner(sweep, pruner="halving")
    assert not ahead.should_prune(1, {"dev/gold_reward": 0.9})
    assert not ahead.should_prune(2, {"dev/gold_reward": -5.0})


def test_a_resumed_trial_is_judged_as_a_straight_one(tmp_path: Path) -> None:
    """Optuna's median pruner judges a trial by its best value over all its points: a trial
    resumed from a checkpoint (a new pruner object) reads its earlier points back from its own
    metrics.jsonl instead of forgetting them."""
    sweep = tmp_path / "sweep"
    for name, value in (("a", 0.5), ("b", 0.6), ("c", 0.7)):
        _sibling(sweep, name, [value, value, value])
    straight = _pruner(sweep)
    assert not straight.should_prune(1, {"dev/gold_reward": 0.9})
    _metrics(sweep / "me", [0.9])  # what the trial wrote before its checkpoint
    assert not straight.should_prune(2, {"dev/gold_reward": 0.1})  # 0.9 was ahead
    assert not _pruner(sweep).should_prune(2, {"dev/gold_reward": 0.1})  # resumed: the same


def test_the_best_trial_is_never_a_pruned_one(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    _sibling(sweep, "a", [0.2, 0.2])
    _sibling(sweep, "b", [0.9], pruned=True)  # stopped early: its value is not a finished run's
    BestTrial(name="dpo_facts").on_multirun_end(_end_config(sweep))
    cost = json.loads((sweep / "tuning.json").read_text())
    assert cost["best_value"] == 0.2 and cost["pruned_trials"] == 1
    assert "1 pruned" in (sweep / "dpo_facts_best.yaml").read_text()


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["prune.pruner=median"], "without optimized_metric"),
        (["hparams_search=ppo_facts", "eval.points=1"], "set eval.points >= 2"),
        (["hparams_search=ppo_facts", "prune.warmup_points=0"], "warmup_points >= 1"),
        (["hparams_search=ppo_facts", "prune.pruner=percentile", "prune.percentile=0"], "(0, 100)"),
        (["hparams_search=ppo_facts", "prune.pruner=hyperband"], "prune.pruner"),
    ],
)
def test_a_pruner_that_cannot_work_is_refused_up_front(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        validate(build_registry(), overrides)


def test_the_best_experiment_does_not_prune() -> None:
    """A report run from the best trial has no search metric: `prune` stays with the search."""
    assert "prune" in tuning.SEARCH_ONLY


@pytest.mark.slow
def test_a_trial_behind_earlier_ones_stops_at_its_first_evaluation(tmp_path: Path) -> None:
    """`hparams_search=ppo_facts` prunes (median): with three earlier trials far ahead, a tiny
    trial stops at the first of 4 evaluation points, spends a quarter of its budget, says so
    in its summary, and is not the best trial; the search's cost counts it."""
    sweep = tmp_path / "search"
    for name in ("a", "b", "c"):
        _sibling(sweep, name, [5.0, 5.0, 5.0, 5.0])
    args = [
        "hparams_search=ppo_facts",
        "hydra.sweeper.n_trials=1",
        *TINY,
        "eval.points=4",
        "budget.amount=8",
        "algo.samples_per_prompt=2",
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={sweep}",
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
    (summary,) = [
        s
        for p in sweep.glob("*/summary.json")
        if (s := json.loads(p.read_text())).get("algorithm") == "ppo"
    ]
    assert summary["status"] == "finished" and summary["tuning/pruned_at"] == 1
    assert summary["budget/steps"] == 2 < 8
    cost = json.loads((sweep / "tuning.json").read_text())
    assert cost["pruned_trials"] == 1 and cost["best_value"] == 5.0
