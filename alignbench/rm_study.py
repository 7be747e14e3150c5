"""Active learning vs random selection for the stage-2 reward model, measured over seeds.

For every selection strategy x label budget x seed, the stage-2 reward model is trained from
the one stage-1 SFT model of the world (both through the stage cache, so a rerun resumes), and
its probe accuracy on held-out questions (overall, known, unknown) and its held-out label
accuracy are tabulated as mean and 95 % bootstrap interval over seeds, beside the reference
scorers and with the paired differences to random selection. A census of the groups' ordered
gold pairs, with and without the declared contrast sources, comes first.

    python -m alignbench.rm_study                                   # the committed study
    python -m alignbench.rm_study --seeds 2 --budgets 8,16 --out /tmp/r.md task.num_entities=40

Positional arguments are Hydra overrides of the job config (``feedback.k=3``, ``threads=1``).
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

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from alignbench.budget import set_threads
from alignbench.compare import bootstrap_ci
from alignbench.config import CONF_PACKAGE, Selection, to_object
from alignbench.models import load_pretrained
from alignbench.registry import Registry, build_registry
from alignbench.rm.feedback import Group
from alignbench.rm.groups import generate_groups
from alignbench.rm.stage import reward_model_stage
from alignbench.stages import sft_stage
from alignbench.task import Task

#: Where the committed report goes.
DEFAULT_OUT = "results/reports/rm_active_learning/report.md"
#: The stage-2 numbers tabulated per run: stage.json key -> column title.
METRICS = {
    "probe/accuracy": "probe accuracy",
    "probe/accuracy_known": "probe, known",
    "probe/accuracy_unknown": "probe, unknown",
    "heldout_accuracy_labels": "held-out label accuracy",
}
#: Reference scorers of the probe (same pairs as the reward model's): key stem -> row title.
REFERENCES = {
    "always_abstain": "always abstain (reference)",
    "random": "random scores (reference, expectation)",
    "gold": "gold utility (ceiling)",
}


def compose_config(overrides: list[str]) -> DictConfig:
    """The job config, composed the way ``python -m alignbench`` composes it."""
    with hydra.initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        return hydra.compose(config_name="config", overrides=overrides)


def _pair_kind(task: Task, group: Group, i: int, j: int) -> str:
    """``<label of i> > <label of j>`` by the task's judge (``ordered`` if it has none)."""
    try:
        better, worse = (task.judge(group.row, group.responses[x]) for x in (i, j))
    except NotImplementedError:
        return "ordered"
    return f"{better}>{worse}"


def gold_pair_census(task: Task, groups: list[Group]) -> dict[str, int]:
    """Gold-ordered pairs of the groups by kind (``correct>abstain``...), on known/unknown rows."""
    counts: dict[str, int] = {}
    for g in groups:
        if g.gold is None:
            continue
        part = {True: "known", False: "unknown"}.get(g.row.get("known"), "all")
        for i, a in enumerate(g.gold):
            for j, b in enumerate(g.gold):
                if a > b:
                    key = f"{part}: {_pair_kind(task, g, i, j)}"
                    counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def contrast_census(
    cfg: DictConfig, task: Task, sft_path: Path, labels: int
) -> dict[str, dict[str, int]]:
    """Gold-ordered pairs in ``labels`` random groups, for each combination of contrast sources."""
    policy, tokenizer = load_pretrained(sft_path)
    fb = to_object(cfg.feedback)
    prompts = task.splits["rl"].to_list()
    rows = [prompts[i] for i in np.random.default_rng(fb.seed).permutation(len(prompts))[:labels]]
    out = {}
    for demonstration, abstention in ((False, False), (True, False), (True, True)):
        fb.include_demonstration, fb.include_abstention = demonstration, abstention
        generator = torch.Generator().manual_seed(fb.seed)
        groups = generate_groups(policy, tokenizer, task, rows, fb, generator)
        name = "samples only"
        if demonstration:
            name = "samples + demonstration" + (" + abstention" if abstention else "")
        out[name] = gold_pair_census(task, groups)
    return out


