"""Misspelt hook names are caught when plugins load, with file:line and a hint (issue 12.3)."""

from __future__ import annotations

from alignbench.app import main
from alignbench.registry import build_registry

MODULE_TYPO = """
from alignbench import hookimpl


@hookimpl
def alignbench_register_algorithm(register):
    pass
"""

METHOD_TYPO = """
from dataclasses import dataclass

from alignbench import AlgorithmConfig, hookimpl


@dataclass
class TypoConfig(AlgorithmConfig):
    pass


class Typo:
    def __init__(self, run, config):
        self.run = run

    @hookimpl
    def alignbench_rollout(self, run, prompts):
        raise AssertionError("never reached: the typo is caught first")

    @hookimpl
    def alignbench_updat(self, run, batch):
        return {}


@hookimpl
def alignbench_register_algorithms(register):
    register("typo_algo", Typo, TypoConfig)
"""


def test_a_misspelt_module_hook_skips_the_file_with_file_line_and_a_suggestion(tmp_path) -> None:
    """The file is skipped and listed as failed; every other plugin still loads."""
    (tmp_path / "typo.py").write_text(MODULE_TYPO)
    registry = build_registry([str(tmp_path)])
    message = registry.failed[f"file:{tmp_path / 'typo.py'}"]
    assert message == (
        f"{tmp_path / 'typo.py'}:5: unknown hook 'alignbench_register_algorithm' — did you mean "
        "'alignbench_register_algorithms'?"
    )
    assert "ppo" in registry.names("algo")


def test_a_misspelt_algorithm_hook_fails_before_anything_runs(tmp_path, capsys, monkeypatch):
    """`algo=<plugin with alignbench_updat>`: one line naming the method, exit 2, no results."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "typo_algo.py").write_text(METHOD_TYPO)
    monkeypatch.chdir(tmp_path)
    assert main([f"plugin_dirs=[{plugins}]", "algo=typo_algo", "logger=none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"error: Typo: {plugins / 'typo_algo.py'}:20: unknown hook 'alignbench_updat' — did you "
        "mean 'alignbench_update'?"
    )
    assert not (tmp_path / "results").exists()
