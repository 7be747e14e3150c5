"""``python -m alignbench.compare <sweep dir>...``: turn sweeps into one honest table and curves.

Jobs are grouped by their command-line overrides minus the seed (or by ``--group-by`` keys);
each cell is the mean over seeds with a 95% percentile-bootstrap interval, and groups with at
least five seeds get an interquartile-mean row too. Every group is tested against a baseline
group, metric by metric (two-sided permutation test over seeds), and the markers are explained
under the table. Failed or unfinished jobs are counted and listed, never silently dropped.
Curves of each eval metric against the compute spent and the abstention trade-off are drawn
as PNGs. Everything is printed and written to ``<first sweep dir>/comparison.md`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

DEFAULT_METRICS = (
    "test/accuracy_known",
    "test/hallucination_unknown",
    "test/abstain_unknown",
    "eval_rl/accuracy_known",
    "eval_rl/hallucination_unknown",
    "eval_rl/abstain_unknown",
    "test/reward",
    "budget/flops",
    "wall_time",
)
#: Keys that never name a group: the seed and the world are what a group is aggregated over.
IGNORED_KEYS = (
    "seed",
    "world",
    "hydra.",
    "hydra/",
    "logger",
    "cache_dir",
    "threads",
    "cache_rebuild",
    "rerun",
    "checkpoint_every",
)
#: Metrics drawn as curves against the budget (evaluations on the dev and test splits).
CURVE_PREFIXES = ("test/", "dev/")
X_AXES = ("flops", "steps", "samples", "tokens", "seconds")
#: The abstention trade-off plot: x (lower is better), y (higher is better).
TRADEOFF = ("test/hallucination_unknown", "test/accuracy_known")
ALPHA = 0.05
#: Seeds a group needs before its interquartile mean is reported (rliable's IQM).
IQM_MIN_SEEDS = 5
#: Seeds each side needs before non-overlapping intervals are worth a "†".
DAGGER_MIN_SEEDS = 3
#: Relabellings of the seeds enumerated exactly; beyond this, a Monte Carlo permutation test.
EXACT_PERMUTATIONS = 20_000
#: Summary keys with the algorithm/task/reward name (for ``--group-by algo`` without an override).
NAME_KEYS = {"algo": "algorithm", "task": "task", "reward": "reward"}


#: Shown after a task's own headline metrics (every task has a reward, a budget and a clock).
COMMON_METRICS = ("test/reward", "test/gold_reward", "budget/flops", "wall_time")


def task_metrics(jobs: list[dict[str, Any]]) -> tuple[str, ...]:
    """The headline metrics the jobs' tasks declare (``Task.headline_metrics``, recorded in each
    summary), in order and once each, then the common ones; empty if no task declares any."""
    named: dict[str, None] = {}
    for job in jobs:
        named.update(dict.fromkeys((job.get("summary") or {}).get("headline_metrics") or []))
    return (*named, *(m for m in COMMON_METRICS if m not in named)) if named else ()


class BadInput(Exception):
    """A command-line mistake, reported as one line and exit code 2."""


# --------------------------------------------------------------------------------------------
# Statistics over seeds
# --------------------------------------------------------------------------------------------


def _mean_rows(rows: np.ndarray) -> np.ndarray:
    return rows.mean(axis=1)


def _iqm_rows(rows: np.ndarray) -> np.ndarray:
    # scipy.stats.trim_mean(x, 0.25), which rliable uses: cut int(0.25 n) values at each end.
    n = rows.shape[1]
    cut = int(0.25 * n)
    return np.sort(rows, axis=1)[:, cut : n - cut].mean(axis=1)


def interquartile_mean(values: list[float]) -> float:
    """Mean of the middle 50% of ``values`` (int(n/4) cut at each end, like rliable's IQM)."""
    return float(_iqm_rows(np.asarray(values, dtype=float)[None, :])[0])


def bootstrap_ci(
    values: list[float],
    samples: int = 10_000,
    seed: int = 0,
    statistic: Callable[[np.ndarray], np.ndarray] = _mean_rows,
) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean (or ``statistic``) of ``values``."""
    data = np.asarray(values, dtype=float)
    if len(data) < 2:
        point = float(statistic(data[None, :])[0])
        return point, point
    rng = np.random.default_rng(seed)
    stats = statistic(rng.choice(data, size=(samples, len(data)), replace=True))
    low, high = np.percentile(stats, [2.5, 97.5])
    return float(low), float(high)


def hierarchical_bootstrap(
    by_world: list[list[float]], samples: int = 10_000, seed: int = 0
) -> np.ndarray:
    """Bootstrap means over worlds, then seeds: ``samples`` draws of the mean of world means.

    Each draw resamples the worlds with replacement and, inside each drawn world, its seeds with
    replacement; the statistic is the mean of the drawn worlds' means (every world weighs the
    same). Jobs of one world share the task data and the SFT model, so they are not independent:
    resampling them as if they were would understate the uncertainty.
    """
    rng = np.random.default_rng(seed)
    worlds = [np.asarray(w, dtype=float) for w in by_world if len(w)]
    chosen = rng.integers(len(worlds), size=(samples, len(worlds)))
    world_means = np.empty((samples, len(worlds)))
    for w, values in enumerate(worlds):
        # An independent seed resample for every slot a world is drawn into.
        size = (samples, len(worlds), len(values))
        picks = values[rng.integers(len(values), size=size)].mean(axis=2)
        world_means = np.where(chosen == w, picks, world_means)
    return world_means.mean(axis=1)


def hierarchical_ci(by_world: list[list[float]], samples: int = 10_000) -> tuple[float, float]:
    """95 % interval of the mean of world means (:func:`hierarchical_bootstrap`)."""
    if sum(len(w) for w in by_world) < 2:
        point = float(np.mean([v for w in by_world for v in w]))
        return point, point
    if len([w for w in by_world if w]) == 1:
        return bootstrap_ci([v for w in by_world for v in w], samples)
    low, high = np.percentile(hierarchical_bootstrap(by_world, samples), [2.5, 97.5])
    return float(low), float(high)


def paired_difference_ci(
    a: dict[str, list[float]], b: dict[str, list[float]], samples: int = 10_000, seed: int = 0
) -> tuple[float, float, float] | None:
    """Mean over shared worlds of (mean a − mean b) and its 95 % hierarchical interval.

    Worlds are resampled together for both groups (the comparison is paired by world), seeds
    inside each world independently. None when the groups share no world.
    """
    shared = sorted(set(a) & set(b))
    if not shared:
        return None
    rng = np.random.default_rng(seed)
    n = len(shared)
    chosen = rng.integers(n, size=(samples, n))
    slots = np.zeros((samples, n))
    for i, world in enumerate(shared):
        diff = np.zeros((samples, n))
        for values, sign in ((a[world], 1.0), (b[world], -1.0)):
            v = np.asarray(values, dtype=float)
            diff += sign * v[rng.integers(len(v), size=(samples, n, len(v)))].mean(axis=2)
        slots = np.where(chosen == i, diff, slots)
    draws = slots.mean(axis=1)
    point = float(np.mean([np.mean(a[w]) - np.mean(b[w]) for w in shared]))
    low, high = np.percentile(draws, [2.5, 97.5])
    return point, float(low), float(high)


def smallest_permutation_p(n_a: int, n_b: int) -> float:
    """The smallest two-sided p-value a permutation test of ``n_a`` vs ``n_b`` seeds can give."""
    # The most extreme split (and, with equal sizes, its mirror image) is always counted.
    return min(1.0, (2 if n_a == n_b else 1) / math.comb(n_a + n_b, n_a))


def permutation_test(
    a: list[float], b: list[float], resamples: int = 10_000, seed: int = 0
) -> float:
    """Two-sided permutation test of mean(a) − mean(b) over seeds; returns the p-value.

    Exact (every relabelling of the pooled seeds) up to ``EXACT_PERMUTATIONS`` relabellings,
    Monte Carlo with ``resamples`` shuffles beyond. With 3 vs 3 seeds there are only 20
    relabellings, so p is at least 0.1: no difference can be significant at 0.05.
    """
    pooled = np.asarray([*a, *b], dtype=float)
    n, n_a = len(pooled), len(a)
    observed = abs(float(np.mean(a)) - float(np.mean(b)))
    total = pooled.sum()
    if math.comb(n, n_a) <= EXACT_PERMUTATIONS:
        chosen = np.asarray(list(itertools.combinations(range(n), n_a)), dtype=int)
        sums = pooled[chosen].sum(axis=1)
        exact = True
    else:
        rng = np.random.default_rng(seed)
        shuffled = rng.permuted(np.tile(pooled, (resamples, 1)), axis=1)
        sums = shuffled[:, :n_a].sum(axis=1)
        exact = False
    diffs = np.abs(sums / n_a - (total - sums) / (n - n_a))
    # A relative tolerance so that float noise does not split ties with the observed split.
    extreme = int(np.sum(diffs >= observed - 1e-9 * max(1.0, observed)))
    return extreme / len(diffs) if exact else (extreme + 1) / (len(diffs) + 1)


@dataclass
class Comparison:
    """One metric of one group against the baseline: p-value and the marker it earns."""

    p: float
    smallest_p: float
    marker: str


def compare_to_baseline(values: list[float], baseline: list[float]) -> Comparison | None:
    """``*`` if p < 0.05; ``†`` if the test cannot reach 0.05 but the 95% intervals are apart."""
    if len(values) < 2 or len(baseline) < 2:
        return None
    p = permutation_test(values, baseline)
    smallest = smallest_permutation_p(len(values), len(baseline))
    marker = ""
    if p < ALPHA:
        marker = "*"
    elif smallest >= ALPHA and min(len(values), len(baseline)) >= DAGGER_MIN_SEEDS:
        low, high = bootstrap_ci(values)
        base_low, base_high = bootstrap_ci(baseline)
        if high < base_low or low > base_high:
            marker = "†"
    return Comparison(p=p, smallest_p=smallest, marker=marker)


# --------------------------------------------------------------------------------------------
# Jobs and groups
# --------------------------------------------------------------------------------------------


def provenance_note(sweeps: list[Path], jobs: list[dict[str, Any]]) -> str:
    """Where the numbers come from: the commands (from each sweep's ``multirun.yaml``), the
    code (git commits recorded by the jobs or their stage-1 models) and the library versions."""
    lines = []
    for sweep in sweeps:
        path = sweep / "multirun.yaml"
        if path.is_file():
            hydra_cfg = (yaml.safe_load(path.read_text()) or {}).get("hydra", {})
            overrides = hydra_cfg.get("overrides", {})
            hydra_args = [
                o
                for o in overrides.get("hydra", [])
                if not o.startswith(("hydra.run.dir=", "hydra.mode="))
            ]
            args = [*overrides.get("task", []), *hydra_args]
            lines.append(f"`python -m alignbench --multirun {' '.join(args)}` → `{sweep}`")
    commits: set[str] = set()
    versions: set[str] = set()
    for job in jobs:
        summary = job["summary"] or {}
        stage = (summary.get("stage/sft") or {}).get("provenance") or {}
        for commit in (summary.get("git_commit"), stage.get("git_commit")):
            if commit:
                commits.add(str(commit)[:12])
        found = summary.get("versions") or stage
        if found.get("torch"):
            versions.add(f"torch {found['torch']}, transformers {found.get('transformers')}")
    out = []
    if lines:
        out.append("Made by: " + "; ".join(lines) + ".")
    if commits:
        out.append(
            "Code: commit " + ", ".join(sorted(commits)) + " (of the jobs and their SFT models)."
        )
    if versions:
        out.append("Libraries: " + "; ".join(sorted(versions)) + ".")
    return " ".join(out)


def load_jobs(sweep: Path) -> list[dict[str, Any]]:
    """Every job folder of a sweep: its overrides, and its summary (None if it never finished)."""
    jobs = []

    def order(folder: Path) -> tuple[int, str]:
        # Hydra numbers job folders (`12_sft_…`): job 12 before job 100, as the sweep ran them.
        head = folder.name.split("_", 1)[0]
        return (int(head) if head.isdigit() else -1, folder.name)

    for folder in sorted((p for p in sweep.iterdir() if (p / ".hydra").is_dir()), key=order):
        overrides_path = folder / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_path.read_text()) if overrides_path.exists() else []
        summary_path = folder / "summary.json"
        try:
            summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
        except json.JSONDecodeError:
            summary = None
        jobs.append(
            {
                "folder": folder.name,
                "path": folder,
                "sweep": sweep.name,
                "overrides": overrides or [],
                "summary": summary,
            }
        )
    return jobs


def drop_duplicates(jobs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Jobs with the same config (fingerprint) counted once, and a note naming each duplicate.

    The same config in two folders (a sweep extended under an older naming scheme, or one job
    in two compared sweeps) is one measurement, not two seeds.
    """
    kept: list[dict[str, Any]] = []
    seen: dict[str, dict[str, Any]] = {}
    notes = []
    for job in jobs:
        fingerprint = (job["summary"] or {}).get("fingerprint")
        if fingerprint and fingerprint in seen:
            first = seen[fingerprint]
            notes.append(
                f"- `{job['sweep']}/{job['folder']}` has the same config as "
                f"`{first['sweep']}/{first['folder']}`: counted once"
            )
            continue
        if fingerprint:
            seen[fingerprint] = job
        kept.append(job)
    return kept, notes


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


@functools.lru_cache(maxsize=4096)
def _job_config(folder: Path) -> Any:
    """The job's composed config (``.hydra/config.yaml``) as plain data, read once."""
    path = folder / ".hydra" / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else None


def _config_value(folder: Path, key: str) -> Any:
    """A dotted key's value in the job's composed config (``.hydra/config.yaml``), or None."""
    node: Any = _job_config(folder)
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):  # a config group: show the choice by its name
        node = node.get("name")
    return node


