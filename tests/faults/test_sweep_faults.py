"""Process-level faults of a parallel sweep: SIGTERM and kill -9 of the command, then resume.

The command's own process is signalled, never its workers: the workers must stop with it
(checkpointing), leave no orphan that keeps writing, and the same command must then finish the
sweep with every step recorded exactly once.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.faults.inject import (
    check_steps,
    jobs,
    start,
    steps,
    wait_gone,
    wait_steps,
    writers,
)

pytestmark = pytest.mark.slow


def _kill_and_resume(tmp_path: Path, sig: int) -> tuple[int, str]:
    sweep, cache = tmp_path / "sweep", tmp_path / "cache"
    proc = start(sweep, cache)
    assert wait_steps(sweep, 2, proc), "the sweep ended before both jobs ran two steps"
    pids = writers(sweep)
    assert len(pids) == 2 and all(p != proc.pid for p in pids)  # two parallel workers
    proc.send_signal(sig)
    code = proc.wait(timeout=300)
    err = proc.stderr.read()
    assert wait_gone(pids, timeout=120) == [], "a worker outlived the sweep (an orphan)"
    stopped_at = {f.name: len(steps(f)) for f in jobs(sweep)}
    for folder in jobs(sweep):
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["status"] == "interrupted", summary.get("error")
        assert (folder / "checkpoints" / "latest").exists()
    again = start(sweep, cache)
    out, err2 = again.communicate(timeout=900)
    assert again.returncode == 0, err2[-2000:]
    for folder in jobs(sweep):
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["status"] == "finished"
        assert check_steps(folder) is None  # each step exactly once, in order
        assert len(steps(folder)) == 24 and stopped_at[folder.name] < 24
    return code, err


def test_sigterm_reaches_every_worker_of_a_parallel_sweep(tmp_path: Path) -> None:
    """kill <command>: each worker checkpoints and stops, the command exits 143, resume is exact."""
    code, err = _kill_and_resume(tmp_path, signal.SIGTERM)
    assert code == 143, err[-2000:]
    assert "stopped by signal 15: 2 job(s) interrupted" in err
    assert "Traceback" not in err


def test_kill_9_of_the_command_leaves_no_orphan_worker(tmp_path: Path) -> None:
    """kill -9 <command>: the workers see their parent gone, checkpoint and stop on their own."""
    code, _ = _kill_and_resume(tmp_path, signal.SIGKILL)
    assert code == -signal.SIGKILL


def test_ctrl_c_in_stage_1_exits_130_and_caches_nothing(tmp_path: Path) -> None:
    """Ctrl-C while stage 1 trains: one line, exit 130, no traceback, no half-built cache entry
    (a later run builds the stage from scratch), the job recorded as interrupted."""
    import subprocess
    import sys
    import time

    from tests.conftest import TINY

    cache = tmp_path / "cache"
    # Enough SFT epochs that stage 1 is still training when the signal comes.
    args = [*TINY, "algo=sft", "stage.sft.epochs=400", f"cache_dir={cache}", "hydra.run.dir=job"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "alignbench", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not list((cache / "sft").glob(".*.tmp")):
        time.sleep(0.05)
    time.sleep(1.0)  # inside the training loop, past model construction
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=300) == 130
    err = proc.stderr.read()
    assert "Traceback" not in err
    assert "stopped by signal 2 during stage 1 (SFT): nothing was cached" in err
    assert [p.name for p in (cache / "sft").iterdir() if not p.name.endswith(".lock")] == []
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["status"] == "interrupted"
