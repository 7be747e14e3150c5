"""Default implementations of run hooks (``trylast``: any algorithm may replace them)."""

from __future__ import annotations

from alignbench.batch import Batch
from alignbench.errors import PluginError
from alignbench.hookspecs import hookimpl
from alignbench.run import Run


class DefaultScore:
    """``score`` = call the configured reward on every sequence of the batch."""

    @hookimpl(trylast=True)
    def alignbench_score(self, run: Run, batch: Batch) -> Batch:
        """Set ``batch.rewards`` from ``run.reward`` (shape-checked by ``run.rewards``).

        Reached also when a plugin's own score hook returned None (pluggy then moves on to the
        next implementation): that is a forgotten ``return batch``, refused in one line rather
        than silently replaced by the default reward."""
        others = [
            impl.plugin_name
            for impl in run.pm.hook.alignbench_score.get_hookimpls()
            if impl.plugin is not self and not (impl.trylast or impl.wrapper or impl.hookwrapper)
        ]
        if others:
            raise PluginError(
                f"{others[0]}: alignbench_score returned None — a score hook must set "
                "batch.rewards and return the batch (did it forget `return batch`?)"
            )
        batch.rewards = run.rewards(batch)
        return batch