def short_number(text: str) -> str:
    """A float written short (``100000000000.0`` → ``1e11``, ``0.0003`` → ``3e-4``); other text,
    integers included, unchanged."""
    try:
        number = float(text)
    except ValueError:
        return text
    if not any(c in text for c in ".eE") or not math.isfinite(number):
        return text
    positional = np.format_float_positional(number, trim="-")
    scientific = np.format_float_scientific(number, trim="-", exp_digits=1).replace("e+", "e")
    return scientific if len(scientific) < len(positional) else positional


def short_override(override: str) -> str:
    """``key=value`` with its value through :func:`short_number` (``budget.amount=1e11``)."""
    key, sep, value = override.partition("=")
    return f"{key}{sep}{short_number(value)}" if sep else override


def _same_value(found: Any, text: str) -> bool:
    """Whether a config value and an override's value text are the same value."""
    if found is None or isinstance(found, dict | list):
        return False
    try:
        if not isinstance(found, bool):
            return math.isclose(float(found), float(text), rel_tol=1e-12)
    except ValueError:
        pass
    return str(found).lower() == text.lower()


def default_overrides(job: dict[str, Any], jobs: list[dict[str, Any]]) -> list[str]:
    """The job's overrides that only restate a default: a job of the table without that override
    (and with the same choice of the key's config group) has the same value for the key."""
    folder = job.get("path")
    out = []
    for override in job["overrides"]:
        key = _key(override)
        if key == "algo" or "=" not in override or folder is None:
            continue  # the algorithm always names its group
        value, group = override.split("=", 1)[1], key.split(".")[0]
        for other in jobs:
            there = other.get("path")
            if there is None or any(_key(o) == key for o in other["overrides"]):
                continue
            if "." in key and _config_value(there, group) != _config_value(folder, group):
                continue  # `algo.lr=1e-3` restates PPO's default only if the other job is PPO
            if _same_value(_config_value(there, key), value):
                out.append(override)
                break
    return out


