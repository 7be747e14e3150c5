"""Crowd aggregation vs label budget: how good are the labels, and the reward model trained on them.

For every aggregation (``feedback.aggregate``: mean rank, majority vote, Dawid-Skene) x label
budget x seed, the stage-2 reward model is trained from the one stage-1 SFT model of the world,
with the crowd given as Hydra overrides (e.g. ``feedback.annotator_noise=[...]``), through the
stage cache (a rerun resumes); the labels' agreement with the gold utility, the reward model's
held-out ranking accuracy against gold and its probe accuracy are tabulated as mean and 95 %
bootstrap interval over seeds, with the paired differences to the mean rank and the crowd's
agreement statistics (pairwise agreement, Kendall's W, estimated reliability per annotator).

    python -m alignbench.crowd_study --seeds 3 --budgets 50,100,200 \\
        "feedback.annotator_noise=[0.05,0.1,0.4,0.45,0.45]" feedback.annotators_per_group=3
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from alignbench.budget import set_threads
from alignbench.config import to_object
from alignbench.crowd import AGGREGATES
from alignbench.registry import build_registry
from alignbench.reward_model import reward_model_stage
from alignbench.rm_study import _cell, compose_config
from alignbench.stages import sft_stage

DEFAULT_OUT = "results/reports/crowd/report.md"
#: stage.json key -> column title.
METRICS = {
    "labels_accuracy_gold": "labels vs gold",
    "heldout_accuracy_gold": "RM held-out accuracy (gold)",
    "probe/accuracy": "RM probe accuracy",
    "crowd/pairwise_agreement": "annotator agreement",
    "crowd/kendall_w": "Kendall's W",
}


def run_study(
    base: list[str], aggregates: list[str], budgets: list[int], seeds: list[int]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train every (aggregate, labels, seed) reward model; its stage info per run, and context."""
    registry = build_registry()
    cfg = compose_config(base)
    set_threads(cfg.threads)
    task = registry.get("task", cfg.task.name).cls(to_object(cfg.task))
    sft_path, sft_info = sft_stage(cfg, task)
    runs = []
    for labels in budgets:
        for aggregate in aggregates:
            for seed in seeds:
                job = compose_config(
                    [
                        *base,
                        f"feedback.aggregate={aggregate}",
                        f"feedback.labels={labels}",
                        f"feedback.seed={seed}",
                        f"stage.rm.seed={seed}",
                    ]
                )
                source = registry.get("feedback", job.feedback.name).cls(
                    to_object(job.feedback), task
                )
                started = time.perf_counter()
                _, info = reward_model_stage(job, task, source, sft_path, sft_info["key"])
                print(
                    f"{aggregate:>11} labels={labels:<4} seed={seed}: labels vs gold "
                    f"{info.get('labels_accuracy_gold', float('nan')):.3f}, probe "
                    f"{info.get('probe/accuracy', float('nan')):.3f}, "
                    f"{time.perf_counter() - started:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
                flat = {k: v for k, v in info.items() if not isinstance(v, list | dict)}
                runs.append({"aggregate": aggregate, "labels": labels, "seed": seed, **flat})
    fb = {k: str(getattr(v, "value", v)) for k, v in cfg.feedback.items()}
    return runs, {"sft_key": sft_info["key"], "feedback": fb}


def _values(runs: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) if r.get(key) is not None else float("nan") for r in runs]


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def report(runs: list[dict[str, Any]], context: dict[str, Any]) -> str:
    """The study as Markdown: setup, results per aggregation and budget, paired differences."""
    budgets, seeds, fb = context["budgets"], context["seeds"], context["feedback"]
    aggregates = list(dict.fromkeys(r["aggregate"] for r in runs))
    annotators = sorted(
        {k.rsplit("/", 1)[1] for r in runs for k in r if k.startswith("crowd/labels/")}
    )
    lines = [
        "# Crowd aggregation vs label budget (reward model quality)",
        "",
        f"- Command: `{context['command']}`",
        f"- Commit: `{context['commit']}`"
        + (" (working tree had uncommitted changes)" if context["dirty"] else ""),
        f"- Date: {context['date']}",
        f"- Seeds: {len(seeds)} (each sets `feedback.seed` and `stage.rm.seed`); one world and "
        f"one stage-1 SFT model (`{context['sft_key']}`) for all runs.",
        f"- Crowd: `annotator_noise={fb['annotator_noise']}`, "
        f"`annotator_length_bias={fb['annotator_length_bias']}`, "
        f"`annotators_per_group={fb['annotators_per_group']}`; k={fb['k']}, "
        f"include_demonstration={fb['include_demonstration']}, "
        f"include_abstention={fb['include_abstention']}.",
        "- Cells: mean over seeds [95 % percentile-bootstrap interval]. *Labels vs gold*: the "
        "aggregated labels' pairwise agreement with the gold utility over all labelled groups. "
        "*RM held-out accuracy (gold)*: the reward model's pairwise accuracy against gold on its "
        "run's held-out groups. *RM probe accuracy*: the task's probe on held-out test "
        "questions (always-abstain scores "
        f"{runs[0].get('probe/always_abstain', float('nan')):.3f}, random 0.500). *Annotator "
        "agreement*: share of (pair of responses, pair of annotators) labelled alike; *Kendall's "
        "W*: concordance of the annotators' rankings per group (both properties of the crowd, "
        "the same for every aggregation up to the seed).",
        "",
        "## Results",
        "",
        _row(["aggregate", "labels", *METRICS.values()]),
        _row(["---"] * (len(METRICS) + 2)),
    ]
    for labels in budgets:
        for aggregate in aggregates:
            picked = [r for r in runs if r["aggregate"] == aggregate and r["labels"] == labels]
            lines.append(
                _row([aggregate, str(labels), *(_cell(_values(picked, k)) for k in METRICS)])
            )
    baseline = aggregates[0]
    by_cell = {(r["aggregate"], r["labels"], r["seed"]): r for r in runs}
    compared = list(METRICS)[:3]
    lines += [
        "",
        f"## Paired differences to {baseline} (same seed)",
        "",
        _row(["difference", "labels", *(METRICS[k] for k in compared)]),
        _row(["---"] * (len(compared) + 2)),
    ]
    for labels in budgets:
        for aggregate in aggregates[1:]:
            cells = []
            for key in compared:
                diffs = [
                    float(by_cell[(aggregate, labels, s)][key])
                    - float(by_cell[(baseline, labels, s)][key])
                    for s in seeds
                    if by_cell.get((aggregate, labels, s), {}).get(key) is not None
                    and by_cell.get((baseline, labels, s), {}).get(key) is not None
                ]
                cells.append(_cell(diffs))
            lines.append(_row([f"{aggregate} − {baseline}", str(labels), *cells]))
    if annotators:
        lines += [
            "",
            "## Annotators (largest budget, mean over seeds)",
            "",
            "Groups labelled by each annotator, and the reliability Dawid-Skene estimated from "
            "their agreement (probability that their label of a pair is the aggregated one).",
            "",
            _row(["annotator", "true error rate", "groups labelled", "estimated reliability"]),
            _row(["---"] * 4),
        ]
        noise = json.loads(fb["annotator_noise"]) if fb["annotator_noise"] not in ("", "[]") else []
        top = [r for r in runs if r["labels"] == max(budgets)]
        for i, name in enumerate(annotators):
            labelled = np.nanmean(_values(top, f"crowd/labels/{name}"))
            estimated = _values(top, f"crowd/reliability/{name}")
            estimated = [v for v in estimated if not np.isnan(v)]
            lines.append(
                _row(
                    [
                        name,
                        f"{noise[i]:.2f}" if i < len(noise) else "–",
                        f"{labelled:.0f}",
                        f"{np.mean(estimated):.3f}" if estimated else "–",
                    ]
                )
            )
    lines.append("")
    return "\n".join(lines)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m alignbench.crowd_study",
        description="Crowd aggregation (mean rank, majority, Dawid-Skene) vs label budget.",
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument(
        "--budgets",
        type=lambda t: [int(x) for x in t.split(",") if x],
        default=[50, 100, 200],
        help="label budgets (default 50,100,200)",
    )
    parser.add_argument(
        "--aggregates",
        type=lambda t: [x for x in t.split(",") if x],
        default=list(AGGREGATES),
        help=f"aggregations, the first is the baseline (default {','.join(AGGREGATES)})",
    )
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"report path (default {DEFAULT_OUT})")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the Markdown from <out>.json"
    )
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides: the crowd, e.g. feedback.k=3"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the study and write its Markdown report (raw numbers beside it as JSON)."""
    argv = sys.argv[1:] if argv is None else argv
    args = _parse(argv)
    unknown = [a for a in args.aggregates if a not in AGGREGATES]
    if unknown:
        print(
            f"error: --aggregates {','.join(unknown)} — use {', '.join(AGGREGATES)}",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out)
    raw = out.with_suffix(".json")
    if args.report_only:
        saved = json.loads(raw.read_text())
        out.write_text(report(saved.pop("runs"), saved), encoding="utf-8")
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    seeds = list(range(args.seeds))
    runs, context = run_study(list(args.overrides), args.aggregates, args.budgets, seeds)
    git = ["git", "status", "--porcelain", "--untracked-files=no"]
    context.update(
        {
            "command": shlex.join(["python", "-m", "alignbench.crowd_study", *argv]),
            "commit": subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
            ).stdout.strip()
            or "unknown",
            "dirty": bool(subprocess.run(git, capture_output=True, text=True).stdout.strip()),
            "date": datetime.date.today().isoformat(),
            "budgets": args.budgets,
            "seeds": seeds,
        }
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps({"runs": runs, **context}, indent=2))
    out.write_text(report(runs, context), encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
