"""A plugin for the fault tests: it paces every training step, so that a signal sent to a sweep
lands while both of its jobs are training. Tiny jobs otherwise train their 24 steps in under a
second, and the second worker (which first waits for the stage-1 cache, then imports the
modelling code) can start only after the first has finished."""

from __future__ import annotations

import time
from typing import Any

import alignbench

#: Seconds after each step: 24 steps take about 5 s, a window no poll can miss.
PACE = 0.2


@alignbench.hookimpl
def alignbench_on_step_end(run: Any, step: int, metrics: dict[str, float]) -> None:
    """Sleep after each step (the numbers are unchanged: only wall time passes)."""
    time.sleep(PACE)