def common_overrides(jobs: list[dict[str, Any]]) -> list[str]:
    """Overrides every job shares (e.g. ``+experiment=headline``): shown once, not in each name."""
    if len(jobs) < 2:
        return []
    shared = set(jobs[0]["overrides"])
    for job in jobs[1:]:
        shared &= set(job["overrides"])
    # The algorithm always names its group, shared or not.
    return [o for o in jobs[0]["overrides"] if o in shared and _key(o) != "algo"]


def group_name(
    overrides: list[str],
    summary: dict[str, Any] | None,
    group_by: list[str] | None = None,
    folder: Path | None = None,
    common: list[str] | tuple[str, ...] = (),
) -> str:
    """A job's group: its overrides without the seed (and without ``common`` ones), or just the
    ``group_by`` keys' values."""
    if not group_by:
        kept = [
            short_override(o)
            for o in overrides
            if not o.lstrip("+~").startswith(IGNORED_KEYS) and o not in common
        ]
        if not any(o.startswith("algo=") for o in kept) and summary:
            kept.insert(0, f"algo={summary['algorithm']}")
        return " ".join(kept) or "default"
    by_key = {_key(o): o.lstrip("+~") for o in overrides}
    parts = []
    for key in group_by:
        if key in by_key:
            parts.append(short_override(by_key[key]))
            continue
        value = summary.get(NAME_KEYS[key]) if summary and key in NAME_KEYS else None
        if value is None and folder is not None:
            value = _config_value(folder, key)
        parts.append(f"{key}={'?' if value is None else value}")
    return " ".join(parts)


