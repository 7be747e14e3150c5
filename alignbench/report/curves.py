"""What the evaluation curves say about cost: area under the curve, compute to a threshold, and
whether one method reaches another's result for less compute.

Every job is evaluated at the same budget points (``eval.points`` evenly over its FLOP budget),
so curves of different algorithms can be compared at equal compute. Values between evaluations
are linear interpolations. Thresholds are relative to each world's stage-1 SFT model (the
``initial`` evaluation): "90 % of the best method's gain over the SFT model", which stays
meaningful when a reward is negative.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np

from alignbench.report.jobs import JobGroup, group_jobs, is_finished, load_curve, world_of
from alignbench.report.stats import hierarchical_ci, paired_difference_ci

#: Budget fractions at which the curve section reads each group's value (a budget sweep read
#: off the curves: with a 16x budget, these are the 1x, 4x and 16x results).
FRACTIONS = (1 / 16, 1 / 4, 1.0)


def area_under_curve(xs: np.ndarray, ys: np.ndarray) -> float:
    """Mean value of the curve over the compute it spans (trapezoid area / x range)."""
    if len(xs) < 2 or xs[-1] <= xs[0]:
        return float(ys[-1]) if len(ys) else math.nan
    area = float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2))
    return area / float(xs[-1] - xs[0])


def compute_to_threshold(
    xs: np.ndarray, ys: np.ndarray, threshold: float, higher: bool = True
) -> float:
    """First x where the curve (linear between points) reaches ``threshold``; inf if never."""
    sign = 1.0 if higher else -1.0
    gap = sign * (np.asarray(ys, dtype=float) - threshold)
    if len(gap) == 0:
        return math.inf
    if gap[0] >= 0:
        return float(xs[0])
    for i in range(1, len(gap)):
        if gap[i] >= 0:
            # Linear interpolation between the last point below and the first at or above.
            t = -gap[i - 1] / (gap[i] - gap[i - 1])
            return float(xs[i - 1] + t * (xs[i] - xs[i - 1]))
    return math.inf


def _curves(
    group: JobGroup, metric: str, x_key: str
) -> list[tuple[str, Any, np.ndarray, np.ndarray]]:
    """(world, summary, xs, ys) of every finished job of a group that has a curve."""
    out = []
    for job in group.jobs:
        if not is_finished(job["summary"]):
            continue
        xs, ys = load_curve(job["path"], metric, x_key)
        if len(xs):
            out.append((world_of(job["summary"]), job["summary"], xs, ys))
    return out


def _starts(curves: list[tuple[str, Any, np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Each world's starting value (the stage-1 SFT model's evaluation at 0 compute)."""
    return {world: float(ys[0]) for world, _, _, ys in curves}


def _median_interval(costs: list[float], samples: int = 10_000) -> tuple[float, float]:
    """95 % bootstrap interval of the median of ``costs`` (inf = never reached is allowed)."""
    data = np.asarray(costs, dtype=float)
    if len(data) < 2:
        return float(data[0]), float(data[0])
    rng = np.random.default_rng(0)
    medians = np.median(rng.choice(data, size=(samples, len(data)), replace=True), axis=1)
    # "nearest": a quantile of draws that include inf is inf, never inf - inf = nan.
    low, high = np.quantile(medians, [0.025, 0.975], method="nearest")
    return float(low), float(high)


def _fmt(x: float) -> str:
    return "∞" if math.isinf(x) else f"{x:.3g}"


