"""Which metrics a report shows: the headline metrics the jobs' tasks declare
(``Task.headline_metrics``, recorded in each summary), else the facts task's as a fallback."""

from __future__ import annotations

from typing import Any

#: The fallback when no job's task declares headline metrics: the facts task's (from sweeps
#: recorded before tasks declared them). Any other task declares its own.
DEFAULT_METRICS = (
    "test/accuracy_known",
    "test/hallucination_unknown",
    "test/abstain_unknown",
    "eval_rl/accuracy_known",
    "eval_rl/hallucination_unknown",
    "eval_rl/abstain_unknown",
    "test/reward",
    "budget/flops",
    "wall_time",
)
#: The facts task's abstention trade-off plot: x (lower is better), y (higher is better); the
#: plot is skipped when the jobs lack either metric (a task without abstention).
TRADEOFF = ("test/hallucination_unknown", "test/accuracy_known")

#: Shown after a task's own headline metrics (every task has a reward, a budget and a clock).
COMMON_METRICS = ("test/reward", "test/gold_reward", "budget/flops", "wall_time")


def task_metrics(jobs: list[dict[str, Any]]) -> tuple[str, ...]:
    """The headline metrics the jobs' tasks declare (``Task.headline_metrics``, recorded in each
    summary), in order and once each, then the common ones; empty if no task declares any."""
    named: dict[str, None] = {}
    for job in jobs:
        named.update(dict.fromkeys((job.get("summary") or {}).get("headline_metrics") or []))
    return (*named, *(m for m in COMMON_METRICS if m not in named)) if named else ()