def _finished(summary: dict[str, Any] | None) -> bool:
    return bool(summary) and summary.get("status") == "finished"


@dataclass
class Group:
    """The jobs that differ only in their seed."""

    name: str
    jobs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def finished(self) -> list[dict[str, Any]]:
        """The summaries of the jobs that finished."""
        return [j["summary"] for j in self.jobs if _finished(j["summary"])]

    def values(self, metric: str) -> list[float]:
        """The metric of every finished seed (empty if any finished seed lacks it)."""
        done = self.finished
        return [float(s[metric]) for s in done] if all(metric in s for s in done) else []

    def by_world(self, metric: str) -> dict[str, list[float]]:
        """The metric of every finished job, by world (the stage-1 SFT model it started from)."""
        out: dict[str, list[float]] = {}
        if not self.values(metric):
            return out
        for summary in self.finished:
            out.setdefault(world_of(summary), []).append(float(summary[metric]))
        # Sorted: the bootstrap then depends on the values, not on the order jobs were listed.
        return {world: sorted(out[world]) for world in sorted(out)}

    @property
    def worlds(self) -> int:
        """How many worlds the finished jobs span."""
        return len({world_of(s) for s in self.finished})


def world_of(summary: dict[str, Any]) -> str:
    """A job's world: the stage-1 SFT model it started from (task data x SFT seed), by its key."""
    key = (summary.get("stage/sft") or {}).get("key")
    return str(key) if key else f"world={summary.get('world', '?')}"


def group_jobs(jobs: list[dict[str, Any]], group_by: list[str] | None = None) -> list[Group]:
    """Jobs grouped by :func:`group_name`, in the order they first appear."""
    groups: dict[str, Group] = {}
    common = common_overrides(jobs)
    for job in jobs:
        # Overrides that restate a default would split one configuration into two groups.
        noise = [*common, *default_overrides(job, jobs)] if not group_by else common
        name = group_name(job["overrides"], job["summary"], group_by, job.get("path"), noise)
        groups.setdefault(name, Group(name)).jobs.append(job)
    return list(groups.values())


def _task_of(job: dict[str, Any]) -> str | None:
    """The job's task: its name and config, without the seed (the seed is the world)."""
    config = _job_config(job["path"]) if job.get("path") is not None else None
    task = dict((config or {}).get("task") or {})
    task.pop("seed", None)
    if not task:
        return (job["summary"] or {}).get("task")
    name = task.pop("name", "?")
    return f"{name} {json.dumps(task, sort_keys=True)}"


def _budget_of(job: dict[str, Any]) -> str | None:
    """The job's budget as ``<kind> <amount>`` (``flops 6e11``)."""
    config = _job_config(job["path"]) if job.get("path") is not None else None
    budget = (config or {}).get("budget") or {}
    if "kind" not in budget:
        return None
    return f"{budget['kind']} {short_number(str(float(budget.get('amount', 0))))}"


def _shown(values: list[str]) -> str:
    """Values for a one-line warning: tasks by name alone when their names differ."""
    names = [v.split(" {", 1)[0] for v in values]
    return ", ".join(names if len(set(names)) == len(names) else values)


def mixing_warnings(groups: list[Group]) -> list[str]:
    """One line for each thing the table mixes without grouping it apart: tasks, budgets and
    stage-1 SFT models (per world). A group holding several is always warned about; groups that
    differ are, unless their names say how (an override of the key or an experiment)."""
    warnings = []
    kinds = [
        ("tasks", _task_of, ("task", "experiment"), "--group-by task"),
        ("budgets", _budget_of, ("budget", "experiment"), "--group-by budget.amount"),
    ]
    for what, value_of, keys, fix in kinds:
        values = {
            g.name: sorted({v for j in g.jobs if _finished(j["summary"]) if (v := value_of(j))})
            for g in groups
        }
        mixed = [(name, found) for name, found in values.items() if len(found) > 1]
        if mixed:
            name, found = mixed[0]
            more = f" (and {len(mixed) - 1} more groups)" if len(mixed) > 1 else ""
            warnings.append(
                f"warning: group `{name}` mixes {what}: {_shown(found)}{more} — keep them "
                f"apart with {fix} or --where"
            )
        elif len({v[0] for v in values.values() if v}) > 1 and not _named_apart(groups, keys):
            shown = "; ".join(f"`{n}`: {_shown(v)}" for n, v in values.items() if v)
            warnings.append(
                f"warning: the groups were run with different {what} ({shown}) — compare them "
                f"at one (--where) or name it ({fix})"
            )
    sft = _sft_warning(groups)
    return warnings + ([sft] if sft else [])