def curve_report(
    jobs: list[dict[str, Any]],
    metric: str = "test/reward",
    group_by: list[str] | None = None,
    share: float = 0.9,
    higher: bool = True,
    reach: tuple[str, str] | None = None,
    reach_compute: float = 0.5,
    x_key: str = "budget/flops",
) -> str:
    """Markdown: AUC, compute to ``share`` of the best gain, values at budget fractions, and
    (with ``reach=(A, B)``) whether A reaches ``share`` of B's gain at ``reach_compute`` of B's
    compute. Empty when no job has a curve of ``metric``."""
    groups = [g for g in group_jobs(jobs, group_by) if g.finished]
    curves = {g.name: _curves(g, metric, x_key) for g in groups}
    curves = {name: c for name, c in curves.items() if c}
    # Methods that train nothing (best-of-N) spend no training compute: they have no curve
    # against it, and would make the common budget 0. Named below the table instead.
    untrained = sorted(n for n, c in curves.items() if max(float(x[-1]) for _, _, x, _ in c) <= 0)
    curves = {name: c for name, c in curves.items() if name not in untrained}
    if not curves:
        return ""
    starts: dict[str, float] = {}
    for found in curves.values():
        starts.update(_starts(found))
    sign = 1.0 if higher else -1.0

    def world_finals(name: str) -> dict[str, float]:
        by: dict[str, list[float]] = {}
        for world, _, _, ys in curves[name]:
            by.setdefault(world, []).append(float(ys[-1]))
        return {w: float(np.mean(v)) for w, v in by.items()}

    finals = {name: world_finals(name) for name in curves}
    best = max(curves, key=lambda n: sign * np.mean(list(finals[n].values())))
    thresholds = {w: starts[w] + share * (finals[best][w] - starts[w]) for w in finals[best]}
    # The compute every job reached (jobs overshoot their budget by part of a step).
    budget = min(float(xs[-1]) for c in curves.values() for _, _, xs, _ in c)
    frac_names = [f"at {Fraction(f).limit_denominator(64)} of the budget" for f in FRACTIONS]
    header = [
        "group",
        f"AUC of {metric} (mean over the budget)",
        f"{x_key} to {share:.0%} of `{best}`'s gain (median [95 % CI], reached)",
        *frac_names,
    ]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for name, found in curves.items():
        aucs: dict[str, list[float]] = {}
        for world, _, xs, ys in found:
            aucs.setdefault(world, []).append(area_under_curve(xs, ys))
        auc_low, auc_high = hierarchical_ci(list(aucs.values()))
        auc_mean = float(np.mean([np.mean(v) for v in aucs.values()]))
        costs = [
            compute_to_threshold(xs, ys, thresholds[w], higher)
            for w, _, xs, ys in found
            if w in thresholds
        ]
        reached = sum(not math.isinf(c) for c in costs)
        if costs:
            median = float(np.median(costs))
            low, high = _median_interval(costs)
            cost_cell = f"{_fmt(median)} [{_fmt(low)}, {_fmt(high)}] ({reached}/{len(costs)})"
        else:
            cost_cell = "— (other worlds than the best group's)"
        at = []
        for fraction in FRACTIONS:
            by: dict[str, list[float]] = {}
            for world, _, xs, ys in found:
                x = fraction * budget
                if xs[-1] >= x:  # only where the job ran that far
                    by.setdefault(world, []).append(float(np.interp(x, xs, ys)))
            if by:
                low, high = hierarchical_ci(list(by.values()))
                mean = float(np.mean([np.mean(v) for v in by.values()]))
                at.append(f"{mean:.3f} [{low:.3f}, {high:.3f}]")
            else:
                at.append("—")
        lines.append(
            f"| `{name}` | {auc_mean:.3f} [{auc_low:.3f}, {auc_high:.3f}] | {cost_cell} | "
            + " | ".join(at)
            + " |"
        )
    text = [
        f"**{metric} against {x_key}.** The threshold is, per world, the SFT model's value plus "
        f"{share:.0%} of the gain of the best group (`{best}`) at the end of its budget; compute "
        "is read off each job's curve (linear between evaluations; ∞ = never reached). AUC is "
        "the curve's mean over the compute it spans. Intervals: hierarchical bootstrap over "
        "worlds then seeds (AUC, values), bootstrap over jobs (compute to threshold).",
        "\n".join(lines),
    ]
    if untrained:
        shown = ", ".join(f"`{n}`" for n in untrained)
        text.append(
            f"Left out of the curves: {shown} — no training compute (an inference-time method; "
            "its cost per question is in the table's `flops_per_question`)."
        )
    if reach is not None:
        text.append(reach_answer(curves, starts, reach, metric, share, reach_compute, higher))
    return "\n\n".join(text)


def reach_answer(
    curves: dict[str, list[tuple[str, Any, np.ndarray, np.ndarray]]],
    starts: dict[str, float],
    reach: tuple[str, str],
    metric: str,
    share: float,
    reach_compute: float,
    higher: bool,
) -> str:
    """Does A reach ``share`` of B's gain at ``reach_compute`` of B's compute? Yes / no / can't
    tell, from the 95 % interval of the difference (paired by world)."""
    a_name, b_name = (name.strip().strip("`") for name in reach)
    for name in (a_name, b_name):
        if name not in curves:
            known = ", ".join(f"'{n}'" for n in curves)
            return f"`--reach`: no group '{name}' with curves of {metric} — groups: {known}"
    sign = 1.0 if higher else -1.0
    b_compute: dict[str, list[float]] = {}
    targets: dict[str, list[float]] = {}
    for world, _, xs, ys in curves[b_name]:
        b_compute.setdefault(world, []).append(float(xs[-1]))
        # share of B's gain over the SFT model; sign makes "reaching" a gain >= 0 either way.
        targets.setdefault(world, []).append(
            sign * (starts[world] + share * (float(ys[-1]) - starts[world]))
        )
    values: dict[str, list[float]] = {}
    for world, _, xs, ys in curves[a_name]:
        if world in b_compute:
            x = reach_compute * float(np.mean(b_compute[world]))
            values.setdefault(world, []).append(sign * float(np.interp(x, xs, ys)))
    found = paired_difference_ci(values, targets)
    question = (
        f"Does `{a_name}` reach ≥ {share:.0%} of `{b_name}`'s gain in {metric} (over the SFT "
        f"model) at ≤ {reach_compute:.0%} of `{b_name}`'s compute?"
    )
    if found is None:
        return f"**{question}** Cannot tell: the two groups share no world."
    point, low, high = found
    answer = "Yes" if low > 0 else "No" if high < 0 else "Cannot tell"
    return (
        f"**{question}** **{answer}**: `{a_name}`'s value there minus the {share:.0%} target = "
        f"{point:+.3f} [95 % CI {low:+.3f}, {high:+.3f}] ({'higher' if higher else 'lower'} is "
        f"better; paired by world over {len(set(values) & set(targets))} worlds; yes when the "
        "interval is above 0, no when below, otherwise the data cannot tell)."
    )
