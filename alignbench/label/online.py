"""Online rounds ranked by a person: the requests file a run writes, the labels it reads back.

A job whose feedback source is deferred (``feedback=page`` with ``feedback.rounds``) keeps three
files in ``<job>/feedback/``:

* ``requests.jsonl``: one line per requested group, a groups file the ranking page reads
  (``python -m alignbench.label <job> --follow``): ``id``, ``prompt``, ``responses``, ``sources``,
  ``row``, ``requested_at`` (step t) and ``due`` (step t + ``feedback.delay``). The id is
  ``s<t>-<hash of prompt and responses>``, so a resumed run that requests the same group at the
  same step again finds it there and does not write it twice. Appended by the run (one write per
  round, fsync), never rewritten.
* ``rankings.jsonl``: what the page writes (its ``--out``; the ``feedback=file`` format plus
  ``group_id``). Several annotators' rankings of one group are averaged (mean rank); a skip, a
  tie or a flag (the page's sidecar file) is no ranking. It is not stage 2's rankings file:
  stage 2's cache key hashes that file's content, which this one changes during the run.
* ``arrived.jsonl``: one line per due step at which labels were collected, ``{"step": s,
  "labels": {id: preference or null}}``.

**Due-step semantics.** A group requested at step t is collected at step t + D, never earlier:
a ranking made before then waits in the file until the group is due. At that step the run reads
the rankings file (with ``wait_s`` > 0 it polls it until every due group is ranked or ``wait_s``
seconds have passed; a stop request ends the wait); a group still unranked is dropped and
counted (``feedback/unlabelled``). A collected group is closed for good: a ranking made after
its collection is never used, not even at a later arrival, so what a run trains on is fixed by
the step, not by when someone clicked. A resumed run reaching a due step that was already
collected reads ``arrived.jsonl`` instead of the rankings, and trains on what the first run did.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alignbench import signals
from alignbench.errors import DataError
from alignbench.label.groups import LabelGroup, group_id, parse_group
from alignbench.label.store import append_records, check_ranking
from alignbench.rm.feedback import Group, ranking_to_preference

#: The folder of a job that holds the files of its online rounds, and their names.
FOLDER = "feedback"
REQUESTS = "requests.jsonl"
RANKINGS = "rankings.jsonl"
ARRIVED = "arrived.jsonl"


def request_id(step: int, prompt: str, responses: list[str]) -> str:
    """The id of a group requested at ``step``: the step and a hash of prompt and responses."""
    return f"s{step}-{group_id(prompt, responses)}"


def requests_path(source: Path) -> Path:
    """The requests file ``source`` names (a job folder: ``<job>/feedback/requests.jsonl``)."""
    if source.is_dir():
        inside = source.name == FOLDER or (source / REQUESTS).exists()
        return source / REQUESTS if inside else source / FOLDER / REQUESTS
    return source


def _complete_lines(path: Path) -> list[tuple[int, bytes]]:
    """The file's complete lines, numbered from 1; a last line without a newline is being
    written right now (by another process) and is read next time. Nothing if there is no file."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    data = data[: data.rfind(b"\n") + 1]
    return [(n, raw) for n, raw in enumerate(data.splitlines(), start=1) if raw.strip()]


