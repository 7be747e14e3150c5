"""``python -m alignbench.compare <sweep dir>...``: the comparison command.

Its code lives in :mod:`alignbench.report` (``jobs``, ``mixing``, ``metrics``, ``stats``,
``tables``, ``plots``, ``curves``, ``cli``); this module keeps the command and the names code
imported from here before the split.
"""

from __future__ import annotations

import sys

from alignbench.report.cli import main
from alignbench.report.jobs import (
    IGNORED_KEYS,
    NAME_KEYS,
    BadInput,
    Group,
    JobGroup,
    common_overrides,
    default_overrides,
    drop_duplicates,
    group_jobs,
    group_name,
    load_curve,
    load_jobs,
    provenance_note,
    short_number,
    short_override,
    stage1_starts,
    world_of,
)
from alignbench.report.metrics import COMMON_METRICS, DEFAULT_METRICS, TRADEOFF, task_metrics
from alignbench.report.mixing import mixing_warnings
from alignbench.report.plots import CURVE_PREFIXES, X_AXES, seed_band, write_plots
from alignbench.report.stats import (
    ALPHA,
    DAGGER_MIN_SEEDS,
    EXACT_PERMUTATIONS,
    IQM_MIN_SEEDS,
    Comparison,
    bootstrap_ci,
    compare_to_baseline,
    hierarchical_bootstrap,
    hierarchical_ci,
    interquartile_mean,
    paired_difference_ci,
    permutation_test,
    smallest_permutation_p,
)
from alignbench.report.tables import comparison_report, is_outcome, pick_baseline

__all__ = [
    "ALPHA",
    "COMMON_METRICS",
    "CURVE_PREFIXES",
    "DAGGER_MIN_SEEDS",
    "DEFAULT_METRICS",
    "EXACT_PERMUTATIONS",
    "IGNORED_KEYS",
    "IQM_MIN_SEEDS",
    "NAME_KEYS",
    "TRADEOFF",
    "X_AXES",
    "BadInput",
    "Comparison",
    "Group",
    "JobGroup",
    "bootstrap_ci",
    "common_overrides",
    "compare_to_baseline",
    "comparison_report",
    "default_overrides",
    "drop_duplicates",
    "group_jobs",
    "group_name",
    "hierarchical_bootstrap",
    "hierarchical_ci",
    "interquartile_mean",
    "is_outcome",
    "load_curve",
    "load_jobs",
    "main",
    "mixing_warnings",
    "paired_difference_ci",
    "permutation_test",
    "pick_baseline",
    "provenance_note",
    "seed_band",
    "short_number",
    "short_override",
    "smallest_permutation_p",
    "stage1_starts",
    "task_metrics",
    "world_of",
    "write_plots",
]

if __name__ == "__main__":
    sys.exit(main())
