"""Shared fixtures: offline, no third-party plugins, tiny models and budgets."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["ALIGNBENCH_DISABLE_EXTERNAL_PLUGINS"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from alignbench.app import run_job  # noqa: E402
from alignbench.config import CONF_PACKAGE  # noqa: E402
from alignbench.registry import Registry, build_registry  # noqa: E402

#: A world, a model and a budget small enough that a whole job takes a few seconds.
TINY = [
    "task.num_entities=40",
    "task.eval_size=20",
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.num_layers=2",
    "model.num_heads=2",
    "stage.sft.epochs=4",
    "algo.prompts_per_step=4",
    "budget.kind=steps",
    "budget.amount=2",
    "eval.points=0",
    "logger=none",
    # One torch thread: on tiny models intra-op threads cost more than they save, and on a
    # shared machine they spin against each other (a tiny dialogue job: 1.0 s vs 5.7-10 s).
    "threads=1",
]


def compose(overrides: list[str], registry: Registry | None = None) -> DictConfig:
    """Compose the job config as ``python -m alignbench`` would (plugins registered first)."""
    if registry is None:
        build_registry()
    with hydra.initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        return hydra.compose(config_name="config", overrides=overrides)


@pytest.fixture(autouse=True)
def _no_signal_state_leaks() -> Iterator[None]:
    """Every test ends without alignbench's signal handlers or a pending stop request: one
    left behind (a direct call that installs them, a test's own SIGTERM) stops the next test's
    job in the same process, wherever pytest-xdist runs it. The test that leaves it fails."""
    from alignbench import signals

    yield
    left = (signals.requested(), signals.handlers_installed())
    if left != (None, False):
        signals.uninstall()
        pytest.fail(f"the test left signal state behind (request, handlers) = {left}")


@pytest.fixture
def registry() -> Registry:
    """A fresh registry of the built-in plugins."""
    return build_registry()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One stage cache for the whole session, so the tiny SFT model trains once per config.

    Under pytest-xdist every worker has its own base folder; the cache sits one level up so
    that the workers share it (the stage cache builds each key once under a file lock)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return tmp_path_factory.mktemp("cache")
    shared = tmp_path_factory.getbasetemp().parent / "cache"
    shared.mkdir(exist_ok=True)
    return shared


@pytest.fixture
def tiny_job(tmp_path: Path, cache_dir: Path) -> Callable[..., dict[str, Any]]:
    """Run one tiny job with extra overrides; returns its summary."""

    def run(*overrides: str, registry: Registry | None = None, out: str = "out") -> dict[str, Any]:
        registry = registry or build_registry()
        cfg = compose([*TINY, f"cache_dir={cache_dir}", *overrides], registry)
        return run_job(cfg, tmp_path / out, registry=registry)

    return run
