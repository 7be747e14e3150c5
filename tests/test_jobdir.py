"""Job folders: never overwritten by a different config, one writer at a time (issue 11)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from alignbench import ConfigError
from alignbench.jobdir import check_free, differing_keys, flat_config, locked
from tests.conftest import TINY, compose


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "alignbench", *args], cwd=cwd, capture_output=True, text=True
    )


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def test_flat_config_and_differing_keys() -> None:
    """Nested configs flatten to dotted keys; neutral keys (threads, logger, ...) are ignored."""
    old = flat_config({"algo": {"lr": 1.0, "name": "ppo"}, "seed": 0, "threads": 1})
    new = flat_config({"algo": {"lr": 2.0, "name": "ppo"}, "seed": 0, "threads": 2, "x": 1})
    assert old == {"algo.lr": 1.0, "algo.name": "ppo", "seed": 0}
    assert differing_keys(old, new) == ["algo.lr", "x"]


@pytest.mark.slow
def test_a_different_config_never_overwrites_a_finished_folder(tmp_path: Path) -> None:
    """Same hydra.run.dir, other overrides: refused in one line before anything is written."""
    base = [*TINY, f"cache_dir={tmp_path / 'cache'}", "hydra.run.dir=out", "algo=sft"]
    first = _run(base, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    before = _snapshot(tmp_path / "out")
    assert ".hydra/config.yaml" in before and "summary.json" in before
    again = _run([*base, "algo.lr=0.5"], tmp_path)
    assert again.returncode == 1
    line = [x for x in again.stderr.splitlines() if x.startswith("error:")]
    assert len(line) == 1 and "differs in: algo.lr" in line[0] and "rerun=true" in line[0]
    assert _snapshot(tmp_path / "out") == before  # .hydra/ not relabelled, nothing overwritten
    forced = _run([*base, "algo.lr=0.5", "rerun=true"], tmp_path)
    assert forced.returncode == 0, forced.stderr[-2000:]
    [aside] = (tmp_path / "out").glob("previous-*")
    assert (aside / ".hydra" / "config.yaml").read_bytes() == before[".hydra/config.yaml"]
    new = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert new["status"] == "finished"
    assert "lr: 0.5" in (tmp_path / "out" / ".hydra" / "config.yaml").read_text()


def test_unrecorded_results_are_refused(tmp_path: Path, registry) -> None:
    """A folder with step records but no config record is not silently reused."""
    (tmp_path / "metrics.jsonl").write_text('{"kind": "step", "step": 1}\n')
    cfg = compose([*TINY], registry)
    with pytest.raises(ConfigError, match="no record of their config"):
        check_free(cfg, tmp_path)


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    """While one process holds a job folder, another is refused in one line naming the holder."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from alignbench.jobdir import locked\n"
            f"with locked(Path({str(tmp_path)!r})):\n    print('held', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(ConfigError, match=f"being written by process {holder.pid}"),
            locked(tmp_path),
        ):
            pass
    finally:
        holder.kill()
        holder.wait()
    with locked(tmp_path):  # free again once the holder is gone
        pass


def test_job_names_depend_on_the_config_not_the_launch_order() -> None:
    """Same overrides in any order → same name; neutral keys don't count; any change does."""
    from alignbench.jobdir import job_name

    base = job_name(["algo=ppo", "seed=1", "reward=exact_match"])
    assert base == job_name(["reward=exact_match", "seed=1", "algo=ppo", "threads=2"])
    assert base == job_name(["reward=exact_match", "seed=1", "algo=ppo", "logger=none"])
    assert base.startswith("reward=exact_match_")  # readable; algo/task/seed are in the prefix
    assert base != job_name(["algo=ppo", "seed=2", "reward=exact_match"])
    assert job_name([]) != job_name(["algo.lr=0.1"])
    assert "/" not in job_name(["feedback.path=/some/where/rankings.jsonl"])


@pytest.mark.slow
def test_extending_a_sweep_finds_its_finished_jobs(tmp_path: Path) -> None:
    """A sweep extended in the same folder skips the finished job instead of running it again
    under a new number (which compare would then count as an extra seed)."""
    common = [*TINY, "algo=sft", "--multirun", f"cache_dir={tmp_path / 'c'}", "hydra.sweep.dir=s"]
    first = _run([*common, "seed=0"], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    (done,) = (tmp_path / "s").glob("*/summary.json")
    before = done.read_bytes()
    second = _run([*common, "seed=1,0"], tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "already finished: skipped" in second.stdout
    folders = sorted(p.parent.name for p in (tmp_path / "s").glob("*/summary.json"))
    assert len(folders) == 2 and done.parent.name in folders
    assert done.read_bytes() == before  # the finished job was not run again