def _named_apart(groups: list[Group], keys: tuple[str, ...]) -> bool:
    """Whether every group's name carries an override of one of ``keys``."""
    return all(
        any(part.lstrip("+~").startswith(keys) for part in g.name.split(" ")) for g in groups
    )


def _sft_warning(groups: list[Group]) -> str | None:
    """A line when one world's jobs start from different stage-1 SFT models (other model or
    stage.sft settings, other code, a rebuilt cache), unless the group names say why."""
    for group in groups:
        by_world: dict[str, set[str]] = {}
        for summary in group.finished:
            key = (summary.get("stage/sft") or {}).get("key")
            if key:
                by_world.setdefault(str(summary.get("world")), set()).add(str(key)[:8])
        for world, keys in sorted(by_world.items()):
            if len(keys) > 1:
                return (
                    f"warning: group `{group.name}` mixes stage-1 SFT models in world {world}: "
                    f"{', '.join(sorted(keys))} — their model, stage.sft settings or code differ; "
                    "compare jobs of one SFT model (--where, or rerun with cache_rebuild=true)"
                )
    starts: dict[str, dict[str, str]] = {}
    for group in groups:
        for summary in group.finished:
            key = (summary.get("stage/sft") or {}).get("key")
            if key:
                starts.setdefault(str(summary.get("world")), {})[group.name] = str(key)[:8]
    for world, by_group in sorted(starts.items()):
        if len(set(by_group.values())) > 1 and not _named_apart(
            groups, ("model", "stage", "task", "experiment")
        ):
            shown = "; ".join(f"`{n}`: {k}" for n, k in by_group.items())
            return (
                f"warning: in world {world} the groups start from different stage-1 SFT models "
                f"({shown}) — their model, stage.sft settings or code differ; compare them apart"
            )
    return None


