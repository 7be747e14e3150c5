"""Every script in benchmarks/ still runs: each one's --smoke mode, as a subprocess.

A benchmark is a script that prints one or more ratio lines, ``<what> / <baseline> = <number>``
(for example ``PPO-ptx step / lower bound = 1.05``), and has a ``--smoke`` mode that runs a
couple of steps of tiny models in seconds and says so in its output (the word ``smoke``, so a
script that silently ignores the flag fails too). Scripts are found by glob, so a new one is covered
without touching this file.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
# `_common.py` and the like are what the scripts share, not benchmarks.
BENCHMARKS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))
RATIO_LINE = re.compile(r"^\S.* / .+ = \d+\.\d+\b", re.MULTILINE)
#: Ratio lines a script must print, where it is more than one.
EXPECTED_RATIOS = {"ppo_step.py": 3, "generate.py": 2, "trl_parity.py": 4}


def test_benchmarks_are_found() -> None:
    assert BENCHMARKS, "no benchmarks/*.py found: the smoke tests below would silently cover none"


@pytest.mark.slow
@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_smoke(script: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(script.relative_to(ROOT)), "--smoke"],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "unrecognized arguments: --smoke" not in done.stderr, (
        f"{script.name} has no --smoke mode: every benchmark needs one (see this file's docstring)"
    )
    assert done.returncode == 0, f"{script.name} --smoke failed:\n{done.stdout}\n{done.stderr}"
    assert "smoke" in done.stdout.lower(), f"{script.name} ignored --smoke:\n{done.stdout}"
    ratios = RATIO_LINE.findall(done.stdout)
    assert len(ratios) >= EXPECTED_RATIOS.get(script.name, 1), done.stdout


# -- gpu_smoke.py: stages 1 and 2 on the device -------------------------------------------------


def _gpu_smoke() -> Any:
    """benchmarks/gpu_smoke.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("gpu_smoke", ROOT / "benchmarks" / "gpu_smoke.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gpu_smoke_builds_stages_1_and_2_on_the_cpu_in_bf16() -> None:
    """--smoke --device cpu: stage 1 and stage 2 are built through the stage functions under
    bf16 autocast on the CPU (the code a GPU runs in bf16), checked and printed."""
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_smoke.py", "--smoke", "--device", "cpu", "--algos", "ppo"],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    rows = [
        line for line in done.stdout.splitlines() if line.startswith(("| stage 1", "| stage 2"))
    ]
    assert len(rows) == 2, done.stdout
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[4:] == ["cpu", "bf16", "fp32, finite"], row
        assert float(cells[1]) > 0 and float(cells[2]) > 0  # seconds, FLOPs


@pytest.mark.slow
def test_gpu_smoke_runs_ppo_in_fp16_on_the_cpu() -> None:
    """--smoke --precision fp16: the PPO step ends with finite statistics (it stopped on a NaN
    policy loss: fp16 GAE and whitening of a zero critic's tiny advantages, now fp32)."""
    done = subprocess.run(
        [
            sys.executable,
            "benchmarks/gpu_smoke.py",
            "--smoke",
            "--device",
            "cpu",
            "--precision",
            "fp16",
            "--algos",
            "ppo",
            "--skip-stages",
        ],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert any(line.startswith("| ppo |") for line in done.stdout.splitlines()), done.stdout


def test_gpu_smoke_check_stage_refuses_what_a_stage_must_not_leave(tmp_path: Path) -> None:
    """The stage check fails on bf16 or non-finite cached weights, a record of another device or
    precision, and a cache hit; it passes the default record on the CPU in fp32."""
    from safetensors.torch import save_file

    check = _gpu_smoke().check_stage
    cpu = torch.device("cpu")
    record = {"flops": 1.0, "device": "cpu", "precision": "bf16"}
    save_file({"w": torch.ones(2)}, tmp_path / "model.safetensors")
    check("ok", tmp_path, record, cpu, "bf16")
    check("ok", tmp_path, {"flops": 1.0}, cpu, "fp32")  # the default record adds nothing
    for info, precision, message in (
        (record, "fp16", "built on"),
        ({"flops": 1.0}, "bf16", "built on"),
        ({**record, "cache_hit": True}, "bf16", "fresh cache"),
    ):
        with pytest.raises(AssertionError, match=message):
            check("stage", tmp_path, info, cpu, precision)
    save_file({"w": torch.ones(2, dtype=torch.bfloat16)}, tmp_path / "model.safetensors")
    with pytest.raises(AssertionError, match="not fp32"):
        check("stage", tmp_path, record, cpu, "bf16")
    save_file({"w": torch.tensor([1.0, float("nan")])}, tmp_path / "model.safetensors")
    with pytest.raises(AssertionError, match="non-finite"):
        check("stage", tmp_path, record, cpu, "bf16")
