"""The answer a multirun ends with: the sweep's comparison table, its plots, its models.

``python -m alignbench ... --multirun`` calls :func:`print_answer` when the sweep is done (from
the ``FailedJobs`` Hydra callback, in the parent process, whatever the launcher), so ``make run``
ends with the table (mean and 95 % interval over seeds, where there are seeds), the path of the
full report and plots (what ``python -m alignbench.compare <sweep>`` writes), and the path of
every job's exported model.
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

from alignbench import compare


def sweep_answer(sweep: Path) -> str:
    """The end-of-sweep text: the table, the report and plot paths, the model folders.

    Writes ``<sweep>/comparison.md`` and its PNGs exactly as ``python -m alignbench.compare
    <sweep>`` does (it runs it); returns "" for a folder without jobs.
    """
    jobs = compare.load_jobs(sweep) if sweep.is_dir() else []
    if not jobs:
        return ""
    printed, warned = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(warned):
        code = compare.main([str(sweep)])
    if code != 0:
        return f"warning: no comparison of {sweep}: {warned.getvalue().strip()}"
    report = printed.getvalue()
    # The table and its notes; the cost section and the plot links stay in comparison.md.
    table = report.split("\n\n## Cost")[0].split("\n\nPlots (next to this file)")[0]
    # The provenance paragraph ("Made by: ...") is long; it stays in comparison.md.
    table = "\n\n".join(p for p in table.split("\n\n") if not p.startswith("Made by:")).strip()
    lines = [f"== Comparison of {sweep} ({len(jobs)} jobs) ==", "", table, ""]
    # compare's stderr: anything not already in the table's notes (its warnings are).
    lines += [line for line in warned.getvalue().splitlines() if line.strip() and line not in table]
    lines.append(
        f"Full report: {sweep / 'comparison.md'} (again, or across sweeps: "
        f"python -m alignbench.compare {sweep})"
    )
    plots = sorted(sweep.glob("comparison_*.png"))
    if plots:
        lines.append("Plots:")
        lines += [f"  {path}" for path in plots]
    models = [
        job["summary"]["model_dir"]
        for job in jobs
        if job["summary"] and job["summary"].get("status") == "finished"
        if job["summary"].get("model_dir")
    ]
    if models:
        lines.append("Models (AutoModelForCausalLM.from_pretrained(<folder>)):")
        lines += [f"  {folder}" for folder in models]
    return "\n".join(lines)


def print_answer(sweep: Path) -> None:
    """Print :func:`sweep_answer`; a failure to compare is one warning line, never a crash."""
    try:
        text = sweep_answer(sweep)
    except Exception as exc:  # the jobs' results are written; the answer is a view of them
        reason = str(exc).splitlines()[0] if str(exc) else ""
        text = (
            f"warning: could not compare {sweep} ({type(exc).__name__}: {reason}) — "
            f"run python -m alignbench.compare {sweep}"
        )
    if text:
        print("\n" + text, flush=True, file=sys.stdout)