def stage1_starts(jobs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The initial evaluation of each stage-1 SFT model the jobs started from, by cache key."""
    starts: dict[str, dict[str, Any]] = {}
    rewards = {(j["summary"] or {}).get("reward") for j in jobs if j["summary"]}
    for job in sorted(jobs, key=lambda j: str((j["summary"] or {}).get("world"))):
        summary = job["summary"]
        if summary and "initial" in summary:
            # Every job starting from one stage-1 model has the same initial evaluation, except
            # its `…/reward`, which is the job's own reward: left out when rewards differ.
            initial = summary["initial"]
            if len(rewards) > 1:
                initial = {k: v for k, v in initial.items() if not k.endswith("/reward")}
            key = (summary.get("stage/sft") or {}).get("key", "?")[:8]
            if summary.get("world") is not None:
                key += f"` (world {summary['world']}) `"
            starts.setdefault(key, initial)
    return starts


# --------------------------------------------------------------------------------------------
# The Markdown report
# --------------------------------------------------------------------------------------------


def is_outcome(metric: str) -> bool:
    """Whether a metric measures the result (tested, IQM) rather than the cost of a job."""
    return not metric.startswith("budget/") and metric not in ("wall_time", "steps")


def _cell(
    values: list[float],
    metric: str,
    statistic: str = "mean",
    by_world: dict[str, list[float]] | None = None,
) -> str:
    if not values:
        return "—"
    if statistic == "iqm":
        centre = interquartile_mean(values)
        low, high = bootstrap_ci(values, statistic=_iqm_rows)
    elif by_world is not None and len(by_world) > 1:
        # Several worlds: the mean of world means, with an interval over worlds, then seeds.
        centre = float(np.mean([np.mean(v) for v in by_world.values()]))
        low, high = hierarchical_ci(list(by_world.values()))
    else:
        centre = float(np.mean(values))
        low, high = bootstrap_ci(values)
    if metric.startswith("budget/"):
        return f"{centre:.3g}"
    if metric == "wall_time":
        return f"{centre:.0f} s"
    if len(values) == 1:
        return f"{centre:.3f}"
    return f"{centre:.3f} [{low:.3f}, {high:.3f}]"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def pick_baseline(groups: list[Group], wanted: str | None) -> Group | None:
    """The ``--baseline`` group (backticks optional), else the first group with a finished job."""
    if wanted is not None:
        name = wanted.strip().strip("`")
        for group in groups:
            if group.name == name:
                return group
        known = ", ".join(f"'{g.name}'" for g in groups)
        raise BadInput(f"--baseline {wanted!r} is not a group of these sweeps — groups: {known}")
    return next((g for g in groups if g.finished), None)


def comparison_report(
    jobs: list[dict[str, Any]],
    metrics: tuple[str, ...],
    group_by: list[str] | None = None,
    baseline: str | None = None,
) -> str:
    """The Markdown table (mean [95% CI], IQM rows, markers) and the notes under it."""
    groups = group_jobs(jobs, group_by)
    base = pick_baseline(groups, baseline)
    tested = [m for m in metrics if is_outcome(m)]
    header = ["group", "seeds", *metrics]
    lines = [_row(header), "|" + "---|" * len(header)]
    for key, initial in stage1_starts(jobs).items():
        cells = [_cell([initial[m]], m) if m in initial else "—" for m in metrics]
        lines.append(_row([f"stage-1 SFT model `{key}`".replace(" ``", ""), "—", *cells]))
    results: dict[str, dict[str, Comparison]] = {}
    many_worlds = any(g.worlds > 1 for g in groups)
    for group in groups:
        seeds = f"{len(group.finished)}/{len(group.jobs)}"
        if many_worlds:
            seeds += f" ({group.worlds} worlds)"
        label = f"`{group.name}`" + (" (baseline)" if group is base else "")
        results[group.name] = {}
        cells = []
        for metric in metrics:
            cell = _cell(group.values(metric), metric, by_world=group.by_world(metric))
            if base is not None and group is not base and metric in tested and not many_worlds:
                found = compare_to_baseline(group.values(metric), base.values(metric))
                if found is not None:
                    results[group.name][metric] = found
                    cell += f" {found.marker}" if found.marker else ""
            cells.append(cell)
        lines.append(_row([label, seeds, *cells]))
        if len(group.finished) >= IQM_MIN_SEEDS and not many_worlds:
            iqm = [_cell(group.values(m), m, "iqm") if m in tested else "—" for m in metrics]
            lines.append(_row(["↳ IQM", "—", *iqm]))
    if many_worlds:
        notes = _world_notes(groups, base, tested)
    else:
        notes = _significance_notes(groups, base, tested, results)
    if any(len(g.finished) >= IQM_MIN_SEEDS for g in groups) and not many_worlds:
        notes.append(
            "`↳ IQM`: interquartile mean over seeds (the mean of the middle 50 %, as rliable "
            f"recommends) with its 95 % bootstrap interval, for groups with ≥ {IQM_MIN_SEEDS} "
            "finished seeds."
        )
    notes += _failure_notes(jobs)
    common = [
        short_override(o)
        for o in common_overrides(jobs)
        if not o.lstrip("+~").startswith(IGNORED_KEYS)
    ]
    if common and not group_by:
        notes.insert(0, "Every job shares: " + " ".join(f"`{o}`" for o in common) + ".")
    warnings = mixing_warnings(groups)
    if warnings:
        notes.insert(0, "\n".join(f"**{w}**" for w in warnings))
    return "\n".join(lines) + ("\n\n" + "\n\n".join(notes) if notes else "")


def _significance_notes(
    groups: list[Group],
    base: Group | None,
    tested: list[str],
    results: dict[str, dict[str, Comparison]],
) -> list[str]:
    compared = [g for g in groups if results.get(g.name)]
    if base is None or not compared:
        return []
    found = [c for g in compared for c in results[g.name].values()]
    notes = [
        f"Markers compare each group with the baseline `{base.name}`, metric by metric, over "
        "seeds: `*` p < 0.05 in a two-sided permutation test of the difference in means (exact "
        "over every relabelling of the seeds when there are few; no correction for multiple "
        "comparisons)."
    ]
    weak = sorted({c.smallest_p for c in found if c.smallest_p >= ALPHA}, reverse=True)
    if weak:
        sizes = sorted(
            {
                f"{len(g.finished)} vs {len(base.finished)}"
                for g in compared
                if smallest_permutation_p(len(g.finished), len(base.finished)) >= ALPHA
            }
        )
        notes.append(
            f"With {', '.join(sizes)} seeds no permutation test can reach p < 0.05 (the smallest "
            f"possible p is {weak[-1]:.2f}), so `*` cannot appear there. `†` marks the weaker "
            "evidence instead: the 95 % bootstrap intervals do not overlap (with 3 seeds: every "
            f"seed of one group beats every seed of the other; needs ≥ {DAGGER_MIN_SEEDS} seeds "
            "per group). Run at least 4 seeds per group for a real test."
        )
    p_header = [
        "p-value vs baseline",
        *[m for m in tested if any(m in results[g.name] for g in compared)],
    ]
    p_lines = [_row(p_header), "|" + "---|" * len(p_header)]
    for group in compared:
        cells = []
        for metric in p_header[1:]:
            c = results[group.name].get(metric)
            cells.append("—" if c is None else f"{c.p:.3f}{(' ' + c.marker) if c.marker else ''}")
        p_lines.append(_row([f"`{group.name}`", *cells]))
    notes.append("\n".join(p_lines))
    return notes


def _world_notes(groups: list[Group], base: Group | None, tested: list[str]) -> list[str]:
    """With several worlds: differences from the baseline paired by world, and world spread."""
    notes = [
        "Jobs span several worlds (a world = the task's data and the stage-1 SFT model it "
        "trains; `world=N`). Each cell is the mean of the world means with a 95 % hierarchical "
        "bootstrap interval (worlds resampled, then seeds inside each world), so that the "
        "world-to-world variation counts, not only the seeds'."
    ]
    if base is not None:
        header = [f"difference from `{base.name}` [95 % CI]", *tested]
        lines = [_row(header), "|" + "---|" * len(header)]
        for group in groups:
            if group is base or not group.finished:
                continue
            cells = []
            for metric in tested:
                found = paired_difference_ci(group.by_world(metric), base.by_world(metric))
                if found is None:
                    cells.append("—")
                    continue
                point, low, high = found
                mark = " *" if low > 0 or high < 0 else ""
                cells.append(f"{point:+.3f} [{low:+.3f}, {high:+.3f}]{mark}")
            lines.append(_row([f"`{group.name}`", *cells]))
        notes.append(
            "Differences are paired by world (worlds resampled together for both groups). "
            "`*`: the 95 % interval excludes 0.\n\n" + "\n".join(lines)
        )
    header = ["world-to-world spread: min – max of world means", *tested]
    lines = [_row(header), "|" + "---|" * len(header)]
    for group in groups:
        cells = []
        for metric in tested:
            means = [float(np.mean(v)) for v in group.by_world(metric).values()]
            cells.append(f"{min(means):.3f} – {max(means):.3f}" if len(means) > 1 else "—")
        lines.append(_row([f"`{group.name}`", *cells]))
    notes.append("\n".join(lines))
    return notes


def _failure_notes(jobs: list[dict[str, Any]]) -> list[str]:
    lines = []
    for job in jobs:
        summary = job["summary"]
        if _finished(summary):
            continue
        if summary is None:
            why = "unfinished: no summary.json (still running, or killed before it ended)"
        elif summary.get("status") == "failed":
            why = f"failed: {summary.get('error', 'no error recorded')}"
        else:
            why = f"unfinished: status {summary.get('status', '?')!r}"
        lines.append(f"- `{job['sweep']}/{job['folder']}` — {why}")
    if not lines:
        return []
    return [
        "Failed or unfinished jobs (counted in `seeds`, left out of the numbers):\n"
        + "\n".join(lines)
    ]


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def load_curve(folder: Path, metric: str, x_key: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``"kind": "eval"`` points of one job's ``metrics.jsonl``: x and metric, sorted by x."""
    points: dict[float, float] = {}
    path = folder / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a job killed mid-line
                continue
            if record.get("kind") == "eval" and metric in record and x_key in record:
                points[float(record[x_key])] = float(record[metric])
    xs = np.asarray(sorted(points), dtype=float)
    return xs, np.asarray([points[x] for x in xs], dtype=float)


def seed_band(
    curves: list[tuple[np.ndarray, np.ndarray]], points: int = 200
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seeds interpolated onto the x range they share: grid, mean, min and max."""
    low = max(float(x[0]) for x, _ in curves)
    high = min(float(x[-1]) for x, _ in curves)
    grid = np.linspace(low, high, points) if high > low else np.asarray([low])
    ys = np.stack([np.interp(grid, x, y) for x, y in curves])
    return grid, ys.mean(axis=0), ys.min(axis=0), ys.max(axis=0)


def _slug(metric: str) -> str:
    return metric.replace("/", "_")


def write_plots(
    jobs: list[dict[str, Any]],
    metrics: list[str],
    x_axis: str,
    out_dir: Path,
    stem: str,
    group_by: list[str] | None = None,
) -> list[tuple[str, Path]]:
    """Curves of each metric against ``budget/<x_axis>`` and the abstention trade-off, as PNGs.

    Returns (description, path) of every plot written; a metric without data is skipped.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in group_jobs(jobs, group_by) if g.finished]
    colours = {g.name: plt.get_cmap("tab10")(i % 10) for i, g in enumerate(groups)}
    x_key = f"budget/{x_axis}"
    written: list[tuple[str, Path]] = []
    for metric in metrics:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        drawn = False
        for group in groups:
            curves = [
                load_curve(j["path"], metric, x_key) for j in group.jobs if _finished(j["summary"])
            ]
            curves = [c for c in curves if len(c[0])]
            if not curves:
                continue
            grid, mean, low, high = seed_band(curves)
            colour = colours[group.name]
            ax.plot(grid, mean, color=colour, lw=2, label=f"{group.name} ({len(curves)} seeds)")
            if len(curves) > 1:
                ax.fill_between(grid, low, high, color=colour, alpha=0.2, lw=0)
            drawn = True
        if drawn:
            ax.set_xlabel(f"{x_key} (compute spent)")
            ax.set_ylabel(metric)
            ax.set_title(
                f"{metric} against {x_key}\n"
                "line: mean over seeds (linear between evaluations); band: min–max over seeds"
            )
            ax.grid(alpha=0.3)
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), fontsize=8, frameon=False)
            path = out_dir / f"{stem}_{_slug(metric)}.png"
            fig.savefig(path, dpi=120, bbox_inches="tight")
            written.append((f"{metric} against {x_key}", path))
        plt.close(fig)
    tradeoff = _tradeoff_plot(plt, groups, stage1_starts(jobs), colours, out_dir, stem)
    if tradeoff is not None:
        written.append(tradeoff)
    return written


