"""The plugin system: discovery, plugin_dirs, registration errors, run-hook ownership, listing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from alignbench import PluginError, hookimpl
from alignbench.app import main, run_job
from alignbench.registry import build_registry, implementers
from tests.conftest import TINY, compose

PLUGIN_FILE = """
from dataclasses import dataclass

import torch

import alignbench
from alignbench import AlgorithmConfig, SamplingParams, ops
from alignbench.models import response_logprobs


@dataclass
class BestOfTwoConfig(AlgorithmConfig):
    lr: float = 1e-3


class BestOfTwo:
    def __init__(self, run, config):
        self.config = config
        self.optimizer = torch.optim.SGD(run.policy.parameters(), lr=config.lr)

    @alignbench.hookimpl
    def alignbench_rollout(self, run, prompts):
        return run.sample(run.policy, prompts, 2, SamplingParams(max_new_tokens=4))

    @alignbench.hookimpl
    def alignbench_update(self, run, batch):
        best = batch.grouped(batch.rewards).argmax(1) + torch.arange(len(batch.prompts)) * 2
        logprobs = response_logprobs(run.policy, batch.input_ids, batch.attention_mask,
                                     batch.prompt_length)
        loss = -ops.masked_mean(logprobs[best], batch.response_mask[best])
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss/sft": loss.item()}


@alignbench.hookimpl
def alignbench_register_algorithms(register):
    register("best_of_two", BestOfTwo, BestOfTwoConfig)
