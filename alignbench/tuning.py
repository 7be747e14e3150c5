"""Hyperparameter search with Hydra's Optuna sweeper: the objective, and the best trial as a file.

A search space is a file of ``conf/hparams_search/`` (``python -m alignbench
hparams_search=ppo_facts --multirun``): it switches ``hydra/sweeper`` to Optuna, fixes the
per-trial budget, names the metric to optimise (``optimized_metric``, a ``dev/`` metric: tuning
never sees the test split) and registers :class:`BestTrial`. Each trial is an ordinary job whose
task function returns that metric (:func:`objective`); when the sweep ends, :class:`BestTrial`
writes the best trial's settings as an experiment file (``<name>_best.yaml``, Hydra's
``# @package _global_`` form), its ``algo.*`` values as an ``algo`` group file
(``<name>_algo.yaml``: tuned algorithms then sweep side by side as choices) and what the search
cost (trials, FLOPs, seconds).
"""

from __future__ import annotations

import json
import logging
import math
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from alignbench.config import CONF_PACKAGE
from alignbench.errors import ConfigError

log = logging.getLogger(__name__)

#: Config groups whose choice an experiment file sets with ``override /<group>: <choice>``.
GROUPS = ("algo", "task", "reward", "feedback", "model", "budget", "logger")
#: Keys of a search file that belong to the search, not to the experiment it finds, and
#: keys that say where a trial ran rather than what it was.
SEARCH_ONLY = ("defaults", "hydra", "optimized_metric", "cache_dir", "rerun", "cache_rebuild")
#: One line per search whose best trial could not be written: Hydra turns a callback's exception
#: into a warning, so the command reads this list and exits 1 instead of finishing silently.
FAILURES: list[str] = []


def check_metric(metric: str) -> None:
    """Refuse an objective on the test split (tuning on it leaks the test set into the
    comparison) or one that names no split."""
    if not metric:
        return
    if "/" not in metric:
        raise ConfigError(
            f"optimized_metric={metric!r} — name a metric of the final evaluation with its "
            "split, e.g. dev/gold_reward"
        )
    if metric.split("/", 1)[0] == "test":
        raise ConfigError(
            f"optimized_metric={metric!r} — tuning on the test split leaks it into the "
            "comparison; tune on dev (e.g. dev/gold_reward) and report test"
        )


def objective(summary: dict[str, Any], metric: str) -> float | None:
    """The value a sweeper optimises: ``metric`` of a finished job's summary (None otherwise,
    which the Optuna sweeper records as a failed trial)."""
    value = summary.get(metric)
    if summary.get("status") != "finished" or not isinstance(value, int | float):
        known = sorted(k for k in summary if k.split("/", 1)[0] in ("dev", "test"))
        if summary.get("status") == "finished":
            log.error("optimized_metric=%s is not in the summary — known: %s", metric, known)
        return None
    return float(value)


def _default_choices() -> dict[str, str]:
    """The choice of each config group in ``conf/config.yaml``'s defaults list."""
    text = resources.files(CONF_PACKAGE).joinpath("config.yaml").read_text()
    out = {}
    for entry in yaml.safe_load(text).get("defaults", []):
        if isinstance(entry, dict):
            out.update({str(k): str(v) for k, v in entry.items()})
    return out


def _search_values(name: str) -> dict[str, Any]:
    """The settings a search file fixes for every trial (its budget, threads, ...)."""
    path = resources.files(CONF_PACKAGE).joinpath("hparams_search", f"{name}.yaml")
    data = yaml.safe_load(path.read_text()) or {}
    return {k: v for k, v in data.items() if k not in SEARCH_ONLY}


def _trial_record(trial: Path) -> tuple[dict[str, str], list[str]]:
    """A trial folder's group choices and command-line overrides, as Hydra recorded them."""
    record = trial / ".hydra"
    choices = yaml.safe_load((record / "hydra.yaml").read_text())["hydra"]["runtime"]["choices"]
    return choices, yaml.safe_load((record / "overrides.yaml").read_text()) or []


def best_experiment(trial: Path, search: str, header: list[str]) -> str:
    """The experiment file (YAML text) that reproduces trial folder ``trial`` of search
    ``search``: its group choices as defaults overrides, the search file's fixed settings and
    the trial's own overrides (the sampled hyperparameters) as values."""
    choices, overrides = _trial_record(trial)
    defaults = _default_choices()
    experiment = OmegaConf.create(_search_values(search))
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group.lstrip("+")
        if key.startswith("hydra") or key in choices or key in SEARCH_ONLY:
            continue  # group choices come from `choices`; the search's own keys stay out
        dotted = f"{key}={override.get_value_element_as_str()}"
        experiment = OmegaConf.merge(experiment, OmegaConf.from_dotlist([dotted]))
    overrides_of_groups = [
        {f"override /{group}": choices[group]}
        for group in GROUPS
        if choices.get(group) and choices[group] != defaults.get(group)
    ]
    body = {"defaults": overrides_of_groups, **OmegaConf.to_container(experiment)}
    lines = ["# @package _global_", *(f"# {line}" for line in header)]
    return "\n".join(lines) + "\n" + yaml.safe_dump(body, sort_keys=False)


