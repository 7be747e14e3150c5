"""The plugin guide stays true: every hook has a section, every hookspec is typed, examples run."""

from __future__ import annotations

import copy
import inspect
import math
import re
import sys
import typing
from collections.abc import Iterator
from pathlib import Path

import pluggy
import pytest
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from alignbench import AlgorithmConfig, Batch, Run, hookspecs
from alignbench.app import _check_run_hooks
from alignbench.budget import Budget, FlopCounter
from alignbench.config import ModelConfig
from alignbench.defaults import DefaultScore
from alignbench.models import build_model, build_tokenizer
from alignbench.registry import build_registry
from alignbench_plugins.facts import FactsConfig, FactsTask
from alignbench_plugins.rewards import AbstentionConfig, AbstentionReward

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
HOOKSPECS = {
    name: function
    for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
    if name.startswith("alignbench_")
}


def guide() -> str:
    return GUIDE.read_text(encoding="utf-8")


def documented_hooks() -> set[str]:
    """Hook names that have a section headed exactly "### `<name>`"."""
    return set(re.findall(r"^### `(alignbench_\w+)`[ \t]*$", guide(), flags=re.MULTILINE))


def example(name: str) -> str:
    """The ```python block right after ``<!-- example: <name> -->`` in the guide."""
    match = re.search(
        rf"^<!-- example: {re.escape(name)} -->\n```python\n(.*?)^```$",
        guide(),
        flags=re.MULTILINE | re.DOTALL,
    )
    assert match, f"docs/plugins.md has no ```python block right after <!-- example: {name} -->"
    return match.group(1)


@pytest.fixture
def isolated_plugins() -> Iterator[None]:
    """Undo what loading a plugin folder does to the process: ConfigStore nodes, sys.modules."""
    store = ConfigStore.instance()
    saved_repo = copy.deepcopy(store.repo)
    saved_modules = set(sys.modules)
    try:
        yield
    finally:
        store.repo = saved_repo
        for name in set(sys.modules) - saved_modules:
            if name.startswith("alignbench.local_plugins."):
                del sys.modules[name]


def test_hookspecs_are_found() -> None:
    """The module scan sees exactly the hooks pluggy sees (so the tests below are not vacuous)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    hooks = {name for name in dir(pm.hook) if name.startswith("alignbench_")}
    assert HOOKSPECS
    assert set(HOOKSPECS) == hooks


@pytest.mark.parametrize("name", sorted(HOOKSPECS))
def test_every_hook_has_a_section_in_the_guide(name: str) -> None:
    assert name in documented_hooks(), f'docs/plugins.md lacks a "### `{name}`" section'


def test_guide_documents_no_hook_that_does_not_exist() -> None:
    stale = documented_hooks() - set(HOOKSPECS)
    assert not stale, f"docs/plugins.md documents hooks that hookspecs.py lacks: {sorted(stale)}"


@pytest.mark.parametrize("name", sorted(HOOKSPECS))
def test_every_hookspec_is_documented_and_typed(name: str) -> None:
    function = HOOKSPECS[name]
    assert hasattr(function, f"{hookspecs.PROJECT}_spec"), f"{name} is not marked @hookspec"
    assert (inspect.getdoc(function) or "").strip(), f"{name} has no docstring"
    signature = inspect.signature(function)
    assert signature.parameters, f"{name} takes no arguments"
    untyped = [p.name for p in signature.parameters.values() if p.annotation is p.empty]
    assert not untyped, f"{name}: parameters without a type annotation: {untyped}"
    assert signature.return_annotation is not signature.empty, f"{name} has no return annotation"
    # The annotations must also resolve (names imported only for type checkers included).
    hints = typing.get_type_hints(function, localns={"Batch": Batch, "Run": Run})
    assert set(hints) == {*signature.parameters, "return"}


def test_example_algorithm_registers_best_of_k(tmp_path: Path, isolated_plugins: None) -> None:
    (tmp_path / "best_of_k.py").write_text(example("best_of_k"), encoding="utf-8")
    registry = build_registry([str(tmp_path)])
    assert not registry.failed
    assert "best_of_k" in registry.names("algo")
    assert issubclass(registry.get("algo", "best_of_k").config_cls, AlgorithmConfig)


def test_example_reward_task_and_observer_register(tmp_path: Path, isolated_plugins: None) -> None:
    for name in ("concise", "addition", "observer"):
        (tmp_path / f"{name}.py").write_text(example(name), encoding="utf-8")
    registry = build_registry([str(tmp_path)])
    assert not registry.failed
    assert "concise" in registry.names("reward")
    assert "addition" in registry.names("task")
    assert registry.pm.has_plugin(f"file:{(tmp_path / 'observer.py').resolve()}")


def test_example_algorithm_takes_a_step(tmp_path: Path, isolated_plugins: None) -> None:
    """The documented best_of_k, run through the hooks on a tiny untrained model."""
    (tmp_path / "best_of_k.py").write_text(example("best_of_k"), encoding="utf-8")
    registry = build_registry([str(tmp_path)])
    entry = registry.get("algo", "best_of_k")
    task = FactsTask(FactsConfig(name="facts", num_entities=10))
    tokenizer = build_tokenizer(task.vocabulary())
    small = ModelConfig(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2)
    policy = build_model(small, tokenizer)
    policy.eval()
    flops = FlopCounter()
    flops.track(policy, "policy")
    config = entry.config_cls(name="best_of_k", k=2)
    run = Run(
        cfg=OmegaConf.create({}),
        config=config,
        task=task,
        reward=AbstentionReward(AbstentionConfig(name="abstention"), task),
        tokenizer=tokenizer,
        policy=policy,
        sft_path=tmp_path,
        budget=Budget(kind="steps", amount=1),
        flops=flops,
        generator=torch.Generator().manual_seed(0),
        output_dir=tmp_path,
        pm=registry.pm,
    )
    before = [p.detach().clone() for p in policy.parameters()]
    plugins = {"algorithm:best_of_k": entry.cls(run, config), "core:default-score": DefaultScore()}
    for name, plugin in plugins.items():
        registry.pm.register(plugin, name=name)
    try:
        _check_run_hooks(run.pm, "algorithm:best_of_k")
        prompts = task.splits["rl"].to_list()[:3]
        batch = registry.pm.hook.alignbench_rollout(run=run, prompts=prompts)
        batch = registry.pm.hook.alignbench_score(run=run, batch=batch)
        stats = registry.pm.hook.alignbench_update(run=run, batch=batch)
    finally:
        for name in plugins:
            registry.pm.unregister(name=name)
        flops.close()
    assert batch.num_sequences == 6 and batch.rewards is not None
    assert stats and all(isinstance(v, float) and math.isfinite(v) for v in stats.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters(), strict=True))
    assert flops.by_model["policy"] > 0
