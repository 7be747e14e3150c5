"""The figures (matplotlib, as PNGs): each eval metric against the compute spent, one line per
group with its band over seeds, and the abstention trade-off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from alignbench.report.jobs import JobGroup, group_jobs, is_finished, load_curve, stage1_starts
from alignbench.report.metrics import TRADEOFF
from alignbench.report.stats import bootstrap_ci

#: Metrics drawn as curves against the budget (evaluations on the dev and test splits).
CURVE_PREFIXES = ("test/", "dev/")
X_AXES = ("flops", "steps", "samples", "tokens", "seconds")


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
                load_curve(j["path"], metric, x_key)
                for j in group.jobs
                if is_finished(j["summary"])
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
    groups: list[JobGroup],
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
