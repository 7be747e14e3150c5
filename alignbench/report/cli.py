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
import sys
from pathlib import Path

from alignbench.report.curves import curve_report
from alignbench.report.jobs import BadInput, drop_duplicates, group_jobs, load_jobs, provenance_note
from alignbench.report.metrics import DEFAULT_METRICS, task_metrics
from alignbench.report.mixing import mixing_warnings
from alignbench.report.plots import CURVE_PREFIXES, X_AXES, write_plots
from alignbench.report.tables import comparison_report


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
