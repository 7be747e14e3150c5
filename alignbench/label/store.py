"""The labelling page's output: the rankings JSONL (what ``feedback=file`` reads) and its sidecar.

* ``rankings.jsonl`` holds only complete rankings, one per line, in exactly the format of
  ``feedback=file`` (``prompt``, ``responses``, ``ranking`` best first) plus keys it ignores:
  ``group_id``, ``annotator``, ``seconds`` (time spent on the label) and ``labelled_at``.
* ``rankings.unranked.jsonl`` holds the decisions that are not a ranking: ``skip``, ``tie`` (all
  responses equally good: no pair to train on) and ``flag`` (the group is wrong or unsafe, with
  an optional ``reason``). They count as done, so resuming does not show them again.

Every decision is appended at once as one ``write`` of one whole line, then fsync'ed: a crash or
a closed tab loses at most the label being made. A line cut short by a crash (no final newline)
is dropped when the file is opened again, with a warning. **Undo** removes the annotator's most
recent decision by rewriting that file atomically (a temporary file, fsync, rename), so the
rankings file never holds retractions that a reader would have to understand. One page at a time
per output: a lock file (``rankings.jsonl.lock``, held while the page runs) refuses a second one.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from alignbench.errors import ConfigError, DataError
from alignbench.label.groups import group_id

#: Decisions that are not rankings (kept in the sidecar file).
UNRANKED = ("skip", "tie", "flag")


def unranked_path(out: Path) -> Path:
    """The sidecar of ``out`` that holds skips, ties and flags."""
    return out.with_name(f"{out.stem}.unranked{out.suffix or '.jsonl'}")


def check_ranking(ranking: Any, k: int) -> list[int]:
    """``ranking`` if it lists every response index 0..k-1 once (best first); else DataError."""
    if (
        not isinstance(ranking, list)
        or not all(type(i) is int for i in ranking)
        or sorted(ranking) != list(range(k))
    ):
        raise DataError(
            f"'ranking' must list every response index once (a permutation of 0..{k - 1})"
        )
    return ranking


@dataclass
class Decision:
    """One line of the output: where it is, what it says, and for which group."""

    path: Path
    record: dict[str, Any]

    @property
    def group_id(self) -> str:
        """The group's id (a hash of prompt and responses for a line written by hand)."""
        gid = self.record.get("group_id")
        if gid is not None:
            return str(gid)
        return group_id(self.record["prompt"], self.record["responses"])

    @property
    def annotator(self) -> str:
        """Who made it ('' when the line does not say)."""
        return str(self.record.get("annotator", ""))

    @property
    def decision(self) -> str:
        """``rank``, ``skip``, ``tie`` or ``flag``."""
        return str(self.record.get("decision", "rank"))


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")


