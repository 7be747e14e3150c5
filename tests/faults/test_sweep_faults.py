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
