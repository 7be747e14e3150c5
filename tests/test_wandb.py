"""The W&B logger against a fake ``wandb`` module: what a run carries, and failures that warn once.

The real offline run (no account, no network) is checked end to end in ``tests/test_e2e.py``.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from alignbench.observers import WandbLogger
from tests.conftest import TINY, compose


class FakeRun:
    """Records what the logger does to a W&B run; ``log`` raises when told to."""

    def __init__(self, calls: list[tuple], fail_log: bool) -> None:
        self.calls = calls
        self.fail_log = fail_log
        self.summary: dict[str, Any] = {}

    def define_metric(self, name: str, step_metric: str | None = None, **kwargs: Any) -> None:
        self.calls.append(("define_metric", name, step_metric))

    def log(self, metrics: dict[str, float]) -> None:
        self.calls.append(("log", dict(metrics)))
        if self.fail_log:
            raise OSError("No space left on device\nsecond line")

    def finish(self, exit_code: int = 0) -> None:
        self.calls.append(("finish", exit_code))


class FakeTable:
    """What ``wandb.Table`` was given."""

    def __init__(self, columns: list[str], data: list[list[Any]]) -> None:
        self.columns, self.data = columns, data


@pytest.fixture
def fake_wandb(monkeypatch: pytest.MonkeyPatch) -> Callable[..., SimpleNamespace]:
    """Install a fake ``wandb`` in ``sys.modules``; returns a recorder of its calls."""

    def install(fail_log: bool = False, fail_init: bool = False) -> SimpleNamespace:
        record = SimpleNamespace(init_kwargs=None, calls=[], run=None)

        def init(**kwargs: Any) -> FakeRun:
            record.init_kwargs = kwargs
            if fail_init:
                raise RuntimeError("api key needed")
            record.run = FakeRun(record.calls, fail_log)
            return record.run

        module = types.ModuleType("wandb")
        module.init = init  # type: ignore[attr-defined]
        module.Table = FakeTable  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "wandb", module)
        return record

    return install


def _run(tmp_path: Path, *overrides: str) -> SimpleNamespace:
    """What WandbLogger reads from a Run: the composed config, the algorithm, the job folder."""
    cfg = compose([*TINY, "logger=wandb", *overrides])
    folder = tmp_path / "sweep-a" / "3_ppo_facts_seed1"
    return SimpleNamespace(cfg=cfg, config=SimpleNamespace(name=cfg.algo.name), output_dir=folder)


def test_run_carries_group_job_type_tags_config_and_flops_axis(
    tmp_path: Path, fake_wandb: Callable[..., SimpleNamespace]
) -> None:
    wandb = fake_wandb()
    overrides = ["algo=ppo", "seed=1", "reward.wrong=-4", "cache_dir=/tmp/c", "+x=" + "y" * 80]
    tags = WandbLogger.tags_from_overrides(overrides)
    assert tags[:2] == ["algo=ppo", "reward.wrong=-4"]  # no seed, no cache folder
    logger = WandbLogger(_run(tmp_path, "algo=ppo", "reward.wrong=-4"), "sweep-a", tags=tags)
    step = {"budget/flops": 1e9, "budget/steps": 1.0, "objective/reward": 0.5}
    logger.alignbench_on_step_end(metrics=step)
    logger.alignbench_on_step_end(metrics={**step, "budget/flops": 2e9})
    logger.alignbench_on_eval(metrics={"budget/flops": 2e9, "test/accuracy_known": 0.9}, samples={})
    summary = {"status": "finished", "test/accuracy_known": 0.9, "stage/sft": {"key": "k"}}
    logger.alignbench_on_run_end(summary=summary)

    kwargs = wandb.init_kwargs
    assert kwargs["group"] == "sweep-a" and kwargs["job_type"] == "ppo"
    assert kwargs["name"] == "3_ppo_facts_seed1" and kwargs["mode"] == "offline"
    assert kwargs["dir"] == str(tmp_path / "sweep-a" / "3_ppo_facts_seed1")
    assert kwargs["tags"] == ["algo=ppo", "reward.wrong=-4", "x=" + "y" * 61 + "…"]
    assert all(len(tag) <= 64 for tag in kwargs["tags"])  # W&B rejects longer tags
    config = kwargs["config"]
    assert config["algo.name"] == "ppo" and config["reward.wrong"] == -4 and config["seed"] == 0
    assert config["budget.kind"] == "steps"  # enums as plain strings
    assert not any(isinstance(v, dict) for v in config.values())  # flat: dotted keys only

    defines = [c[1:] for c in wandb.calls if c[0] == "define_metric"]
    assert defines[0] == ("budget/flops", None)  # the x axis is not charted against itself
    assert sorted(defines[1:]) == [
        ("budget/steps", "budget/flops"),
        ("objective/reward", "budget/flops"),
        ("test/accuracy_known", "budget/flops"),
    ]  # every metric by its exact name, once, "/" included
    logs = [c[1] for c in wandb.calls if c[0] == "log"]
    assert [m["budget/flops"] for m in logs] == [1e9, 2e9, 2e9]
    assert wandb.run.summary["test/accuracy_known"] == 0.9 and "stage/sft" not in wandb.run.summary
    assert wandb.calls[-1] == ("finish", 0)


def test_failing_log_warns_once_and_the_job_finishes(
    tiny_job: Callable[..., dict[str, Any]],
    fake_wandb: Callable[..., SimpleNamespace],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A real tiny job: wandb.log raises on the first call; one warning; training completes."""
    wandb = fake_wandb(fail_log=True)
    summary = tiny_job("logger=wandb")
    assert summary["status"] == "finished" and summary["steps"] == 2
    err = capsys.readouterr().err
    assert err.count("warning: W&B disabled for this job") == 1
    assert "(OSError: No space left on device); metrics.jsonl" in err  # first line only
    assert [c[0] for c in wandb.calls].count("log") == 1  # not retried after the failure
    assert wandb.calls[-1] == ("finish", 0)  # the run is still closed