def run_study(
    registry: Registry,
    base: list[str],
    selections: list[str],
    budgets: list[int],
    seeds: list[int],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train every (selection, labels, seed) reward model; its stage.json per run, and context."""
    cfg = compose_config(base)
    set_threads(cfg.threads)
    task = registry.get("task", cfg.task.name).cls(to_object(cfg.task))
    sft_path, sft_info = sft_stage(cfg, task)
    runs = []
    for labels in budgets:
        for selection in selections:
            for seed in seeds:
                overrides = [
                    *base,
                    f"feedback.selection={selection}",
                    f"feedback.labels={labels}",
                    f"feedback.seed={seed}",
                    f"stage.rm.seed={seed}",
                ]
                job = compose_config(overrides)
                source = registry.get("feedback", job.feedback.name).cls(
                    to_object(job.feedback), task
                )
                started = time.perf_counter()
                _, info = reward_model_stage(job, task, source, sft_path, sft_info["key"])
                print(
                    f"{selection:>11} labels={labels:<4} seed={seed}: probe "
                    f"{info.get('probe/accuracy', float('nan')):.3f}, "
                    f"{time.perf_counter() - started:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
                runs.append({"selection": selection, "labels": labels, "seed": seed, **info})
    census = contrast_census(cfg, task, sft_path, max(budgets))
    context = {
        "sft_key": sft_info["key"],
        "feedback": {k: str(getattr(v, "value", v)) for k, v in cfg.feedback.items()},
        "stage_rm": {k: str(getattr(v, "value", v)) for k, v in cfg.stage.rm.items()},
        "census": census,
        "census_labels": max(budgets),
    }
    return runs, context


def _cell(values: list[float], digits: int = 3) -> str:
    """``mean [low, high]`` over seeds (95 % percentile bootstrap); ``–`` when there is none."""
    values = [v for v in values if v is not None and not np.isnan(v)]
    if not values:
        return "–"
    low, high = bootstrap_ci(values)
    return f"{np.mean(values):.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _values(runs: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) if r.get(key) is not None else float("nan") for r in runs]


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def provenance(argv: list[str], budgets: list[int], seeds: list[int]) -> dict[str, Any]:
    """What the report says about how it was made: command, git commit, date, grid."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "command": shlex.join(["python", "-m", "alignbench.rm_study", *argv]),
        "commit": commit or "unknown",
        "dirty": bool(dirty),
        "date": datetime.date.today().isoformat(),
        "budgets": budgets,
        "seeds": seeds,
    }


