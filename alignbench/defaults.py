"""Default implementations of run hooks (``trylast``: any algorithm may replace them)."""

from __future__ import annotations

from alignbench.batch import Batch
from alignbench.hookspecs import hookimpl
from alignbench.run import Run


class DefaultScore:
    """``score`` = call the configured reward on every sequence of the batch."""

    @hookimpl(trylast=True)
    def alignbench_score(self, run: Run, batch: Batch) -> Batch:
        """Set ``batch.rewards`` from ``run.reward`` (shape-checked by ``run.rewards``)."""
        batch.rewards = run.rewards(batch)
        return batch
