"""Tables of the crowd-aggregation downstream sweep (results/sweeps/crowd_rl) that
``alignbench.compare`` does not make: the reward model's quality per job (``stage/rm`` in each
summary: labels vs gold, probe accuracy) beside the policy's test metrics, and the differences
to the mean rank *paired by seed* (same seed = same annotators, same draws, same reward-model
initialisation and RL seed; only the aggregation differs).

    python results/reports/crowd/downstream_tables.py results/sweeps/crowd_rl \\
        --out results/reports/crowd/downstream_paired.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from alignbench.report.jobs import is_finished, job_config, load_jobs
from alignbench.report.stats import bootstrap_ci

#: (where, key, title): "rm" = the job's stage/rm record, "job" = the summary itself.
COLUMNS = [
    ("rm", "ordered_label_pairs", "ordered pairs in the labels"),
    ("rm", "ordered_gold_pairs", "gold-ordered pairs"),
    ("rm", "labels_accuracy_gold", "labels vs gold"),
    ("rm", "probe/accuracy", "RM probe"),
    ("rm", "probe/accuracy_unknown", "RM probe (unknown)"),
    ("job", "test/hallucination_unknown", "test hallucination (unknown)"),
    ("job", "test/abstain_unknown", "test abstain (unknown)"),
    ("job", "test/accuracy_known", "test accuracy (known)"),
    ("job", "test/gold_reward", "test gold reward"),
    ("job", "test/reward", "test proxy reward (own RM)"),
    ("job", "dev/gold_reward", "dev gold reward"),
]
AGGREGATES = ("mean_rank", "majority", "dawid_skene")
#: The control arm: one annotator without noise or bias (no crowd), i.e. labels = gold order.
NOISELESS = "one noiseless annotator"
ARMS = (*AGGREGATES, NOISELESS)


def _override(job: dict[str, Any], key: str) -> str | None:
    for override in job["overrides"]:
        if override.split("=", 1)[0].lstrip("+~") == key:
            return override.split("=", 1)[1]
    return None


def _value(summary: dict[str, Any], where: str, key: str) -> float:
    record = summary.get("stage/rm") or {} if where == "rm" else summary
    value = record.get(key)
    return float(value) if value is not None else float("nan")


def _cell(values: list[float], sign: str = "") -> str:
    values = [v for v in values if not np.isnan(v)]
    if not values:
        return "–"
    low, high = bootstrap_ci(values)
    digits = 1 if all(float(v).is_integer() for v in values) else 3  # counts
    return f"{np.mean(values):{sign}.{digits}f} [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def tables(sweep: Path) -> str:
    """The two tables as Markdown."""
    runs: dict[tuple[str, int, int], dict[str, Any]] = {}
    unfinished = []
    for job in load_jobs(sweep):
        if not is_finished(job["summary"]):
            unfinished.append(job["folder"])
            continue
        feedback = (job_config(job["path"]) or {}).get("feedback") or {}
        crowd = feedback.get("annotator_noise") or feedback.get("error_rate")
        key = (
            (_override(job, "feedback.aggregate") or "mean_rank") if crowd else NOISELESS,
            int(_override(job, "feedback.labels") or 0),
            int(_override(job, "seed") or 0),
        )
        runs[key] = job["summary"]
    budgets = sorted({labels for _, labels, _ in runs})
    seeds = sorted({seed for _, _, seed in runs})
    titles = [title for _, _, title in COLUMNS]
    lines = [
        "# Crowd aggregation downstream: reward-model quality and the PPO policy, paired by seed",
        "",
        f"Sweep `{sweep}`: {len(runs)} finished jobs"
        + (f", {len(unfinished)} unfinished ({', '.join(unfinished)})" if unfinished else "")
        + f"; seeds {', '.join(map(str, seeds))}. Cells: mean over seeds [95 % percentile "
        "bootstrap over seeds]. The first five columns are the job's labels and reward model "
        "(`stage/rm`: strictly ordered pairs in the aggregated labels and in the gold utility, "
        "the labels' agreement with gold, the probe), the rest the PPO policy at the end of its "
        "budget (`test/reward` is each job's own reward model: not comparable across arms).",
        "",
        "## Per aggregation",
        "",
        _row(["aggregate", "labels", *titles]),
        _row(["---"] * (len(titles) + 2)),
    ]
    for labels in budgets:
        for aggregate in ARMS:
            picked = [runs[(aggregate, labels, s)] for s in seeds if (aggregate, labels, s) in runs]
            if picked:
                cells = [_cell([_value(p, w, k) for p in picked]) for w, k, _ in COLUMNS]
                lines.append(_row([aggregate, f"{labels} ({len(picked)} seeds)", *cells]))
    lines += [
        "",
        "## Paired differences to mean_rank (same seed)",
        "",
        "Mean over seeds of (aggregate − mean_rank) in the same seed [95 % percentile bootstrap "
        "over the seeds' differences; with 3 seeds an interval is coarse, and one that excludes "
        "0 means all three differences share a sign].",
        "",
        _row(["difference", "labels", *titles]),
        _row(["---"] * (len(titles) + 2)),
    ]
    for labels in budgets:
        for aggregate in ARMS[1:]:
            shared = [
                s
                for s in seeds
                if (aggregate, labels, s) in runs and ("mean_rank", labels, s) in runs
            ]
            if not shared:
                continue
            cells = []
            for where, key, _ in COLUMNS:
                diffs = [
                    _value(runs[(aggregate, labels, s)], where, key)
                    - _value(runs[("mean_rank", labels, s)], where, key)
                    for s in shared
                ]
                cells.append(_cell(diffs, sign="+"))
            lines.append(
                _row([f"{aggregate} − mean_rank", f"{labels} ({len(shared)} seeds)", *cells])
            )
    lines += [
        "",
        "## Per seed",
        "",
        "*RM best epoch*: the epoch early stopping kept (0 = the untrained reward model, which "
        "scores every response alike, so PPO then sees only its KL and SFT terms).",
        "",
        _row(["aggregate", "labels", "seed", "RM best epoch", *titles]),
        _row(["---"] * (len(titles) + 4)),
    ]
    for (aggregate, labels, seed), summary in sorted(
        runs.items(), key=lambda kv: (kv[0][1], ARMS.index(kv[0][0]), kv[0][2])
    ):
        values = [f"{_value(summary, w, k):.3g}" for w, k, _ in COLUMNS]
        epoch = (summary.get("stage/rm") or {}).get("best_epoch", "?")
        lines.append(_row([aggregate, str(labels), str(seed), str(epoch), *values]))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the tables; print them too."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    text = tables(args.sweep)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
