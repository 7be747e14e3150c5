"""Importing alignbench stays cheap: heavy libraries load only on the paths that use them.

Every CLI call and every subprocess of the suite pays for what ``import alignbench`` and the
plugin registration import, so these tests pin the modules that must not come with them (no
timings: which modules are loaded is what makes the time, and it does not depend on the load).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import alignbench
from alignbench.sampling import SamplingParams

#: Loaded only by the paths that need them (a dataset task, W&B, plots, the labelling server,
#: LoRA, data parallelism, the crowd models, the Optuna sweeper).
OPTIONAL = (
    "datasets",
    "wandb",
    "matplotlib",
    "pandas",
    "fastapi",
    "uvicorn",
    "peft",
    "crowdkit",
    "optuna",
)
#: transformers' model classes, loaded by model building, loading and sampling (seconds).
MODELLING = ("transformers.modeling_utils", "alignbench.sampling")

PROBE = """
import json, sys
import alignbench
after_import = sorted(sys.modules)
from alignbench.registry import build_registry
registry = build_registry([])
assert not registry.failed, registry.failed
print(json.dumps({"import": after_import, "plugins": sorted(sys.modules)}))
"""


def loaded_modules() -> dict[str, set[str]]:
    """The modules a fresh interpreter holds after ``import alignbench``, then after loading the
    built-in plugins (what ``python -m alignbench.plugins`` and every CLI call do first)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ALIGNBENCH_DISABLE_EXTERNAL_PLUGINS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, env=env
    ).stdout
    return {stage: set(names) for stage, names in json.loads(out.splitlines()[-1]).items()}


def test_import_and_plugin_loading_leave_heavy_libraries_unloaded() -> None:
    loaded = loaded_modules()
    assert not loaded["import"] & {*OPTIONAL, *MODELLING}
    # Loading the built-in plugins (every CLI call does, even a refused override) needs
    # neither the optional libraries nor transformers' modelling code.
    assert not loaded["plugins"] & set(OPTIONAL)
    assert "transformers.modeling_utils" not in loaded["plugins"]


def test_lazily_exported_names_are_public_api() -> None:
    assert alignbench.SamplingParams is SamplingParams
    assert set(alignbench.__all__) <= set(dir(alignbench))
    for name in alignbench.__all__:
        assert getattr(alignbench, name) is not None, name