def _tradeoff_plot(
    plt: Any,
    groups: list[Group],
    starts: dict[str, dict[str, Any]],
    colours: dict[str, Any],
    out_dir: Path,
    stem: str,
) -> tuple[str, Path] | None:
    x_metric, y_metric = TRADEOFF
    points = [(g, g.values(x_metric), g.values(y_metric)) for g in groups]
    points = [(g, xs, ys) for g, xs, ys in points if xs and ys]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7, 5))
    for group, xs, ys in points:
        x, y = float(np.mean(xs)), float(np.mean(ys))
        x_low, x_high = bootstrap_ci(xs)
        y_low, y_high = bootstrap_ci(ys)
        ax.errorbar(
            x,
            y,
            xerr=[[x - x_low], [x_high - x]],
            yerr=[[y - y_low], [y_high - y]],
            fmt="o",
            ms=8,
            capsize=4,
            color=colours[group.name],
            label=f"{group.name} ({len(xs)} seeds)",
        )
    for i, (key, initial) in enumerate(starts.items()):
        if x_metric in initial and y_metric in initial:
            ax.plot(
                initial[x_metric],
                initial[y_metric],
                marker="*",
                ms=16,
                color="black",
                ls="none",
                label=f"stage-1 SFT model {key[:8]}" if i < 3 else None,
            )
    ax.set_xlabel(f"{x_metric}  (lower is better: left)")
    ax.set_ylabel(f"{y_metric}  (higher is better)")
    ax.set_title("Abstention trade-off: mean over seeds, bars: 95% bootstrap interval")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=8, frameon=False)
    path = out_dir / f"{stem}_tradeoff.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return f"{y_metric} against {x_metric}", path


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise BadInput(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m alignbench.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sweep", type=Path, nargs="+", help="sweep folders (results/sweeps/<date>)")
    parser.add_argument("--out", type=Path, help="where to write the table (default: first sweep)")
    parser.add_argument("--metric", action="append", help="a summary key to show (repeatable)")
    parser.add_argument(
        "--x", choices=X_AXES, default="flops", help="x axis of the curves: budget/<x> (flops)"
    )
    parser.add_argument(
        "--group-by",
        action="append",
        metavar="KEY",
        help="an override key that defines a group, e.g. algo (repeatable; default: every "
        "override except seed, hydra, logger and cache_dir)",
    )
    parser.add_argument(
        "--baseline", metavar="GROUP", help="the group others are tested against (default: first)"
    )
    parser.add_argument("--no-plots", action="store_true", help="write the table only")
    parser.add_argument(
        "--where",
        action="append",
        metavar="KEY=VALUE",
        help="keep only jobs with this override, e.g. reward=abstention (repeatable)",
    )
    parser.add_argument(
        "--curve-metric",
        default="test/reward",
        help="the eval metric whose curves give AUC and compute-to-threshold (test/reward)",
    )
    parser.add_argument(
        "--lower-is-better", action="store_true", help="for --curve-metric (e.g. hallucination)"
    )
    parser.add_argument(
        "--share", type=float, default=0.9, help="threshold: this share of the best gain (0.9)"
    )
    parser.add_argument(
        "--reach",
        nargs=2,
        metavar=("A", "B"),
        help="answer: does group A reach --share of B's gain at --reach-compute of B's compute?",
    )
    parser.add_argument(
        "--reach-compute", type=float, default=0.5, help="share of B's compute for --reach (0.5)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Print the comparison of one or more sweeps, write it to ``comparison.md``, draw PNGs."""
    try:
        args = _parser().parse_args(argv)
        jobs = []
        for sweep in args.sweep:
            found = load_jobs(sweep) if sweep.is_dir() else []
            if not found:
                raise BadInput(
                    f"{sweep} holds no jobs (no */.hydra folders) — give sweep folders "
                    "under results/sweeps/"
                )
            jobs += found
        for condition in args.where or []:
            if "=" not in condition:
                raise BadInput(f"--where {condition!r} — write it as KEY=VALUE, e.g. reward=rm")
            jobs = [j for j in jobs if condition in [o.lstrip("+") for o in j["overrides"]]]
            if not jobs:
                raise BadInput(f"--where {condition}: no job has this override")
        jobs, duplicates = drop_duplicates(jobs)
        metrics = tuple(args.metric or task_metrics(jobs) or DEFAULT_METRICS)
        report = comparison_report(jobs, metrics, args.group_by, args.baseline)
        for line in mixing_warnings(group_jobs(jobs, args.group_by)):
            print(line, file=sys.stderr)
        if duplicates:
            print(f"warning: {len(duplicates)} duplicate job(s) counted once", file=sys.stderr)
            report += "\n\nDuplicate configs (counted once):\n\n" + "\n".join(duplicates)
        origin = provenance_note(list(args.sweep), jobs)
        if origin:
            report = origin + "\n\n" + report
        if not 0 < args.share <= 1 or not 0 < args.reach_compute <= 1:
            raise BadInput("--share and --reach-compute must be in (0, 1]")
        from alignbench.curves import curve_report

        curves = curve_report(
            jobs,
            args.curve_metric,
            args.group_by,
            share=args.share,
            higher=not args.lower_is_better,
            reach=tuple(args.reach) if args.reach else None,
            reach_compute=args.reach_compute,
        )
        if curves:
            report += "\n\n## Cost: the curves at equal compute\n\n" + curves
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out or args.sweep[0] / "comparison.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not args.no_plots:
        plotted = [m for m in metrics if m.startswith(CURVE_PREFIXES)]
        plots = write_plots(jobs, plotted, args.x, out.parent, out.stem, args.group_by)
        if plots:
            links = [f"![{what}]({path.name})" for what, path in plots]
            report += "\n\nPlots (next to this file):\n\n" + "\n\n".join(links)
    out.write_text(report + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
