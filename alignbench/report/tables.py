"""The Markdown comparison table: mean [95 % CI] per group and metric, IQM rows, markers against
the baseline, and the notes under the table (significance, worlds, failed jobs)."""

from __future__ import annotations

from typing import Any

import numpy as np

from alignbench.report.jobs import (
    IGNORED_KEYS,
    BadInput,
    JobGroup,
    common_overrides,
    group_jobs,
    is_finished,
    short_override,
    stage1_starts,
)
from alignbench.report.mixing import mixing_warnings
from alignbench.report.stats import (
    ALPHA,
    DAGGER_MIN_SEEDS,
    IQM_MIN_SEEDS,
    Comparison,
    bootstrap_ci,
    compare_to_baseline,
    hierarchical_ci,
    interquartile_mean,
    iqm_rows,
    paired_difference_ci,
    smallest_permutation_p,
)


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
        low, high = bootstrap_ci(values, statistic=iqm_rows)
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


def pick_baseline(groups: list[JobGroup], wanted: str | None) -> JobGroup | None:
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
    groups: list[JobGroup],
    base: JobGroup | None,
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


def _world_notes(groups: list[JobGroup], base: JobGroup | None, tested: list[str]) -> list[str]:
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
        if is_finished(summary):
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