"""


def test_builtins_come_through_the_entry_point_group(registry) -> None:
    """The built-in algorithms, rewards and task are registered by entry-point plugins."""
    assert registry.names("algo") == [
        *("best_of_n", "dpo", "grpo", "online_dpo", "ppo"),
        *("reinforce_pp", "rft", "rloo", "rrhf", "sft"),
    ]
    assert registry.names("reward") == [
        *("abstention", "dialogue", "exact_match", "length", "mixed", "rm", "turn")
    ]
    assert registry.names("feedback") == ["dataset", "file", "page", "simulated"]
    assert registry.names("task") == ["dataset", "dialogue", "facts", "rubric"]
    for name in ("ppo", "rrhf", "rewards", "facts", "feedback", "rubric", "grpo", "rloo"):
        assert "entry point alignbench_plugins." in registry.origins[name]


def test_plugin_file_outside_repo_registers_an_algorithm_that_runs(tmp_path: Path) -> None:
    """A single .py file in a plugin_dirs folder adds `algo=best_of_two`, and a job runs it."""
    folder = tmp_path / "my_plugins"
    folder.mkdir()
    (folder / "best_of_two.py").write_text(PLUGIN_FILE)
    registry = build_registry([str(folder)])
    assert "best_of_two" in registry.names("algo")
    cfg = compose([*TINY, f"cache_dir={tmp_path / 'cache'}", "algo=best_of_two"], registry)
    summary = run_job(cfg, tmp_path / "out", registry=registry)
    assert summary["status"] == "finished"
    assert summary["algorithm"] == "best_of_two"
    assert summary["budget/steps"] == 2
    lines = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    assert any("loss/sft" in json.loads(line) for line in lines)


def test_plugin_dirs_on_the_command_line(tmp_path: Path, monkeypatch, capsys) -> None:
    """`plugin_dirs=[...]` on the command line is loaded before Hydra composes the config."""
    folder = tmp_path / "my_plugins"
    folder.mkdir()
    (folder / "best_of_two.py").write_text(PLUGIN_FILE)
    monkeypatch.chdir(tmp_path)
    code = main([f"plugin_dirs=[{folder}]", "algo=best_of_two", *TINY, "hydra.run.dir=run"])
    assert code == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["algorithm"] == "best_of_two"


def test_broken_plugin_is_named_and_others_keep_working(tmp_path: Path) -> None:
    """A plugin file that raises on import is recorded as failed; the other plugins load."""
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    (tmp_path / "good.py").write_text(PLUGIN_FILE)
    registry = build_registry([str(tmp_path)])
    [(name, error)] = registry.failed.items()
    assert name.endswith("broken.py") and "boom" in error
    assert "best_of_two" in registry.names("algo")


def test_plugin_calling_sys_exit_at_import_is_reported_not_obeyed(tmp_path: Path) -> None:
    """`sys.exit()` in a plugin file does not end the command; the file is marked as failed."""
    (tmp_path / "quits.py").write_text("import sys\nsys.exit(3)\n")
    (tmp_path / "good.py").write_text(PLUGIN_FILE)
    registry = build_registry([str(tmp_path)])
    [(name, error)] = registry.failed.items()
    assert name.endswith("quits.py") and error.startswith("SystemExit")
    assert "best_of_two" in registry.names("algo")


def test_duplicate_name_is_an_error(tmp_path: Path) -> None:
    """Two plugins registering the same algorithm name is an error naming both."""
    (tmp_path / "a.py").write_text(PLUGIN_FILE)
    (tmp_path / "b.py").write_text(PLUGIN_FILE)
    with pytest.raises(PluginError, match="registered twice"):
        build_registry([str(tmp_path)])


def test_config_must_subclass_the_group_base(tmp_path: Path) -> None:
    """Registering a config that is not an AlgorithmConfig dataclass is refused, naming it."""
    (tmp_path / "bad.py").write_text(
        textwrap.dedent(
            """
            from dataclasses import dataclass
            import alignbench

            @dataclass
            class NotAConfig:
                lr: float = 1.0

            @alignbench.hookimpl
            def alignbench_register_algorithms(register):
                register("bad", object, NotAConfig)
            """
        )
    )
    with pytest.raises(PluginError, match="subclassing AlgorithmConfig"):
        build_registry([str(tmp_path)])


def test_a_second_rollout_implementer_is_refused(tmp_path: Path) -> None:
    """A plugin module that also implements rollout would silently compete: the run refuses."""

    class Intruder:
        @hookimpl
        def alignbench_rollout(self, run, prompts):
            raise AssertionError("must never be called")

    registry = build_registry()
    registry.pm.register(Intruder(), name="intruder")
    try:
        cfg = compose([*TINY, f"cache_dir={tmp_path / 'cache'}"], registry)
        with pytest.raises(PluginError, match="alignbench_rollout.*intruder"):
            run_job(cfg, tmp_path / "out", registry=registry)
        assert implementers(registry.pm, "alignbench_rollout") == ["intruder"]  # run cleaned up
    finally:
        registry.pm.unregister(name="intruder")


def test_observer_hooks_are_called_in_order(tiny_job) -> None:
    """A recorder plugin sees eval(0), the steps, the final eval, then run end, in that order."""
    calls: list[str] = []

    class Recorder:
        @hookimpl
        def alignbench_on_step_end(self, step):
            calls.append(f"step{step}")

        @hookimpl
        def alignbench_on_eval(self, step):
            calls.append(f"eval{step}")

        @hookimpl
        def alignbench_on_run_end(self, summary):
            calls.append(f"end:{summary['status']}")

    registry = build_registry()
    registry.pm.register(Recorder(), name="recorder")
    tiny_job("budget.amount=2", registry=registry)
    assert calls == ["eval0", "step1", "step2", "eval2", "end:finished"]


def test_listing_command(tmp_path: Path) -> None:
    """`python -m alignbench.plugins --json` lists every name with the plugin it comes from."""
    (tmp_path / "best_of_two.py").write_text(PLUGIN_FILE)
    out = subprocess.run(
        [sys.executable, "-m", "alignbench.plugins", "--json", "--plugin-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    info = json.loads(out)
    algos = {e["name"]: e for e in info["groups"]["algo"]}
    assert set(algos) == {
        *("best_of_n", "dpo", "grpo", "online_dpo", "ppo", "reinforce_pp"),
        *("rft", "rloo", "rrhf", "sft", "best_of_two"),
    }
    assert algos["best_of_two"]["origin"].endswith("best_of_two.py")
    assert algos["rrhf"]["plugin"] == "rrhf"


def test_a_wrapper_around_update_is_allowed(tiny_job) -> None:
    """A timing wrapper surrounds the algorithm's update without counting as a second owner."""
    seen: list[float] = []

    class Timer:
        @hookimpl(wrapper=True)
        def alignbench_update(self):
            stats = yield
            seen.append(stats["loss/total"])
            return stats

    registry = build_registry()
    registry.pm.register(Timer(), name="timer")
    summary = tiny_job("budget.amount=2", registry=registry)
    assert summary["status"] == "finished"
    assert len(seen) == 2


def test_third_party_entry_point_cannot_shadow_a_builtin(monkeypatch) -> None:
    """An installed plugin whose entry point reuses a built-in's name is reported, not loaded."""
    import importlib.metadata as metadata

    real = metadata.entry_points

    class FakeDist:
        name = "someone-elses-package"

    fake = metadata.EntryPoint(name="facts", value="json", group="alignbench")
    fake = fake._for(FakeDist()) if hasattr(fake, "_for") else fake

    def entry_points(**kwargs):
        found = list(real(**kwargs))
        return [*found, fake] if kwargs.get("group") == "alignbench" else found

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    monkeypatch.delenv("ALIGNBENCH_DISABLE_EXTERNAL_PLUGINS")
    registry = build_registry()
    assert registry.names("task") == ["dataset", "dialogue", "facts", "rubric"]
    assert registry.origins["facts"].startswith("alignbench ")
    [(name, error)] = registry.failed.items()
    assert name == "someone-elses-package:facts" and "already taken" in error


def test_builtin_plugins_import_only_the_public_api() -> None:
    """No module under plugins/ imports `alignbench.<internal>`: the built-ins prove the API."""
    import ast

    root = Path(__file__).resolve().parent.parent / "plugins"
    offenders = []
    for file in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(file.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            offenders += [f"{file.name}: {n}" for n in names if n.startswith("alignbench.")]
    assert offenders == []
