"""What a table mixes without saying so: tasks, budgets and stage-1 SFT models that differ inside
a group or between groups whose names do not tell them apart."""

from __future__ import annotations

import json
from typing import Any

from alignbench.report.jobs import JobGroup, is_finished, job_config, short_number


def _task_of(job: dict[str, Any]) -> str | None:
    """The job's task: its name and config, without the seed (the seed is the world)."""
    config = job_config(job["path"]) if job.get("path") is not None else None
    task = dict((config or {}).get("task") or {})
    task.pop("seed", None)
    if not task:
        return (job["summary"] or {}).get("task")
    name = task.pop("name", "?")
    return f"{name} {json.dumps(task, sort_keys=True)}"


def _budget_of(job: dict[str, Any]) -> str | None:
    """The job's budget as ``<kind> <amount>`` (``flops 6e11``)."""
    config = job_config(job["path"]) if job.get("path") is not None else None
    budget = (config or {}).get("budget") or {}
    if "kind" not in budget:
        return None
    return f"{budget['kind']} {short_number(str(float(budget.get('amount', 0))))}"


def _shown(values: list[str]) -> str:
    """Values for a one-line warning: tasks by name alone when their names differ."""
    names = [v.split(" {", 1)[0] for v in values]
    return ", ".join(names if len(set(names)) == len(names) else values)


def mixing_warnings(groups: list[JobGroup]) -> list[str]:
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
            g.name: sorted({v for j in g.jobs if is_finished(j["summary"]) if (v := value_of(j))})
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


def _named_apart(groups: list[JobGroup], keys: tuple[str, ...]) -> bool:
    """Whether every group's name carries an override of one of ``keys``."""
    return all(
        any(part.lstrip("+~").startswith(keys) for part in g.name.split(" ")) for g in groups
    )


def _sft_warning(groups: list[JobGroup]) -> str | None:
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