def best_algorithm(trial: Path, header: list[str]) -> str:
    """An ``algo`` group file (YAML text) of trial folder ``trial``: its algorithm as the base
    choice and the trial's sampled ``algo.*`` values, so that tuned algorithms sweep side by side
    as choices (``algo=dpo_facts,ppo_facts``) at whatever budget and task the sweep sets."""
    choices, overrides = _trial_record(trial)
    values = OmegaConf.create({})
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group.lstrip("+")
        if key.startswith("algo."):
            dotted = f"{key[len('algo.') :]}={override.get_value_element_as_str()}"
            values = OmegaConf.merge(values, OmegaConf.from_dotlist([dotted]))
    body = {"defaults": [choices["algo"], "_self_"], **OmegaConf.to_container(values)}
    lines = [f"# {line}" for line in header]
    return "\n".join(lines) + "\n" + yaml.safe_dump(body, sort_keys=False)


def _trials(sweep: Path, metric: str) -> list[tuple[Path, dict[str, Any]]]:
    """The sweep's job folders and their summaries (finished or not)."""
    out = []
    for path in sorted(sweep.glob("*/summary.json")):
        try:
            out.append((path.parent, json.loads(path.read_text())))
        except (OSError, json.JSONDecodeError):
            continue
    return out


class BestTrial(Callback):
    """At the end of a search, write the best trial as ``<name>_best.yaml`` (into the sweep
    folder, and into ``experiment_dir`` when given) with the tuning cost in its header and in
    ``tuning.json``."""

    def __init__(
        self, name: str, experiment_dir: str | None = None, direction: str = "maximize"
    ) -> None:
        self.name, self.experiment_dir, self.direction = name, experiment_dir, direction

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write the best trial's experiment file; a failure is one line and exit status 1."""
        try:
            self._write_best(config)
        except Exception as exc:  # noqa: BLE001 — Hydra would only warn; the command must fail
            line = (
                f"tuning: the best trial of {self.name} could not be written "
                f"({type(exc).__name__}: {exc}) — the trials are in {config.hydra.sweep.dir}; "
                "fix the cause and run the same command again (finished trials are kept)"
            )
            FAILURES.append(line)
            print(f"error: {line}", file=sys.stderr, flush=True)

    def _write_best(self, config: DictConfig) -> None:
        """Find the best finished trial by ``optimized_metric`` and write its experiment file."""
        sweep, metric = Path(config.hydra.sweep.dir), str(config.get("optimized_metric") or "")
        trials = _trials(sweep, metric)
        scored = [
            (value, folder)
            for folder, summary in trials
            if (value := objective(summary, metric)) is not None and math.isfinite(value)
        ]
        if not metric or not scored:
            print(f"[alignbench] tuning: no finished trial with {metric or 'a metric'} in {sweep}")
            return
        pick = max if self.direction == "maximize" else min
        value, folder = pick(scored, key=lambda pair: pair[0])
        cost = {
            "search": self.name,
            "optimized_metric": metric,
            "direction": self.direction,
            "best_value": value,
            "best_trial": str(folder),
            "trials": len(trials),
            "finished_trials": len(scored),
            "flops": sum(float(s.get("budget/flops", 0.0)) for _, s in trials),
            "seconds": sum(float(s.get("wall_time", 0.0)) for _, s in trials),
        }
        # The search file is the hparams_search choice (one file may serve several named
        # searches, e.g. `facts` for every algorithm); `name` only names the outputs.
        search = config.hydra.runtime.choices.get("hparams_search") or self.name
        header = [
            f"Best of {len(scored)} finished trials (of {len(trials)}) of search {self.name} "
            f"(hparams_search={search}): {metric} = {value:.4f} ({self.direction}).",
            f"Trial: {folder}",
            f"Tuning cost: {cost['flops']:.3g} FLOPs, {cost['seconds']:.0f} s over all trials.",
            "Report on test with fresh seeds: python -m alignbench "
            f"+experiment={self.name}_best seed=0,1,2 --multirun",
        ]
        text = best_experiment(folder, search, header)
        targets = [sweep / f"{self.name}_best.yaml"]
        if self.experiment_dir:
            targets.append(Path(self.experiment_dir) / f"{self.name}_best.yaml")
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        algo_header = [
            f"{self.name}: the best trial's algo.* values (search: {header[0]})",
            f"Trial: {folder}",
            f"As a choice beside others: cp this file conf/algo/{self.name}.yaml, then "
            f"algo={self.name},... --multirun",
        ]
        (sweep / f"{self.name}_algo.yaml").write_text(best_algorithm(folder, algo_header))
        (sweep / "tuning.json").write_text(json.dumps(cost, indent=2) + "\n")
        print(
            f"[alignbench] tuning: best {metric} = {value:.4f} → {targets[-1]} "
            f"(cost: {len(trials)} trials, {cost['flops']:.3g} FLOPs; {sweep / 'tuning.json'})",
            flush=True,
        )
