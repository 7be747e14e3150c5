"""``python -m alignbench.compare <sweep dir>``: turn a sweep into one honest table.

Jobs are grouped by their command-line overrides minus the seed; each cell is the mean over
seeds with a 95% percentile-bootstrap interval. Failed or unfinished jobs are counted and shown,
never silently dropped. The table is printed and written to ``<sweep dir>/comparison.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml

DEFAULT_METRICS = (
    "eval/accuracy_known",
    "eval/hallucination_unknown",
    "eval/abstain_unknown",
    "eval_rl/accuracy_known",
    "eval_rl/hallucination_unknown",
    "eval_rl/abstain_unknown",
    "eval/reward",
    "budget/flops",
    "wall_time",
)
IGNORED_KEYS = ("seed", "hydra.", "logger", "cache_dir")


def bootstrap_ci(values: list[float], samples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of ``values`` (a point for one value)."""
    data = np.asarray(values, dtype=float)
    if len(data) < 2:
        return float(data.mean()), float(data.mean())
    rng = np.random.default_rng(seed)
    means = rng.choice(data, size=(samples, len(data)), replace=True).mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def load_jobs(sweep: Path) -> list[dict[str, Any]]:
    """Every job folder of a sweep: its overrides, and its summary (None if it never finished)."""
    jobs = []
    for folder in sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir()):
        overrides = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text()) or []
        summary_path = folder / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
        jobs.append({"folder": folder.name, "overrides": overrides, "summary": summary})
    return jobs


def group_name(overrides: list[str], summary: dict[str, Any] | None) -> str:
    """A job's group: its overrides without the seed (at least the algorithm)."""
    kept = [o for o in overrides if not o.lstrip("+~").startswith(IGNORED_KEYS)]
    if not any(o.startswith("algo=") for o in kept) and summary:
        kept.insert(0, f"algo={summary['algorithm']}")
    return " ".join(kept) or "default"


def _cell(values: list[float], metric: str) -> str:
    mean = float(np.mean(values))
    low, high = bootstrap_ci(values)
    if metric == "budget/flops":
        return f"{mean:.3g}"
    if len(values) == 1:
        return f"{mean:.3f}"
    if metric == "wall_time":
        return f"{mean:.0f} s"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def _finished(summary: dict[str, Any] | None) -> bool:
    return bool(summary) and summary.get("status") == "finished"


def comparison_table(jobs: list[dict[str, Any]], metrics: tuple[str, ...]) -> str:
    """A Markdown table: one row per group, mean [95% CI] over seeds per metric."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    starts: dict[str, dict[str, Any]] = {}
    for job in jobs:
        groups[group_name(job["overrides"], job["summary"])].append(job)
        summary = job["summary"]
        if summary and "initial" in summary:
            # Every job starting from one stage-1 model has the same initial evaluation.
            starts.setdefault(summary["stage/sft"]["key"], summary["initial"])
    header = ["group", "seeds", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, initial in starts.items():
        cells = [_cell([initial[m]], m) if m in initial else "—" for m in metrics]
        lines.append("| " + " | ".join([f"stage-1 SFT model `{key[:8]}`", "—", *cells]) + " |")
    for name, members in groups.items():
        done = [j["summary"] for j in members if _finished(j["summary"])]
        seeds = f"{len(done)}/{len(members)}"
        cells = [
            _cell([s[m] for s in done], m) if done and all(m in s for s in done) else "—"
            for m in metrics
        ]
        lines.append("| " + " | ".join([f"`{name}`", seeds, *cells]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the comparison table of one or more sweeps and write it to ``comparison.md``."""
    parser = argparse.ArgumentParser(prog="python -m alignbench.compare", description=__doc__)
    parser.add_argument("sweep", type=Path, nargs="+", help="sweep folders (results/sweeps/<date>)")
    parser.add_argument("--out", type=Path, help="where to write the table (default: first sweep)")
    parser.add_argument("--metric", action="append", help="a summary key to show (repeatable)")
    args = parser.parse_args(argv)
    jobs = []
    for sweep in args.sweep:
        found = load_jobs(sweep) if sweep.is_dir() else []
        if not found:
            print(
                f"error: {sweep} holds no jobs (no */.hydra folders) — give sweep folders "
                "under results/sweeps/",
                file=sys.stderr,
            )
            return 2
        jobs += found
    table = comparison_table(jobs, tuple(args.metric or DEFAULT_METRICS))
    (args.out or args.sweep[0] / "comparison.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
