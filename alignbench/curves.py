"""The equal-compute curve analysis, now :mod:`alignbench.report.curves`; kept so that code
importing ``alignbench.curves`` still works."""

from __future__ import annotations

from alignbench.report.curves import (
    FRACTIONS,
    area_under_curve,
    compute_to_threshold,
    curve_report,
    reach_answer,
)

__all__ = ["FRACTIONS", "area_under_curve", "compute_to_threshold", "curve_report", "reach_answer"]