def report(runs: list[dict[str, Any]], context: dict[str, Any]) -> str:
    """The study as Markdown: setup, census, results with references, paired differences."""
    budgets, seeds = context["budgets"], context["seeds"]
    first = runs[0]
    fb, rm = context["feedback"], context["stage_rm"]
    lines = [
        "# Stage-2 reward model: active learning vs random selection",
        "",
        f"- Command: `{context['command']}`",
        f"- Commit: `{context['commit']}`"
        + (" (working tree had uncommitted changes)" if context["dirty"] else ""),
        f"- Date: {context['date']}",
        f"- Seeds: {len(seeds)} ({', '.join(map(str, seeds))}; each sets `feedback.seed` and "
        "`stage.rm.seed`); one world and one stage-1 SFT model "
        f"(`{context['sft_key']}`) for all runs.",
        f"- Feedback: k={fb['k']}, decoding={fb['decoding']}, "
        f"include_demonstration={fb['include_demonstration']}, "
        f"include_abstention={fb['include_abstention']}, pool_factor={fb['pool_factor']}; "
        f"reward model: epochs={rm['epochs']}, patience={rm['patience']}, "
        f"heldout_share={rm['heldout_share']}, init={rm['init']}.",
        f"- Probe: {int(first.get('probe/prompts', 0))} held-out questions (the task's test "
        f"split), {int(first.get('probe/pairs', 0))} orderable pairs: on known questions "
        "correct > abstain, correct > wrong, abstain > wrong; on unknown questions only "
        "abstain > wrong.",
        "- Cells: mean over seeds [95 % percentile-bootstrap interval]. The probe is the same "
        "for every run and independent of training. Held-out label accuracy is measured on "
        "each run's own held-out groups (a share of the groups *its* selection chose, also the "
        "groups early stopping watches): optimistic, and not comparable between selections.",
        "- Ordered gold pairs: strictly gold-ordered pairs in all labelled groups of a run (mean "
        "over seeds). Best epoch: the epoch early stopping kept (0 = the untrained model).",
        "",
        f"## Contrast in the groups ({context['census_labels']} random groups of RL prompts)",
        "",
        "Gold-ordered pairs by kind (the judge's labels; `known`/`unknown` is the question's):",
        "",
    ]
    census = context["census"]
    kinds = sorted({k for counts in census.values() for k in counts})
    lines += [_row(["groups", *kinds, "total"]), _row(["---"] * (len(kinds) + 2))]
    for name, counts in census.items():
        cells = [str(counts.get(k, 0)) for k in kinds]
        lines.append(_row([name, *cells, str(sum(counts.values()))]))
    titles = list(METRICS.values())
    lines += [
        "",
        "## Results",
        "",
        _row(["selection", "labels", *titles, "ordered gold pairs", "best epoch"]),
        _row(["---"] * (len(titles) + 4)),
    ]
    for stem, title in REFERENCES.items():
        keys = [f"probe/{stem}", f"probe/{stem}_known", f"probe/{stem}_unknown"]
        if keys[0] not in first:
            continue
        cells = [f"{first[k]:.3f}" if first.get(k) is not None else "–" for k in keys]
        lines.append(_row([title, "", *cells, "", "", ""]))
    selections = list(dict.fromkeys(r["selection"] for r in runs))
    for labels in budgets:
        for selection in selections:
            picked = [r for r in runs if r["selection"] == selection and r["labels"] == labels]
            cells = [_cell(_values(picked, key)) for key in METRICS]
            pairs = np.mean(_values(picked, "ordered_gold_pairs"))
            epochs = np.mean(_values(picked, "best_epoch"))
            lines.append(_row([selection, str(labels), *cells, f"{pairs:.0f}", f"{epochs:.1f}"]))
    if Selection.random.value in selections and len(selections) > 1:
        lines += [
            "",
            "## Paired differences to random selection (same seed)",
            "",
            _row(["difference", "labels", *titles]),
            _row(["---"] * (len(titles) + 2)),
        ]
        by_cell = {(r["selection"], r["labels"], r["seed"]): r for r in runs}
        for labels in budgets:
            for selection in selections:
                if selection == Selection.random.value:
                    continue
                cells = []
                for key in METRICS:
                    diffs = []
                    for seed in seeds:
                        active = by_cell.get((selection, labels, seed), {}).get(key)
                        random = by_cell.get((Selection.random.value, labels, seed), {}).get(key)
                        if active is not None and random is not None:
                            diffs.append(float(active) - float(random))
                    cells.append(_cell(diffs))
                lines.append(_row([f"{selection} − random", str(labels), *cells]))
    lines.append("")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    """``50,100,200`` -> ``[50, 100, 200]``."""
    return [int(x) for x in text.split(",") if x]


def _selections(text: str) -> list[str]:
    """``random,uncertainty`` -> the validated strategy names."""
    try:
        return [Selection(x).value for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} — choose from {', '.join(s.value for s in Selection)}"
        ) from None


def _parse(argv: list[str]) -> argparse.Namespace:
    """The command line: grid sizes, output file, and Hydra overrides."""
    parser = argparse.ArgumentParser(
        prog="python -m alignbench.rm_study",
        description="Active learning (uncertainty, diversity) vs random for the reward model.",
    )
    parser.add_argument("--seeds", type=int, default=4, help="seeds 0..N-1 (default 4)")
    parser.add_argument(
        "--budgets", type=_ints, default=[50, 100, 200], help="label budgets (default 50,100,200)"
    )
    parser.add_argument(
        "--selections",
        type=_selections,
        default=[s.value for s in Selection],
        help="selection strategies (default random,uncertainty,diversity)",
    )
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"report path (default {DEFAULT_OUT})")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the Markdown from the raw numbers saved beside it (<out>.json)",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. feedback.k=3")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the study and write its Markdown report (and the raw numbers beside it as JSON)."""
    argv = sys.argv[1:] if argv is None else argv
    args = _parse(argv)
    out = Path(args.out)
    if args.report_only:
        saved = json.loads(out.with_suffix(".json").read_text())
        out.write_text(report(saved.pop("runs"), saved), encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    registry = build_registry()
    seeds = list(range(args.seeds))
    runs, context = run_study(registry, list(args.overrides), args.selections, args.budgets, seeds)
    context.update(provenance(argv, args.budgets, seeds))
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = [{k: v for k, v in r.items() if not isinstance(v, list | dict)} for r in runs]
    out.with_suffix(".json").write_text(json.dumps({"runs": raw, **context}, indent=2))
    out.write_text(report(raw, context), encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
