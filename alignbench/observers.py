"""The built-in observers: the results files, Weights & Biases, and the progress bar."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from alignbench.hookspecs import hookimpl
from alignbench.run import Run

log = logging.getLogger(__name__)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON via a temporary file and a rename, so no reader ever sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


class ResultsWriter:
    """Writes ``metrics.jsonl`` (a line per step and per evaluation) and ``summary.json``."""

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = output_dir
        output_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(output_dir / "metrics.jsonl", "w")  # noqa: SIM115 - closed at run end

    def _write(self, kind: str, step: int, metrics: dict[str, float]) -> None:
        self._file.write(json.dumps({"kind": kind, "step": step, **metrics}, sort_keys=True) + "\n")
        self._file.flush()

    @hookimpl
    def alignbench_on_step_end(self, step: int, metrics: dict[str, float]) -> None:
        """Append the step's metrics."""
        self._write("step", step, metrics)

    @hookimpl
    def alignbench_on_eval(self, step: int, metrics: dict[str, float]) -> None:
        """Append the evaluation's metrics."""
        self._write("eval", step, metrics)

    @hookimpl
    def alignbench_on_run_end(self, summary: dict[str, Any]) -> None:
        """Write ``summary.json`` and close the metrics file."""
        self._file.close()
        write_json_atomic(self.output_dir / "summary.json", summary)


class WandbLogger:
    """One offline (by default) W&B run per job; a W&B failure is a warning, never a crash."""

    def __init__(self, run: Run, group: str | None) -> None:
        self.wandb: Any = None
        cfg = run.cfg.logger.wandb
        try:
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self.wandb = wandb.init(
                project=cfg.project,
                entity=cfg.entity,
                mode=cfg.mode,
                dir=str(run.output_dir),
                group=group,
                job_type=run.config.name,
                name=run.output_dir.name,
                config=OmegaConf.to_container(run.cfg, resolve=True),
                reinit="finish_previous",
            )
            self.wandb.define_metric("budget/*")
            self.wandb.define_metric("*", step_metric="budget/flops")
        except Exception as exc:  # results/ is the record; W&B is a view of it
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        reason = str(exc).splitlines()[0] if str(exc) else ""
        print(
            f"warning: W&B disabled for this job ({type(exc).__name__}: {reason})", file=sys.stderr
        )
        self.wandb = None

    def _log(self, metrics: dict[str, float]) -> None:
        if self.wandb is None:
            return
        try:
            self.wandb.log(metrics)
        except Exception as exc:
            self._fail(exc)

    @hookimpl
    def alignbench_on_step_end(self, metrics: dict[str, float]) -> None:
        """Log the step's metrics against the FLOPs spent."""
        self._log(metrics)

    @hookimpl
    def alignbench_on_eval(self, metrics: dict[str, float]) -> None:
        """Log the evaluation's metrics against the FLOPs spent."""
        self._log(metrics)

    @hookimpl
    def alignbench_on_run_end(self, summary: dict[str, Any]) -> None:
        """Put the final numbers in the run summary and close the run."""
        if self.wandb is None:
            return
        try:
            flat = {k: v for k, v in summary.items() if isinstance(v, int | float | str)}
            self.wandb.summary.update(flat)
            self.wandb.finish(exit_code=0 if summary.get("status") == "finished" else 1)
        except Exception as exc:
            self._fail(exc)


class ProgressBar:
    """A tqdm bar of the budget spent, with the latest reward."""

    def __init__(self, run: Run) -> None:
        from tqdm import tqdm

        self.run = run
        self.bar = tqdm(
            total=100, desc=run.config.name, unit="%", file=sys.stderr, leave=False, disable=None
        )

    @hookimpl
    def alignbench_on_step_end(self, metrics: dict[str, float]) -> None:
        """Advance the bar to the share of budget spent."""
        self.bar.n = round(100 * self.run.budget.fraction, 1)
        reward = metrics.get("objective/reward")
        if reward is not None:
            self.bar.set_postfix(reward=f"{reward:.3f}", refresh=False)
        self.bar.refresh()

    @hookimpl
    def alignbench_on_run_end(self) -> None:
        """Close the bar."""
        self.bar.close()