def append_records(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Append JSON lines with one write on an O_APPEND descriptor, then fsync (a reader sees
    whole lines, or a cut last line it leaves for later)."""
    if not records:
        return
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


def _rewrite(path: Path, lines: list[str]) -> None:
    """Replace ``path`` by ``lines`` atomically: temporary file, fsync, rename, fsync the folder."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.writelines(line + "\n" for line in lines)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


class RankingStore:
    """The rankings file and its sidecar, locked for one page, read back on resume."""

    def __init__(self, out: Path, warn: TextIO | None = None) -> None:
        self.out = out
        self.sidecar = unranked_path(out)
        self.lock_path = out.with_name(f"{out.name}.lock")
        self._mutex = threading.Lock()
        self._lock_handle: Any = None
        self._warn = warn or sys.stderr
        if out.is_dir():
            raise ConfigError(f"--out {out} is a folder — give the rankings file to write")
        if not out.parent.is_dir():
            raise ConfigError(f"--out {out}: folder {out.parent} does not exist — create it first")
        self.decisions: list[Decision] = []

    # -- lock -------------------------------------------------------------------------------

    def acquire(self, owner: str = "") -> None:
        """Take the output's lock for this process; ConfigError if another page holds it."""
        handle = open(self.lock_path, "a+")  # noqa: SIM115 — held open while the page runs
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ConfigError(
                f"{self.out} is already open in another labelling page ({holder}) — close it, or "
                "give another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}{', ' + owner if owner else ''}")
        handle.flush()
        self._lock_handle = handle

    def release(self) -> None:
        """Let the lock go (the process ending does that too)."""
        if self._lock_handle is not None:
            fcntl.flock(self._lock_handle, fcntl.LOCK_UN)
            self._lock_handle.close()
            self._lock_handle = None

    # -- reading back -----------------------------------------------------------------------

    def load(self) -> list[Decision]:
        """Read both files (resume): every decision, in the order they were made."""
        decisions: list[Decision] = []
        for path in (self.out, self.sidecar):
            if path.exists():
                decisions += self._read(path)
        # Oldest first across both files; a hand-written line without a time sorts first.
        order = {id(d): i for i, d in enumerate(decisions)}
        decisions.sort(key=lambda d: (str(d.record.get("labelled_at", "")), order[id(d)]))
        self.decisions = decisions
        return decisions

    def _read(self, path: Path) -> list[Decision]:
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            # The last line was being written when the process died: that label is lost.
            cut = data.rfind(b"\n") + 1
            print(
                f"{path}: dropped an unfinished last line ({len(data) - cut} bytes), cut by a "
                "crash",
                file=self._warn,
            )
            _rewrite(path, data[:cut].decode("utf-8", errors="replace").splitlines())
            data = data[:cut]
        out = []
        for number, raw in enumerate(data.splitlines(), start=1):
            where = f"{path}:{number}"
            try:
                item = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise DataError(f"{where}: not a valid JSON line — fix or remove it") from None
            if not isinstance(item, dict):
                raise DataError(f"{where}: expected a JSON object")
            responses = item.get("responses")
            if not isinstance(item.get("prompt"), str) or not isinstance(responses, list):
                raise DataError(f"{where}: needs 'prompt' and 'responses'")
            if path == self.out:
                try:
                    check_ranking(item.get("ranking"), len(responses))
                except DataError as exc:
                    raise DataError(f"{where}: {exc}") from None
            elif item.get("decision") not in UNRANKED:
                raise DataError(f"{where}: 'decision' must be one of {', '.join(UNRANKED)}")
            out.append(Decision(path, item))
        return out

    def done(self, annotator: str) -> set[str]:
        """Ids of the groups this annotator has decided (ranked, skipped, tied or flagged)."""
        return {d.group_id for d in self.decisions if d.annotator == annotator}

    def seconds(self, annotator: str) -> list[float]:
        """Time spent on each of this annotator's decisions, oldest first."""
        return [
            float(d.record["seconds"])
            for d in self.decisions
            if d.annotator == annotator and isinstance(d.record.get("seconds"), int | float)
        ]

    # -- writing ----------------------------------------------------------------------------

    def append(
        self,
        prompt: str,
        responses: list[str],
        gid: str,
        annotator: str,
        decision: str,
        ranking: list[int] | None = None,
        seconds: float | None = None,
        reason: str = "",
    ) -> Decision:
        """Record one decision at once (one line, one write, fsync)."""
        record: dict[str, Any] = {"prompt": prompt, "responses": responses}
        if decision == "rank":
            record["ranking"] = check_ranking(ranking, len(responses))
            path = self.out
        elif decision in UNRANKED:
            record["decision"] = decision
            if reason:
                record["reason"] = reason
            path = self.sidecar
        else:
            raise DataError(f"decision {decision!r} — use rank, {', '.join(UNRANKED)}")
        record.update(group_id=gid, annotator=annotator, labelled_at=_now())
        if seconds is not None:
            record["seconds"] = round(float(seconds), 3)
        with self._mutex:
            append_records(path, [record])
            made = Decision(path, record)
            self.decisions.append(made)
        return made

    def undo(self, annotator: str) -> Decision | None:
        """Remove this annotator's most recent decision (atomic rewrite); None if there is none."""
        with self._mutex:
            mine = [d for d in self.decisions if d.annotator == annotator]
            if not mine:
                return None
            last = mine[-1]
            line = json.dumps(last.record, ensure_ascii=False)
            lines = last.path.read_text(encoding="utf-8").splitlines()
            # The newest copy of that exact line (a hand-edited file may repeat a line).
            for index in range(len(lines) - 1, -1, -1):
                if lines[index] == line or _same(lines[index], last.record):
                    del lines[index]
                    break
            else:
                raise DataError(
                    f"{last.path}: the decision to undo is no longer in the file — was it edited "
                    "while the page ran?"
                )
            _rewrite(last.path, lines)
            self.decisions.remove(last)
            return last


def _same(line: str, record: dict[str, Any]) -> bool:
    try:
        return json.loads(line) == record
    except json.JSONDecodeError:
        return False
