"""Fault injection: kill a 2-job parallel (joblib) sweep at random moments, resume it, and check
that nothing was lost or counted twice.

    python -m tests.faults.inject --kills 10 --seed 0 --steps 120

runs the sweep once straight, then again in a fresh folder killed at ``--kills`` random moments
(alternating SIGTERM and SIGKILL of the command's own process, never of a worker) and resumed
each time by the same command, until it finishes. It prints a row per kill and checks that

* every worker of a killed sweep is gone before the re-run starts (no orphan keeps writing),
* every finished summary's numbers are bit-identical to the straight run's, and
* every ``metrics.jsonl`` holds each step exactly once, in order.

The tests in this folder use the same helpers on single kills.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import TINY

#: Paces each step (tests/faults/pace/pace.py), so that a kill lands while both jobs train.
PACE_DIR = Path(__file__).resolve().parent / "pace"
#: A 2-job sweep on two parallel workers, small enough for a few seconds a job.
SWEEP = [
    *TINY,
    f"plugin_dirs=[{PACE_DIR}]",
    "algo=rrhf",
    "seed=0,1",
    "budget.amount=24",
    "checkpoint_every=4",
    "eval.points=2",
    "threads=1",
    "hydra/launcher=joblib",
    "hydra.launcher.n_jobs=2",
    "--multirun",
]
#: Keys of a summary that may differ between two runs of the same config.
VOLATILE = (
    "budget/seconds",
    "wall_time",
    "output_dir",
    "model_dir",
    "stage/sft",
    "skipped",
    "git_commit",
)


def warm(cache: Path) -> None:
    """Build the sweep's stage-1 model into ``cache`` first (one single job of one step), so
    that both workers start training together: otherwise one builds it while the other waits,
    and a tiny job can finish before the other has started."""
    if (cache / "sft").is_dir() and any((cache / "sft").iterdir()):
        return
    single = [a for a in SWEEP if a != "--multirun" and not a.startswith(("seed=", "hydra"))]
    args = [*single, "budget.amount=1", f"cache_dir={cache}", f"hydra.run.dir={cache}.warm"]
    subprocess.run(
        [sys.executable, "-m", "alignbench", *args],
        capture_output=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"},
    )


def start(sweep: Path, cache: Path, extra: list[str] | None = None) -> subprocess.Popen:
    """Start the sweep command (its own process group, so a test's signal reaches only it),
    its stage-1 model built first (:func:`warm`)."""
    warm(cache)
    args = [*SWEEP, f"cache_dir={cache}", f"hydra.sweep.dir={sweep}", *(extra or [])]
    return subprocess.Popen(
        [sys.executable, "-m", "alignbench", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"},
    )


def steps(folder: Path) -> list[int]:
    """The step numbers of a job's ``metrics.jsonl`` step records, in file order."""
    path = folder / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written right now
        if record.get("kind") == "step":
            out.append(record["step"])
    return out


def jobs(sweep: Path) -> list[Path]:
    """The sweep's job folders."""
    return sorted(p for p in sweep.glob("*_seed*") if p.is_dir()) if sweep.is_dir() else []


def writers(sweep: Path) -> list[int]:
    """Process ids recorded in the job folders' locks (the workers running them)."""
    pids = []
    for folder in jobs(sweep):
        text = (folder / ".lock").read_text() if (folder / ".lock").exists() else ""
        if text.startswith("process "):
            pids.append(int(text.split()[1]))
    return pids


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_gone(pids: list[int], timeout: float = 120.0) -> list[int]:
    """Wait until the processes are gone; returns those still alive after ``timeout``."""
    deadline = time.time() + timeout
    while time.time() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def finished(folder: Path) -> bool:
    """Whether a job folder's summary says finished."""
    try:
        return json.loads((folder / "summary.json").read_text())["status"] == "finished"
    except (OSError, ValueError, KeyError):
        return False


def wait_steps(
    sweep: Path, count: int, proc: subprocess.Popen, timeout: float = 300, since: float = 0.0
) -> bool:
    """Wait until every unfinished job has at least ``count`` step records written after
    ``since`` (a resumed job keeps its old lines until it writes again), False if the sweep
    ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        found = jobs(sweep)
        running = [f for f in found if not finished(f)]
        fresh = [
            f
            for f in running
            if (f / "metrics.jsonl").exists() and (f / "metrics.jsonl").stat().st_mtime > since
        ]
        ready = len(found) == 2 and running and fresh == running
        if ready and all(len(steps(f)) >= count for f in running):
            return True
        time.sleep(0.02)
    return False


def numbers(summary: dict) -> dict:
    """A summary without what legitimately differs between two runs of one config."""
    return {k: v for k, v in summary.items() if k not in VOLATILE}


def check_steps(folder: Path) -> str | None:
    """None if the job's step records are 1..N exactly once, else what is wrong."""
    found = steps(folder)
    if found != list(range(1, len(found) + 1)):
        return f"{folder.name}: steps {found}"
    return None


def straight(root: Path, cache: Path, extra: list[str]) -> dict[str, dict]:
    """Run the sweep without faults; its summaries' numbers by job folder name."""
    proc = start(root / "straight", cache, extra)
    _, err = proc.communicate(timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"the straight sweep failed:\n{err[-2000:]}")
    return {
        f.name: numbers(json.loads((f / "summary.json").read_text()))
        for f in jobs(root / "straight")
    }


def main(argv: list[str] | None = None) -> int:
    """Kill a sweep at random moments, resume it, compare with a straight run; print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=120, help="steps per job (10 kills fit)")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp one)")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    root = args.dir or Path(tempfile.mkdtemp(prefix="alignbench-faults-"))
    cache = root / "cache"
    budget = [f"budget.amount={args.steps}"]
    expected = straight(root, cache, budget)
    sweep = root / "killed"
    rows, problems = [], []
    for kill in range(args.kills):
        # A random moment: 1-3 steps past where the slower unfinished job stands (so every
        # kill lands in training, not at start-up), plus a random delay.
        running = [f for f in jobs(sweep) if not finished(f)]
        if jobs(sweep) and not running:
            break  # the sweep finished between kills
        done = [len(steps(f)) for f in running] or [0]
        at = min(min(done) + rng.randint(1, 3), args.steps - 1)
        since = time.time()
        proc = start(sweep, cache, budget)
        reached = wait_steps(sweep, at, proc, since=since)
        time.sleep(rng.uniform(0, 0.2))
        sig = signal.SIGTERM if kill % 2 == 0 else signal.SIGKILL
        pids = writers(sweep)
        if proc.poll() is None:
            proc.send_signal(sig)
        code = proc.wait(timeout=600)
        orphans = wait_gone(pids)
        if orphans:
            problems.append(f"kill {kill}: workers {orphans} still running after the command ended")
        done = [len(steps(f)) for f in jobs(sweep)]
        rows.append((kill, sig.name, at if reached else "end", code, done, len(orphans)))
    proc = start(sweep, cache, budget)
    _, err = proc.communicate(timeout=1800)
    if proc.returncode != 0:
        problems.append(f"the final resume exited {proc.returncode}: {err.strip()[-500:]}")
    for folder in jobs(sweep):
        summary = json.loads((folder / "summary.json").read_text())
        if numbers(summary) != expected.get(folder.name):
            diff = sorted(
                k
                for k in set(numbers(summary)) | set(expected.get(folder.name, {}))
                if numbers(summary).get(k) != expected.get(folder.name, {}).get(k)
            )
            problems.append(f"{folder.name}: summary differs from the straight run in {diff[:5]}")
        if (bad := check_steps(folder)) is not None:
            problems.append(bad)
    print("| kill | signal | at step | exit code | steps done (job 1, job 2) | orphans |")
    print("|---|---|---|---|---|---|")
    for kill, name, at, code, done, orphans in rows:
        print(f"| {kill + 1} | {name} | {at} | {code} | {', '.join(map(str, done))} | {orphans} |")
    verdict = "FAILED: " + "; ".join(problems) if problems else "all checks passed"
    print(
        f"\n{len(rows)} kills; final summaries bit-identical to a straight run and every step "
        f"recorded exactly once: {verdict}"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