def _json_line(path: Path, number: int, raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DataError(f"{path}:{number}: not a valid JSON line — fix or remove it") from None


def read_requests(path: Path) -> list[LabelGroup]:
    """The groups of a requests file, oldest first (none while the file does not exist yet)."""
    groups: dict[str, LabelGroup] = {}
    for number, raw in _complete_lines(path):
        group = parse_group(_json_line(path, number, raw), f"{path}:{number}")
        groups.setdefault(group.id, group)
    return list(groups.values())


def read_arrived(path: Path) -> dict[str, list[float] | None]:
    """What was collected so far: each closed group's preference (None: it was unlabelled)."""
    closed: dict[str, list[float] | None] = {}
    for number, raw in _complete_lines(path):
        item = _json_line(path, number, raw)
        labels = item.get("labels") if isinstance(item, dict) else None
        if not isinstance(labels, dict):
            raise DataError(f"{path}:{number}: expected {{'step': ..., 'labels': {{id: ...}}}}")
        for gid, preference in labels.items():
            closed.setdefault(gid, preference)  # the first collection is the one that counted
    return closed


class OnlineRequests:
    """The files through which one job asks people for rankings and reads them back."""

    def __init__(self, folder: Path, rankings: Path | None = None) -> None:
        self.folder = folder
        self.requests = folder / REQUESTS
        self.rankings = rankings if rankings is not None else folder / RANKINGS
        self.arrived = folder / ARRIVED

    @classmethod
    def of_job(cls, job: Path, rankings: Path | None = None) -> OnlineRequests:
        """The files of the job in folder ``job`` (``<job>/feedback/``, created here)."""
        folder = job / FOLDER
        folder.mkdir(exist_ok=True)
        return cls(folder, rankings)

    def submit(self, groups: list[Group], step: int, due: int) -> int:
        """Append the groups requested at ``step`` (due at step ``due``) that the file does not
        hold yet; each group's id goes into ``extras["id"]``. Returns how many were written."""
        known = {g.id for g in read_requests(self.requests)}
        records = []
        for group in groups:
            prompt = str(group.row["prompt"])
            gid = request_id(step, prompt, group.responses)
            group.extras["id"] = gid
            if gid in known:  # a resumed run, or the same prompt and responses twice
                continue
            known.add(gid)
            record: dict[str, Any] = {"id": gid, "prompt": prompt, "responses": group.responses}
            if group.extras.get("sources"):
                record["sources"] = group.extras["sources"]
            records.append({**record, "row": group.row, "requested_at": step, "due": due})
        append_records(self.requests, records)
        return len(records)

    def rankings_by_id(self) -> dict[str, list[tuple[str, list[str], list[int]]]]:
        """Every complete ranking of the rankings file, by group id: (``file:line``, responses,
        ranking best first)."""
        found: dict[str, list[tuple[str, list[str], list[int]]]] = {}
        for number, raw in _complete_lines(self.rankings):
            where = f"{self.rankings}:{number}"
            item = _json_line(self.rankings, number, raw)
            responses = item.get("responses") if isinstance(item, dict) else None
            if not isinstance(responses, list) or not isinstance(item.get("prompt"), str):
                raise DataError(f"{where}: needs 'prompt', 'responses' and 'ranking'")
            try:
                ranking = check_ranking(item.get("ranking"), len(responses))
            except DataError as exc:
                raise DataError(f"{where}: {exc}") from None
            gid = item.get("group_id")
            gid = str(gid) if gid is not None else group_id(item["prompt"], responses)
            found.setdefault(gid, []).append((where, responses, ranking))
        return found

    def labels(self, groups: dict[str, Group]) -> dict[str, list[float]]:
        """The preference of each of ``groups`` (by id) that is ranked in the rankings file: the
        mean over its rankings (mean rank, when several annotators ranked it)."""
        rankings = self.rankings_by_id()
        out = {}
        for gid, group in groups.items():
            made = rankings.get(gid, [])
            for where, responses, _ in made:
                if responses != group.responses:
                    raise DataError(
                        f"{where}: group {gid!r} has other responses than the run requested — "
                        "rank the groups of the requests file, unedited"
                    )
            if made:
                preferences = [ranking_to_preference(ranking) for _, _, ranking in made]
                out[gid] = [sum(p) / len(made) for p in zip(*preferences, strict=True)]
        return out

    def collect(
        self,
        groups: list[Group],
        step: int,
        wait_s: float = 0.0,
        poll_s: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> list[list[float] | None]:
        """At ``step``, the due groups' labels (None: unlabelled), waiting up to ``wait_s``
        seconds for missing ones (reading the file every ``poll_s``); each group is closed for
        good in ``arrived.jsonl`` (a group closed before, by the run a resumed one continues,
        keeps what it was closed with)."""
        closed = read_arrived(self.arrived)
        wanted = {g.extras["id"]: g for g in groups if g.extras["id"] not in closed}
        deadline = clock() + wait_s
        found = self.labels(wanted)
        while len(found) < len(wanted) and clock() < deadline and signals.requested() is None:
            sleep(max(0.0, min(poll_s, deadline - clock())))
            found = self.labels(wanted)
        outcome = {gid: found.get(gid) for gid in wanted}
        if outcome:
            append_records(self.arrived, [{"step": step, "labels": outcome}])
        closed.update(outcome)
        return [closed[g.extras["id"]] for g in groups]