def test_failing_init_warns_once_and_logging_is_a_no_op(
    tmp_path: Path,
    fake_wandb: Callable[..., SimpleNamespace],
    capsys: pytest.CaptureFixture[str],
) -> None:
    wandb = fake_wandb(fail_init=True)
    logger = WandbLogger(_run(tmp_path), "sweep-a", tags=["algo=rrhf"])
    logger.alignbench_on_step_end(metrics={"budget/flops": 1.0})
    logger.alignbench_on_eval(metrics={"budget/flops": 1.0, "test/reward": 0.0}, samples={})
    logger.alignbench_on_run_end(summary={"status": "finished"})
    err = capsys.readouterr().err
    assert err.count("warning: W&B disabled") == 1 and "RuntimeError: api key needed" in err
    assert wandb.calls == []


def test_warning_is_once_per_logger_whatever_fails(
    tmp_path: Path,
    fake_wandb: Callable[..., SimpleNamespace],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Failures in log and in finish after it: still a single warning."""
    wandb = fake_wandb(fail_log=True)
    logger = WandbLogger(_run(tmp_path), None)

    def broken_finish(exit_code: int = 0) -> None:
        raise RuntimeError("gone")

    wandb.run.finish = broken_finish
    for _ in range(5):
        logger.alignbench_on_step_end(metrics={"budget/flops": 1.0})
    logger.alignbench_on_run_end(summary={"status": "failed"})
    assert capsys.readouterr().err.count("warning: W&B disabled") == 1


def test_a_resumed_job_continues_the_same_run(
    tmp_path: Path, fake_wandb: Callable[..., SimpleNamespace]
) -> None:
    """The run id is kept in the job folder: a second logger (a resumed job) reuses it."""
    wandb = fake_wandb()
    WandbLogger(_run(tmp_path, "algo=ppo"), "sweep-a")
    first = wandb.init_kwargs
    WandbLogger(_run(tmp_path, "algo=ppo"), "sweep-a")
    assert wandb.init_kwargs["id"] == first["id"] and wandb.init_kwargs["resume"] == "allow"
