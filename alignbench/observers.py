"""The built-in observers: the results files, Weights & Biases, and the progress bar."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from alignbench.hookspecs import hookimpl
from alignbench.run import Run

log = logging.getLogger(__name__)


def json_safe(value: Any) -> Any:
    """``value`` with every NaN / inf float replaced by None (JSON has no NaN: a bare ``NaN`` in a
    file breaks strict readers); containers are walked."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write strict JSON via a temporary file and a rename, so no reader ever sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    text = json.dumps(json_safe(data), indent=2, sort_keys=True, default=str, allow_nan=False)
    tmp.write_text(text + "\n")
    os.replace(tmp, path)


def completions_path(output_dir: Path, prefix: str, step: int) -> Path:
    """Where the completions of eval set ``prefix`` at ``step`` are saved (JSON lines)."""
    return output_dir / "completions" / f"{prefix}_step{step}.jsonl"


def write_completions(
    output_dir: Path, step: int, samples: dict[str, list[dict[str, Any]]]
) -> list[Path]:
    """Write ``completions/<prefix>_step<step>.jsonl`` for every eval set, each atomically (temp
    file, rename): a record per row, so a user can read what the model says."""
    written = []
    for prefix, records in samples.items():
        path = completions_path(output_dir, prefix, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        lines = (json.dumps(json_safe(r), sort_keys=True, allow_nan=False) for r in records)
        tmp.write_text("".join(line + "\n" for line in lines))
        os.replace(tmp, path)
        written.append(path)
    return written


class ResultsWriter:
    """Writes ``metrics.jsonl`` (a line per step and per evaluation) and ``summary.json``."""

    def __init__(self, output_dir: Path, keep_lines: int = 0) -> None:
        self.output_dir = output_dir
        self.keep_lines = keep_lines
        self._file: Any = None

    def _open(self) -> Any:
        """Open metrics.jsonl at the first record, not before: a job that fails while loading
        its checkpoint leaves the file as it was."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / "metrics.jsonl"
        # A resumed job keeps the lines written up to its checkpoint and drops the rest
        # (rewritten atomically: a crash here never loses the kept lines).
        kept = (
            path.read_text().splitlines(keepends=True)[: self.keep_lines] if path.exists() else []
        )
        tmp = path.with_name(".metrics.jsonl.tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, path)
        return open(path, "a")  # noqa: SIM115 - closed at run end

    def _write(self, kind: str, step: int, metrics: dict[str, float]) -> None:
        if self._file is None:
            self._file = self._open()
        record = json_safe({"kind": kind, "step": step, **metrics})
        self._file.write(json.dumps(record, sort_keys=True, allow_nan=False) + "\n")
        self._file.flush()

    @hookimpl
    def alignbench_on_step_end(self, step: int, metrics: dict[str, float]) -> None:
        """Append the step's metrics."""
        self._write("step", step, metrics)

    @hookimpl
    def alignbench_on_eval(
        self, step: int, metrics: dict[str, float], samples: dict[str, list[dict[str, Any]]]
    ) -> None:
        """Append the evaluation's metrics; save its completions, one file per eval set."""
        self._write("eval", step, metrics)
        write_completions(self.output_dir, step, samples)

    @hookimpl
    def alignbench_on_run_end(self, summary: dict[str, Any]) -> None:
        """Write ``summary.json`` and close the metrics file."""
        if self._file is not None:
            self._file.close()
        write_json_atomic(self.output_dir / "summary.json", summary)


class WandbLogger:
    """One offline (by default) W&B run per job; a W&B failure is one warning, never a crash.

    The run is named after the job folder, grouped by the sweep (``group``), typed by the
    algorithm (``job_type``), tagged with the job's overrides minus the seed, carries the whole
    resolved config as flat dotted keys, and charts every metric against ``budget/flops``.
    """

    #: The x axis of every chart: the compute spent, the currency of a comparison.
    X_AXIS = "budget/flops"
    #: W&B refuses longer tags (``wandb.init`` raises).
    MAX_TAG_LENGTH = 64

    def __init__(self, run: Run, group: str | None, tags: list[str] | None = None) -> None:
        self.wandb: Any = None
        self.module: Any = None  # the wandb module, for wandb.Table
        self._logging = False
        self._warned = False
        self._defined: set[str] = set()
        cfg = run.cfg.logger.wandb
        try:
            import wandb

            self.module = wandb  # for wandb.Table
            os.environ.setdefault("WANDB_SILENT", "true")
            # One W&B run per job folder: a resumed job continues the same run (same id).
            run.output_dir.mkdir(parents=True, exist_ok=True)
            id_file = run.output_dir / "wandb_run_id"
            run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
            id_file.write_text(run_id)
            self.wandb = wandb.init(
                id=run_id,
                resume="allow",
                project=cfg.project,
                entity=cfg.entity,
                mode=cfg.mode,
                dir=str(run.output_dir),
                group=group,
                job_type=run.config.name,
                name=run.output_dir.name,
                tags=self.clean_tags(tags or []),
                config=self.flat_config(run.cfg),
                reinit="finish_previous",
            )
            # The x axis itself is charted against W&B's own step, not against itself.
            self.wandb.define_metric(self.X_AXIS)
            self._defined.add(self.X_AXIS)
            self._logging = True
        except Exception as exc:  # results/ is the record; W&B is a view of it
            self._fail(exc)

    @staticmethod
    def tags_from_overrides(overrides: list[str]) -> list[str]:
        """The job's command-line overrides as tags, minus the seed (``["algo=ppo", ...]``)."""
        from alignbench.compare import IGNORED_KEYS

        return [o.lstrip("+~") for o in overrides if not o.lstrip("+~").startswith(IGNORED_KEYS)]

    @classmethod
    def clean_tags(cls, tags: list[str]) -> list[str]:
        """Tags W&B accepts: non-empty, at most 64 characters (cut with "…"), no duplicates."""
        cut = [
            t if len(t) <= cls.MAX_TAG_LENGTH else t[: cls.MAX_TAG_LENGTH - 1] + "…" for t in tags
        ]
        return list(dict.fromkeys(t for t in cut if t))

    @staticmethod
    def flat_config(cfg: Any) -> dict[str, Any]:
        """The resolved job config as one level of dotted keys (``{"algo.lr": 3e-4, ...}``)."""
        flat: dict[str, Any] = {}

        def walk(prefix: str, node: Any) -> None:
            if isinstance(node, dict) and node:
                for key, value in node.items():
                    walk(f"{prefix}.{key}" if prefix else str(key), value)
            else:
                flat[prefix] = node

        walk("", OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
        return flat

    def _fail(self, exc: Exception) -> None:
        """Stop logging to W&B for this job; say so once, however many calls fail."""
        self._logging = False
        if self._warned:
            return
        self._warned = True
        reason = str(exc).splitlines()[0] if str(exc) else ""
        print(
            f"warning: W&B disabled for this job ({type(exc).__name__}: {reason}); "
            "metrics.jsonl and summary.json are still written",
            file=sys.stderr,
        )

    def _log(self, metrics: dict[str, float]) -> None:
        if not self._logging:
            return
        try:
            for key in metrics:
                # Each metric by its exact name: W&B's glob rules ("*") differ between its
                # backends and match in no defined order, and budget/flops must stay the x axis.
                if key not in self._defined:
                    self.wandb.define_metric(key, step_metric=self.X_AXIS)
                    self._defined.add(key)
            self.wandb.log(metrics)
        except Exception as exc:
            self._fail(exc)

    @hookimpl
    def alignbench_on_step_end(self, metrics: dict[str, float]) -> None:
        """Log the step's metrics against the FLOPs spent."""
        self._log(metrics)

    @hookimpl
    def alignbench_on_eval(
        self, metrics: dict[str, float], samples: dict[str, list[dict[str, Any]]]
    ) -> None:
        """Log the evaluation's metrics, and its completions as one table per eval set
        (``completions/<prefix>``), against the FLOPs spent."""
        tables: dict[str, Any] = {}
        if self._logging and samples:
            try:
                for prefix, records in samples.items():
                    columns = list(dict.fromkeys(k for r in records for k in r))
                    rows = [[r.get(c) for c in columns] for r in records]
                    tables[f"completions/{prefix}"] = self.module.Table(columns=columns, data=rows)
            except Exception as exc:
                self._fail(exc)
        self._log({**metrics, **tables})

    @hookimpl
    def alignbench_on_run_end(self, summary: dict[str, Any]) -> None:
        """Put the final numbers in the run summary and close the run (even after a failure)."""
        if self.wandb is None:
            return
        try:
            if self._logging:
                flat = {k: v for k, v in summary.items() if isinstance(v, int | float | str)}
                self.wandb.summary.update(flat)
            self.wandb.finish(exit_code=0 if summary.get("status") == "finished" else 1)
        except Exception as exc:
            self._fail(exc)
        finally:
            self.wandb = None


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
