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
import warnings
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
SEARCH_ONLY = (
    "defaults",
    "hydra",
    "optimized_metric",
    "prune",
    "cache_dir",
    "rerun",
    "cache_rebuild",
)
#: Successive halving's reduction factor (Optuna's default): rungs at warmup_points x 4^r.
HALVING_REDUCTION = 4
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


def check_pruning(cfg: Any) -> None:
    """Refuse a pruner that cannot work (one line, before any job starts): it needs the search's
    metric, intermediate evaluations to judge by, sane settings and Optuna itself."""
    prune = cfg.prune
    if prune.pruner == "none":
        return
    where = f"prune.pruner={prune.pruner}"
    if not cfg.optimized_metric:
        raise ConfigError(
            f"{where} without optimized_metric — pruning is for a search: use an "
            "hparams_search=... file (or set optimized_metric=dev/...)"
        )
    if int(cfg.eval.points) < 2:
        raise ConfigError(
            f"{where} with eval.points={cfg.eval.points} — a trial is judged at intermediate "
            "evaluations: set eval.points >= 2 (e.g. 4)"
        )
    if int(prune.startup_trials) < 0 or int(prune.warmup_points) < 1:
        raise ConfigError(
            f"prune.startup_trials={prune.startup_trials}, prune.warmup_points="
            f"{prune.warmup_points} — need startup_trials >= 0 and warmup_points >= 1"
        )
    if not 0.0 < float(prune.percentile) < 100.0:
        raise ConfigError(f"prune.percentile={prune.percentile} — must be in (0, 100)")
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError(
            f'{where} needs Optuna — pip install -e ".[tune]" (or set prune.pruner=none)'
        ) from None


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
        # A pruned trial stopped early: its value is where it stopped, not a finished search.
        scored = [
            (value, folder)
            for folder, summary in trials
            if (value := objective(summary, metric)) is not None
            and math.isfinite(value)
            and summary.get("tuning/pruned_at") is None
        ]
        pruned = sum(1 for _, summary in trials if summary.get("tuning/pruned_at") is not None)
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
            "pruned_trials": pruned,
            "flops": sum(float(s.get("budget/flops", 0.0)) for _, s in trials),
            "seconds": sum(float(s.get("wall_time", 0.0)) for _, s in trials),
        }
        # The search file is the hparams_search choice (one file may serve several named
        # searches, e.g. `facts` for every algorithm); `name` only names the outputs.
        search = config.hydra.runtime.choices.get("hparams_search") or self.name
        header = [
            f"Best of {len(scored)} finished trials (of {len(trials)}, {pruned} pruned) of search "
            f"{self.name} (hparams_search={search}): {metric} = {value:.4f} ({self.direction}).",
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


def eval_values(metrics_file: Path, metric: str) -> dict[int, float]:
    """A trial's ``metric`` at each evaluation point after the start (1, 2, ...; the final one
    last), read from its ``metrics.jsonl``; a missing or unreadable file gives nothing."""
    values: dict[int, float] = {}
    try:
        lines = metrics_file.read_text().splitlines()
    except OSError:
        return values
    point = 0
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written by a running trial
        if record.get("kind") != "eval" or int(record.get("step", 0)) == 0:
            continue  # steps, and the start (the stage-1 model: the same for every trial)
        point += 1
        value = record.get(metric)
        if isinstance(value, int | float) and math.isfinite(value):
            values[point] = float(value)
    return values


class TrialPruner:
    """Whether a search's trial should stop at an intermediate evaluation: Optuna's own pruner
    (``prune.pruner``), asked over the earlier trials of the same sweep folder.

    Hydra's Optuna sweeper reads a trial's final value only, so its study never sees intermediate
    values; each trial therefore rebuilds a study in memory from its siblings' ``metrics.jsonl``
    (the same budget points for every trial: the search fixes the budget and ``eval.points``),
    reports its own values and asks Optuna's pruner. A pruned trial ends with a final evaluation
    and ``tuning/pruned_at`` in its summary; :class:`BestTrial` never picks it.
    """

    def __init__(
        self, output_dir: Path, metric: str, prune: Any, direction: str = "maximize"
    ) -> None:
        import optuna  # the `tune` extra: only a search with pruning needs it

        self.optuna = optuna
        self.output_dir, self.metric, self.direction = output_dir, metric, direction
        self.prune = prune
        self.reported: dict[int, float] = {}

    def _pruner(self) -> Any:
        pruners = self.optuna.pruners
        startup, warmup = int(self.prune.startup_trials), int(self.prune.warmup_points)
        if self.prune.pruner == "median":
            return pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)
        if self.prune.pruner == "percentile":
            return pruners.PercentilePruner(
                float(self.prune.percentile), n_startup_trials=startup, n_warmup_steps=warmup
            )
        # Optuna prunes from step n_warmup_steps on: `warmup_points` is the first point that may
        # prune. Successive halving has no startup count of its own: its first rung is there.
        return pruners.SuccessiveHalvingPruner(
            min_resource=max(1, warmup), reduction_factor=HALVING_REDUCTION
        )

    def _rungs(self, values: dict[int, float]) -> dict[str, float]:
        """The rung values Optuna's successive halving would have recorded on a trial that
        reported ``values`` (its ``completed_rung_<r>`` system attributes: what later trials
        compete against); none for the other pruners, which read intermediate values only."""
        if self.prune.pruner != "halving":
            return {}
        attrs, rung, first = {}, 0, max(1, int(self.prune.warmup_points))
        for step in sorted(values):
            while step >= first * HALVING_REDUCTION**rung:
                attrs[f"completed_rung_{rung}"] = values[step]
                rung += 1
        return attrs

    def _siblings(self) -> list[Any]:
        """The sweep's other trials as Optuna trials: finished ones complete (final value),
        pruned ones pruned, with their intermediate values."""
        trial_state = self.optuna.trial.TrialState
        out = []
        for folder, summary in _trials(self.output_dir.parent, self.metric):
            if folder.resolve() == self.output_dir.resolve() or summary.get("status") != "finished":
                continue
            values = eval_values(folder / "metrics.jsonl", self.metric)
            final = summary.get(self.metric)
            if not values or not isinstance(final, int | float) or not math.isfinite(final):
                continue
            pruned_at = summary.get("tuning/pruned_at")
            if pruned_at is not None:
                # Its final evaluation repeats the point it stopped at (same step): no later point.
                values = {p: v for p, v in values.items() if p <= int(pruned_at)}
            out.append(
                self.optuna.trial.create_trial(
                    state=trial_state.COMPLETE if pruned_at is None else trial_state.PRUNED,
                    value=float(final) if pruned_at is None else None,
                    intermediate_values=values,
                    system_attrs=self._rungs(values),
                )
            )
        return out

    def should_prune(self, point: int, metrics: dict[str, float]) -> bool:
        """Report ``metric`` at evaluation ``point`` (1, 2, ...) and ask the pruner."""
        value = metrics.get(self.metric)
        if not isinstance(value, int | float) or not math.isfinite(value):
            return False  # nothing to judge by (e.g. another rank's empty metrics)
        self.reported[point] = float(value)
        # Earlier points from this trial's own metrics.jsonl where this object did not see them
        # (a resumed trial), so that a resumed trial is judged as a straight one.
        for earlier, seen in eval_values(self.output_dir / "metrics.jsonl", self.metric).items():
            if earlier < point:
                self.reported.setdefault(earlier, seen)
        optuna = self.optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(direction=self.direction, pruner=self._pruner())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # add_trial is "experimental" in optuna 2.x
            siblings = self._siblings()
            for trial in siblings:
                study.add_trial(trial)
        finished = sum(t.state == optuna.trial.TrialState.COMPLETE for t in siblings)
        trial = study.ask()
        if self.prune.pruner == "halving" and finished < int(self.prune.startup_trials):
            # Successive halving has no startup count of its own: prune.startup_trials holds
            # for it as for the others (no pruning before that many trials have finished).
            pruned = False
        elif self.prune.pruner == "halving":
            # Successive halving judges a rung once, at the first point that reaches it, and
            # records it on the trial: replay the points in order, as Optuna's study would have.
            pruned = False
            for step, reported in sorted(self.reported.items()):
                trial.report(reported, step)
                if trial.should_prune():
                    pruned = True
                    break
        else:
            for step, reported in sorted(self.reported.items()):
                trial.report(reported, step)
            pruned = bool(trial.should_prune())
        if pruned:
            log.info(
                "pruned at evaluation point %d: %s = %.4f is behind the earlier trials",
                point,
                self.metric,
                value,
            )
        return pruned


def trial_pruner(cfg: Any, output_dir: Path) -> TrialPruner | None:
    """The job's :class:`TrialPruner` when ``prune.pruner`` is on (else None); the direction is
    the sweeper's, read from the job's Hydra record (maximize without one)."""
    prune = cfg.get("prune") if hasattr(cfg, "get") else getattr(cfg, "prune", None)
    if prune is None or prune.pruner == "none":
        return None
    direction = "maximize"
    record = output_dir / ".hydra" / "hydra.yaml"
    if record.is_file():
        hydra = (yaml.safe_load(record.read_text()) or {}).get("hydra", {})
        direction = str((hydra.get("sweeper") or {}).get("direction") or direction)
    return TrialPruner(output_dir, str(cfg.optimized_metric), prune, direction)
