"""The jobs of a sweep: loading them, dropping duplicate configs, where the numbers come from,
and grouping jobs that differ only in their seed."""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

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
#: Summary keys with the algorithm/task/reward name (for ``--group-by algo`` without an override).
NAME_KEYS = {"algo": "algorithm", "task": "task", "reward": "reward"}


class BadInput(Exception):
    """A command-line mistake, reported as one line and exit code 2."""


#: Every multirun into a sweep folder appends its command here (``alignbench.cli``); Hydra's
#: ``multirun.yaml`` holds only the last one.
COMMANDS_FILE = "commands.jsonl"


def command_args(overrides: Any) -> list[str]:
    """A multirun's command-line arguments from Hydra's ``hydra.overrides`` (task, then the
    hydra ones, without those Hydra adds itself)."""
    hydra_args = [
        o
        for o in (overrides.get("hydra") or [])
        if not str(o).startswith(("hydra.run.dir=", "hydra.mode="))
    ]
    return [*map(str, overrides.get("task") or []), *map(str, hydra_args)]


def sweep_commands(sweep: Path) -> list[list[str]]:
    """Every distinct command that ran into ``sweep``, oldest first: from ``commands.jsonl``
    (several commands into one folder), else from Hydra's ``multirun.yaml`` (the last one)."""
    path = sweep / COMMANDS_FILE
    if path.is_file():
        commands: list[list[str]] = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                args = json.loads(line).get("args")
            except (json.JSONDecodeError, AttributeError):
                continue  # a cut last line
            if isinstance(args, list) and args not in commands:
                commands.append([str(a) for a in args])
        if commands:
            return commands
    path = sweep / "multirun.yaml"
    if path.is_file():
        hydra_cfg = (yaml.safe_load(path.read_text()) or {}).get("hydra", {})
        return [command_args(hydra_cfg.get("overrides", {}))]
    return []


def provenance_note(sweeps: list[Path], jobs: list[dict[str, Any]]) -> str:
    """Where the numbers come from: the commands (from each sweep's ``multirun.yaml``), the
    code (git commits recorded by the jobs or their stage-1 models) and the library versions."""
    lines = []
    for sweep in sweeps:
        for args in sweep_commands(sweep):
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
def job_config(folder: Path) -> Any:
    """The job's composed config (``.hydra/config.yaml``) as plain data, read once."""
    path = folder / ".hydra" / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else None


def _config_value(folder: Path, key: str) -> Any:
    """A dotted key's value in the job's composed config (``.hydra/config.yaml``), or None."""
    node: Any = job_config(folder)
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


def is_finished(summary: dict[str, Any] | None) -> bool:
    """Whether a job's summary says it finished (None: it never wrote one)."""
    return bool(summary) and summary.get("status") == "finished"


@dataclass
class JobGroup:
    """The jobs that differ only in their seed (one row of a comparison)."""

    name: str
    jobs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def finished(self) -> list[dict[str, Any]]:
        """The summaries of the jobs that finished."""
        return [j["summary"] for j in self.jobs if is_finished(j["summary"])]

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


#: The report's name for :class:`JobGroup` before the rename (``alignbench.Group`` is stage 2's
#: ranked group of responses, :class:`alignbench.rm.feedback.Group`).
Group = JobGroup


def world_of(summary: dict[str, Any]) -> str:
    """A job's world: the stage-1 SFT model it started from (task data x SFT seed), by its key."""
    key = (summary.get("stage/sft") or {}).get("key")
    return str(key) if key else f"world={summary.get('world', '?')}"


def group_jobs(jobs: list[dict[str, Any]], group_by: list[str] | None = None) -> list[JobGroup]:
    """Jobs grouped by :func:`group_name`, in the order they first appear."""
    groups: dict[str, JobGroup] = {}
    common = common_overrides(jobs)
    for job in jobs:
        # Overrides that restate a default would split one configuration into two groups.
        noise = [*common, *default_overrides(job, jobs)] if not group_by else common
        name = group_name(job["overrides"], job["summary"], group_by, job.get("path"), noise)
        groups.setdefault(name, JobGroup(name)).jobs.append(job)
    return list(groups.values())


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
