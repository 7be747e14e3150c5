"""End-to-end: the command line, W&B offline runs, and the installed (non-editable) package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


def _cli(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, drop: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in drop}
    return subprocess.run(
        [sys.executable, "-m", "alignbench", *args],
        cwd=cwd,
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_multirun_writes_one_job_per_algorithm_and_hits_the_cache(tmp_path: Path) -> None:
    """`python -m alignbench algo=sft,rrhf --multirun` runs both; a second sweep reuses SFT."""
    args = ["algo=sft,rrhf", "--multirun", *TINY, "hydra.sweep.dir=sweep1"]
    first = _cli(args, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    summaries = sorted((tmp_path / "sweep1").glob("*/summary.json"), reverse=True)
    names = [p.parent.name for p in summaries]
    # Named by config (`<algo>_<task>_seed<N>_<other overrides>_<hash>`), not by launch order.
    assert [n.split("_", 3)[:3] for n in names] == [
        ["sft", "facts", "seed0"],
        ["rrhf", "facts", "seed0"],
    ]
    for path in summaries:
        summary = json.loads(path.read_text())
        assert summary["status"] == "finished"
        assert (path.parent / ".hydra" / "config.yaml").exists()
    assert f"sweep1/{names[1]}" in first.stdout  # says where the results are
    cached = json.loads(summaries[1].read_text())["stage/sft"]["cache_hit"]
    assert cached is True  # the second job of the sweep reused the first one's SFT model
    second = _cli([*args[:-1], "hydra.sweep.dir=sweep2"], tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    again = json.loads(next((tmp_path / "sweep2").glob("sft_*/summary.json")).read_text())
    assert again["stage/sft"]["cache_hit"] is True


@pytest.mark.slow
def test_wandb_offline_run_needs_no_account(tmp_path: Path) -> None:
    """The default logger writes an offline W&B run inside the job folder, with no network."""
    args = [*[a for a in TINY if a != "logger=none"], "logger=wandb", "hydra.run.dir=job"]
    done = _cli(args, tmp_path, {"HOME": str(tmp_path)}, drop=("WANDB_MODE", "WANDB_API_KEY"))
    assert done.returncode == 0, done.stderr[-2000:]
    runs = list((tmp_path / "job" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb"))


@pytest.mark.slow
def test_installed_package_ships_plugins_and_configs(tmp_path: Path) -> None:
    """A non-editable install carries the built-in plugins, conf/ and entry points, and runs
    from any directory."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = wheels.glob("alignbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for needed in (
        "alignbench_plugins/rrhf.py",
        "alignbench_plugins/facts.py",
        "alignbench_conf/config.yaml",
        "alignbench_conf/algo/ppo_plain.yaml",
        "alignbench_conf/logger/none.yaml",
    ):
        assert needed in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "[alignbench]" in zipfile.ZipFile(wheel).read(entry_points).decode()
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(site)}
    where = subprocess.run(
        [
            sys.executable,
            "-c",
            "import alignbench, alignbench_plugins; "
            "print(alignbench.__file__, alignbench_plugins.__file__)",
        ],
        cwd=elsewhere,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.count(str(site)) == 2  # imported from the installed copy, not the source tree
    done = _cli(["algo=sft", *TINY, "hydra.run.dir=job"], elsewhere, env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((elsewhere / "job" / "summary.json").read_text())["status"] == "finished"
