"""The ranking page: a FastAPI app over a :class:`LabelSession` (groups, order and output file).

Endpoints (JSON): ``GET /api/state?annotator=A`` (progress and the group to rank next),
``POST /api/label`` (one decision: ``rank`` with ``ranking`` best first, ``tie``, ``skip`` or
``flag`` with an optional ``reason``), ``POST /api/undo`` (take back the annotator's last
decision; its group is shown again next). ``GET /`` serves the page (``static/index.html``).

Groups with a due step (a run's online requests) come soonest due first, each due step in the
order strategy's order. Following a run's requests file (``follow``), the session re-reads it on
every request: groups the run asks for later appear, and groups the run has already collected
(``arrived.jsonl`` beside it: a ranking made now would never be used) are no longer shown.
"""

from __future__ import annotations

import threading
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from alignbench.batch import CONVERSATION, plain_prompt, prompt_messages
from alignbench.errors import DataError
from alignbench.label.groups import LabelGroup
from alignbench.label.online import ARRIVED, read_arrived, read_requests
from alignbench.label.order import GroupOrder
from alignbench.label.store import RankingStore


def shown_prompt(group: LabelGroup) -> str:
    """The prompt as a person ranking should read it: a conversation's every message, its
    system prompt (``task.system_prompt`` included) first, one ``Role: content`` line each, as
    the policy was given it; otherwise the prompt's text."""
    if not group.row.get(CONVERSATION):
        return group.prompt
    lines = plain_prompt(prompt_messages(group.row)).split("\n")
    return "\n".join(lines[:-1] if lines[-1] == "Assistant:" else lines)


class LabelSession:
    """What one page works on: the groups, their order, the output file and who is labelling."""

    def __init__(
        self,
        groups: list[LabelGroup],
        store: RankingStore,
        order: GroupOrder,
        annotator: str = "",
        follow: Path | None = None,
    ) -> None:
        self.groups = {g.id: g for g in groups}
        self.store = store
        self.order = order
        self.annotator = annotator
        #: The run's requests file this page follows (None: a fixed groups file), and the ids
        #: of groups the run has already collected (no longer worth a label).
        self.follow = follow
        self.closed: set[str] = set()
        # Groups whose decision was undone come back first, newest undo first.
        self._again: dict[str, list[str]] = {}
        self._mutex = threading.Lock()
        store.load()
        self.sync()
        self.order.ranked(self._rankings())

    def sync(self) -> None:
        """Following a run: take in the groups it requested since, and what it has collected."""
        if self.follow is None:
            return
        with self._mutex:
            fresh = [g for g in read_requests(self.follow) if g.id not in self.groups]
            self.groups.update((g.id, g) for g in fresh)
            self.closed = set(read_arrived(self.follow.parent / ARRIVED))
        if fresh:
            self.order.extend(fresh)

    def _rankings(self) -> list[tuple[LabelGroup, list[int]]]:
        """Every ranking in the file whose group is one of ours (any annotator: all are labels)."""
        return [
            (self.groups[d.group_id], d.record["ranking"])
            for d in self.store.decisions
            if d.decision == "rank" and d.group_id in self.groups
        ]

    def next_group(self, annotator: str) -> LabelGroup | None:
        """The group this annotator should rank next, or None when all are done."""
        done = self.store.done(annotator) | self.closed
        for gid in self._again.get(annotator, []):
            if gid not in done:
                return self.groups[gid]
        # Soonest due first (a stable sort: the strategy's order within a due step).
        ordered = sorted(self.order.ordered(), key=lambda g: (g.due is None, g.due or 0))
        return next((g for g in ordered if g.id not in done), None)

    def state(self, annotator: str) -> dict[str, Any]:
        """Progress and the next group, as the page shows them."""
        self.sync()
        done = self.store.done(annotator) & set(self.groups)
        seconds = self.store.seconds(annotator)
        group = self.next_group(annotator)
        mine = [d for d in self.store.decisions if d.annotator == annotator]
        shown = None
        if group is not None:
            shown = {"id": group.id, "prompt": shown_prompt(group), "responses": group.responses}
            if group.due is not None:
                shown.update(requested_at=group.requested_at, due=group.due)
        return {
            "annotator": annotator,
            "done": len(done),
            # Groups the run collected before this annotator got to them are out of reach.
            "total": len(set(self.groups) - (self.closed - done)),
            "order": self.order.strategy,
            "output": str(self.store.out),
            "mean_seconds": sum(seconds) / len(seconds) if seconds else None,
            "last_seconds": seconds[-1] if seconds else None,
            "can_undo": bool(mine),
            "last": mine[-1].record.get("decision", "rank") if mine else None,
            "follow": self.follow is not None,
            "group": shown,
        }

    def decide(
        self,
        annotator: str,
        gid: str,
        decision: str,
        ranking: list[int] | None,
        seconds: float | None,
        reason: str,
    ) -> dict[str, Any]:
        """Record one decision on group ``gid`` (at once, in the output file)."""
        self.sync()
        with self._mutex:
            group = self.groups.get(gid)
            if group is None:
                raise DataError(f"no group {gid!r} in this page's groups")
            if gid in self.closed:
                raise DataError(f"group {gid!r} was collected by the run already — rank the next")
            if gid in self.store.done(annotator):
                raise DataError(f"group {gid!r} is already labelled by {annotator!r}")
            self.store.append(
                group.prompt, group.responses, gid, annotator, decision, ranking, seconds, reason
            )
            again = self._again.get(annotator, [])
            if gid in again:
                again.remove(gid)
        if decision == "rank":
            self.order.ranked(self._rankings())
        return self.state(annotator)

    def undo(self, annotator: str) -> dict[str, Any]:
        """Take back this annotator's last decision; its group is shown next."""
        with self._mutex:
            undone = self.store.undo(annotator)
            if undone is not None and undone.group_id in self.groups:
                self._again.setdefault(annotator, []).insert(0, undone.group_id)
        state = self.state(annotator)
        state["undone"] = None if undone is None else undone.group_id
        return state


