"""Stopping cleanly: SIGTERM and Ctrl-C become a request that every part of a job honours.

One mechanism for every place a job can be stopped:

* The first SIGTERM / SIGINT sets a flag. The training loop checks it after each step (then
  saves a checkpoint and stops), stage 1 checks it after each batch (its cache folder appears
  only when complete, so a stopped stage leaves nothing half-written), and a sweep worker that
  has the flag starts no further job. A second signal stops at once (``KeyboardInterrupt``).
* The command's own process forwards the signal to its child processes, the workers of a
  parallel launcher (joblib), so that ``kill <pid>`` of a sweep reaches every job: each worker
  checkpoints and stops, and the command exits 128 + the signal (130 for Ctrl-C, 143 for
  SIGTERM) once they have.
* A worker whose parent died (``kill -9`` of the sweep) notices it at the next check and stops
  the same way, instead of running on as an orphan that keeps writing while a re-run starts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alignbench.errors import Interrupted

#: The process id of the ``python -m alignbench`` command (inherited by its workers).
MAIN_PID_ENV = "ALIGNBENCH_MAIN_PID"
SIGNALS = (signal.SIGTERM, signal.SIGINT)

_requested: int | None = None
_since = 0.0  # when the request came (time.monotonic)
_parent: int | None = None  # a worker's parent when the handlers were installed
_forward = False
_previous: dict[int, Any] = {}


def _children(pid: int) -> list[int]:
    """Child processes of ``pid`` (Linux /proc; empty where there is none)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
            cmdline = (entry.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        # Not joblib's resource tracker: it has no job to stop and is needed to clean up.
        if int(fields[1]) == pid and b"resource_tracker" not in cmdline:
            found.append(int(entry.parent.name))
    return found


def _handle(signum: int, frame: Any) -> None:
    """First signal: request a stop (and pass it on to the workers); second: stop at once."""
    global _requested, _since
    if _requested is not None:
        # Ctrl-C in a terminal reaches a worker twice (from the terminal and forwarded by the
        # command): the same signal within a second is one request, not an insistence.
        if signum == _requested and time.monotonic() - _since < 1.0:
            return
        raise KeyboardInterrupt
    _requested, _since = signum, time.monotonic()
    if _forward:
        for child in _children(os.getpid()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child, signum)


_busy = 0  # jobs this process is running right now (see :func:`busy`)
_watchdog: threading.Thread | None = None


@contextlib.contextmanager
def busy() -> Iterator[None]:
    """Mark a job as running in this process (a worker whose command died exits when idle)."""
    global _busy
    _busy += 1
    try:
        yield
    finally:
        _busy -= 1


def _watch() -> None:
    """A sweep worker's watchdog: once its command has died, exit as soon as no job runs.

    A running job notices by itself (it checkpoints and stops at its next step); an idle
    worker would otherwise wait for a next job forever, as an orphan.
    """
    while True:
        time.sleep(0.5)
        if _busy == 0 and orphaned():
            os._exit(exit_code(_requested or signal.SIGTERM))


def install(forward: bool = False) -> bool:
    """Handle SIGTERM / SIGINT in this process (main thread only); returns whether it did.

    ``forward``: also send them to this process's children (the command's own process does,
    so that the workers of a parallel sweep stop with it). Idempotent.
    """
    global _parent, _forward
    if threading.current_thread() is not threading.main_thread():
        return False
    _forward = _forward or forward
    if not _previous:
        _parent = os.getppid()
        for sig in SIGNALS:
            _previous[sig] = signal.signal(sig, _handle)
    global _watchdog
    if is_worker() and _watchdog is None:
        _watchdog = threading.Thread(target=_watch, name="alignbench-watchdog", daemon=True)
        _watchdog.start()
    return True


def uninstall() -> None:
    """Put back the handlers :func:`install` replaced and forget any request."""
    global _requested, _forward, _parent
    for sig, handler in _previous.items():
        signal.signal(sig, handler)
    _previous.clear()
    _requested, _forward, _parent = None, False, None


def handlers_installed() -> bool:
    """Whether :func:`install` replaced this process's SIGTERM / SIGINT handlers."""
    return bool(_previous)


def requested() -> int | None:
    """The signal that asked this process to stop, or None.

    A sweep worker whose parent has died counts as asked to stop by SIGTERM.
    """
    global _requested
    if _requested is None and orphaned():
        _requested = signal.SIGTERM
    return _requested


def orphaned() -> bool:
    """Whether this is a sweep worker whose command has died (``kill -9``): nobody will ever
    collect its results or send it another job, so it should exit once its job is saved."""
    return is_worker() and _parent is not None and os.getppid() != _parent


def is_worker() -> bool:
    """Whether this process is a worker of a parallel sweep (not the command's own process)."""
    main = os.environ.get(MAIN_PID_ENV)
    return main is not None and main != str(os.getpid())


def check(where: str) -> None:
    """Raise :class:`Interrupted` if a stop was requested (``where``: what was stopped)."""
    sig = requested()
    if sig is not None:
        raise Interrupted(f"stopped by signal {sig} {where}", signum=sig)


def exit_code(signum: int | None) -> int:
    """The shell's convention: 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + int(signum or signal.SIGINT)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Handle signals for the duration of a block, unless someone already does (library use:
    a job run from Python stops cleanly too; the command installs them for its whole life)."""
    mine = not _previous and install()
    try:
        yield
    finally:
        if mine:
            uninstall()