class LabelRequest(BaseModel):
    """One decision sent by the page."""

    annotator: str = ""
    group_id: str
    decision: str = "rank"
    ranking: list[int] | None = None
    seconds: float | None = None
    reason: str = ""


class UndoRequest(BaseModel):
    """Take back the last decision of ``annotator``."""

    annotator: str = ""


def page_html() -> str:
    """The page itself (plain HTML and a small script, shipped as package data)."""
    return resources.files("alignbench.label").joinpath("static/index.html").read_text("utf-8")


def create_app(session: LabelSession) -> FastAPI:
    """The FastAPI app of the ranking page over ``session``."""
    app = FastAPI(title="alignbench ranking page", docs_url=None, redoc_url=None)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page_html()

    @app.get("/api/state")
    def state(annotator: str | None = None) -> dict[str, Any]:
        return session.state(session.annotator if annotator is None else annotator)

    @app.post("/api/label")
    def label(request: LabelRequest) -> dict[str, Any]:
        try:
            return session.decide(
                request.annotator,
                request.group_id,
                request.decision,
                request.ranking,
                request.seconds,
                request.reason,
            )
        except DataError as exc:
            # 409: the page is out of date or sent a bad ranking; nothing was written.
            raise HTTPException(status_code=409, detail=str(exc)) from None

    @app.post("/api/undo")
    def undo(request: UndoRequest) -> dict[str, Any]:
        try:
            return session.undo(request.annotator)
        except DataError as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from None

    return app


def serve(session: LabelSession, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Run the page until interrupted (uvicorn); the output lock is released at the end."""
    import uvicorn

    what = f"{len(session.groups)} groups"
    if session.follow is not None:
        what = f"the groups the run requests in {session.follow} ({len(session.groups)} so far)"
    print(
        f"ranking {what} into {session.store.out} — open "
        f"http://{host}:{port}/ (Ctrl+C to stop; every label is saved at once)",
        flush=True,
    )
    try:
        uvicorn.run(create_app(session), host=host, port=port, log_level="warning")
    finally:
        session.order.wait(timeout=60)
        session.store.release()


def static_dir() -> Path:
    """Where the page's files live (for packaging checks)."""
    return Path(str(resources.files("alignbench.label").joinpath("static")))
