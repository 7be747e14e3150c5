"""Online rounds ranked by a person on the ranking page (``feedback=page``), with feedback.delay:
the requests file, due-step collection, unlabelled groups, resume, the following page, and one
tiny job labelled through the page's API while it runs."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from alignbench import ConfigError, DataError, Group, OnlineRequests, ranking_to_preference
from alignbench.label.__main__ import main
from alignbench.label.online import read_arrived, read_requests, request_id
from alignbench.label.order import GroupOrder
from alignbench.label.server import LabelSession, create_app
from alignbench.label.store import RankingStore
from alignbench.registry import build_registry


def _group(prompt: str, responses: tuple[str, ...] = ("red", "blue", "i do not know")) -> Group:
    return Group({"prompt": prompt}, list(responses), extras={"sources": ["policy"] * 3})


def _rank(path: Path, group: Group, ranking: list[int], annotator: str = "ann") -> None:
    """A line as the page writes it (only the keys the run reads matter)."""
    line = {
        "prompt": group.row["prompt"],
        "responses": group.responses,
        "ranking": ranking,
        "group_id": group.extras["id"],
        "annotator": annotator,
    }
    with open(path, "a") as handle:
        handle.write(json.dumps(line) + "\n")


# -- the requests file -------------------------------------------------------------------------


def test_submit_appends_each_group_once_with_its_steps(tmp_path: Path) -> None:
    """Each group is one line with a stable id, requested_at and due; submitting the same round
    again (a resumed run) writes nothing; the same group at another step is a new request."""
    exchange = OnlineRequests.of_job(tmp_path)
    groups = [_group("q1 ?"), _group("q2 ?")]
    assert exchange.submit(groups, step=3, due=5) == 2
    again = [_group("q1 ?"), _group("q2 ?")]
    assert exchange.submit(again, step=3, due=5) == 0
    assert [g.extras["id"] for g in again] == [g.extras["id"] for g in groups]
    assert groups[0].extras["id"] == request_id(3, "q1 ?", groups[0].responses)
    assert exchange.submit([_group("q1 ?")], step=4, due=6) == 1
    lines = (tmp_path / "feedback" / "requests.jsonl").read_text().splitlines()
    assert len(lines) == 3
    requested = read_requests(exchange.requests)  # the page's reading of the same file
    assert [(g.prompt, g.requested_at, g.due) for g in requested] == [
        ("q1 ?", 3, 5),
        ("q2 ?", 3, 5),
        ("q1 ?", 4, 6),
    ]
    assert requested[0].sources == ["policy"] * 3


def test_a_line_being_written_is_left_for_the_next_read(tmp_path: Path) -> None:
    """A last line without its newline (another process is writing it) is not read yet."""
    exchange = OnlineRequests.of_job(tmp_path)
    group = _group("q1 ?")
    exchange.submit([group], 0, 1)
    _rank(exchange.rankings, group, [2, 0, 1])
    whole = exchange.rankings.read_text()
    exchange.rankings.write_text(whole + whole[:20])
    assert list(exchange.rankings_by_id()) == [group.extras["id"]]


# -- collecting at the due step ----------------------------------------------------------------


def test_collect_gives_due_labels_and_closes_groups_for_good(tmp_path: Path) -> None:
    """Labels are read only for the groups collected; an unlabelled group is None, recorded in
    arrived.jsonl, and a ranking made after its collection is never used (nor by a resume)."""
    exchange = OnlineRequests.of_job(tmp_path)
    early, later = _group("q1 ?"), _group("q2 ?")
    exchange.submit([early], 1, 3)
    exchange.submit([later], 2, 4)
    _rank(exchange.rankings, later, [0, 1, 2])  # ranked before its due step: waits for step 4
    assert exchange.collect([early], 3) == [None]
    assert read_arrived(exchange.arrived) == {early.extras["id"]: None}
    _rank(exchange.rankings, early, [1, 0, 2])  # too late: step 3 has collected it
    assert exchange.collect([later], 4) == [ranking_to_preference([0, 1, 2])]
    assert exchange.collect([early, later], 4) == [None, ranking_to_preference([0, 1, 2])]
    steps = [json.loads(x)["step"] for x in exchange.arrived.read_text().splitlines()]
    assert steps == [3, 4]  # collecting closed groups again writes nothing new


def test_several_annotators_are_averaged(tmp_path: Path) -> None:
    exchange = OnlineRequests.of_job(tmp_path)
    group = _group("q1 ?")
    exchange.submit([group], 0, 0)
    _rank(exchange.rankings, group, [0, 1, 2], "a")
    _rank(exchange.rankings, group, [1, 0, 2], "b")
    assert exchange.collect([group], 0) == [[1.5, 1.5, 0.0]]


def test_collect_waits_up_to_wait_s_polling(tmp_path: Path) -> None:
    """wait_s > 0: the file is read every poll_s until every due group is ranked (here at the
    second poll), or until wait_s has passed (then the group is dropped)."""
    exchange = OnlineRequests.of_job(tmp_path)
    first, second = _group("q1 ?"), _group("q2 ?")
    exchange.submit([first, second], 0, 2)
    now = [0.0]
    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        now[0] += seconds
        if len(naps) == 2:  # the person ranks the group while the run waits
            _rank(exchange.rankings, first, [0, 1, 2])

    got = exchange.collect([first], 2, wait_s=10, poll_s=3, sleep=sleep, clock=lambda: now[0])
    assert got == [ranking_to_preference([0, 1, 2])] and naps == [3, 3]
    naps.clear()
    got = exchange.collect([second], 2, wait_s=10, poll_s=3, sleep=sleep, clock=lambda: now[0])
    assert got == [None] and naps == [3, 3, 3, 1]  # 10 s, then dropped


def test_a_ranking_of_other_responses_is_one_line(tmp_path: Path) -> None:
    exchange = OnlineRequests.of_job(tmp_path)
    group = _group("q1 ?")
    exchange.submit([group], 0, 0)
    edited = _group("q1 ?", ("red", "green", "i do not know"))
    edited.extras["id"] = group.extras["id"]
    _rank(exchange.rankings, edited, [0, 1, 2])
    with pytest.raises(DataError, match=r"rankings.jsonl:1: group 's0-.*' has other responses"):
        exchange.collect([group], 0)


# -- the reward model: submit at t, collect at t + delay -----------------------------------------


class _Deferred:
    """A deferred source that records what it is asked and answers from a dict."""

    deferred = True

    def __init__(self, answers: dict[str, list[float] | None]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, int, list[str]]] = []

    def submit(self, groups: list[Group], step: int, due: int) -> None:
        self.calls.append(("submit", step, [g.row["prompt"] for g in groups]))

    def collect(self, groups: list[Group], step: int) -> list[list[float] | None]:
        self.calls.append(("collect", step, [g.row["prompt"] for g in groups]))
        return [self.answers[g.row["prompt"]] for g in groups]


@pytest.fixture(scope="module")
def reward_model_parts():
    import torch

    from alignbench.config import ModelConfig
    from alignbench.models import ScalarHeadModel, build_model, build_tokenizer
    from alignbench_plugins.facts import FactsConfig, FactsTask

    task = FactsTask(FactsConfig(name="facts", num_entities=40))
    tokenizer = build_tokenizer(task.vocabulary())
    torch.manual_seed(0)
    config = ModelConfig(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2)
    return task, tokenizer, ScalarHeadModel(build_model(config, tokenizer))


def test_reward_model_collects_only_at_the_due_step_and_counts_unlabelled(
    reward_model_parts,
) -> None:
    """Groups requested at step 2 with delay 3 are collected at step 5, not before; an
    unlabelled one is dropped and counted (feedback/unlabelled); the labelled one is trained on."""
    from alignbench import RewardModel
    from alignbench.config import FeedbackConfig, RMStageConfig

    task, tokenizer, network = reward_model_parts
    rows = task.splits["rl"].to_list()[:2]
    source = _Deferred({rows[0]["prompt"]: [1.0, 0.0], rows[1]["prompt"]: None})
    feedback = FeedbackConfig(name="page", rounds=1, delay=3)
    model = RewardModel(
        network,
        tokenizer,
        RMStageConfig(epochs=1, patience=0),
        task=task,
        source=source,  # type: ignore[arg-type]
        feedback=feedback,
    )
    fresh = [Group(row, [row["answer"], "i do not know"]) for row in rows]
    for group in fresh:
        group.extras["requested_at"] = 2
    model.pending.append((5, fresh))
    assert model.arrive(3) == {} and model.arrive(4) == {} and source.calls == []
    stats = model.arrive(5)
    assert source.calls == [("collect", 5, [r["prompt"] for r in rows])]
    assert stats["feedback/unlabelled"] == 1.0 and stats["feedback/label_age"] == 3.0
    assert stats["feedback/groups"] == 1.0  # trained on the one labelled group
    assert [g.extras["arrived_at"] for g in model.groups] == [5]
    assert model.groups[0].preference == [1.0, 0.0] and model.pending == []


def test_simulated_sources_are_not_deferred() -> None:
    """The default stays: simulated and file sources rank at once, with no online-only keys."""
    registry = build_registry()
    for name in ("simulated", "file"):
        cls = registry.get("feedback", name).cls
        assert cls.deferred is False and cls.online_keys == ()
    assert registry.get("feedback", "page").cls.deferred is True


# -- validation, before any folder or model ----------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], r"feedback=page with feedback.rounds=0 — the page ranks online rounds"),
        (["feedback.rounds=1", "feedback.selection=uncertainty"], "selection=uncertainty needs"),
        (["feedback.rounds=1", "feedback.wait_s=-1"], r"feedback.wait_s=-1.0 — must be"),
        (["feedback.rounds=1", "feedback.poll_s=0"], r"feedback.poll_s=0.0 — must be"),
        (["feedback.rounds=1", "feedback.rankings=r.jsonl"], "is stage 2's feedback.path"),
        # Requested and collected at once: every group would be dropped unlabelled, silently.
        (["feedback.rounds=1"], r"feedback.delay=0 and feedback.wait_s=0 — no one can rank"),
    ],
)
def test_page_options_are_one_line_before_anything_runs(overrides, message) -> None:
    from alignbench.app import validate

    args = ["reward=rm", "feedback=page", "feedback.path=r.jsonl", *overrides]
    with pytest.raises(ConfigError, match=message) as info:
        validate(build_registry(), args)
    assert "\n" not in str(info.value)


def test_page_needs_a_stage_2_rankings_file() -> None:
    from alignbench.app import validate

    with pytest.raises(ConfigError, match="feedback=page needs feedback.path"):
        validate(build_registry(), ["reward=rm", "feedback=page", "feedback.rounds=1"])


def test_page_rounds_run_on_several_processes_with_a_bounded_wait(monkeypatch) -> None:
    """Online rounds on several processes: rank 0 asks the page and the others wait for it, so
    the start-up check passes; a wait as long as the waiting group's timeout is refused, one
    line."""
    from alignbench import distributed
    from alignbench.app import validate
    from alignbench.job import check_data_parallel
    from tests.conftest import compose

    registry = build_registry()
    parallel = next(
        n
        for n in registry.names("algo")
        if getattr(registry.get("algo", n).cls, "data_parallel", False)
    )
    page = ["reward=rm", "feedback=page", "feedback.path=r.jsonl", "feedback.rounds=1"]
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    cfg = compose([f"algo={parallel}", *page, "algo.prompts_per_step=4"], registry)
    check_data_parallel(registry, cfg)
    # The waiting group's timeout (a day by default; here an hour) bounds the wait.
    monkeypatch.setenv(distributed.WAIT_TIMEOUT_ENV, "3600")
    validate(registry, [*page, "feedback.wait_s=1800"])  # beyond NCCL's ten minutes: fine
    with pytest.raises(ConfigError, match=r"feedback.wait_s=3600 on 2 processes") as info:
        validate(registry, [*page, "feedback.wait_s=3600"])
    assert "\n" not in str(info.value)
    assert "at most 3600 s (ALIGNBENCH_WAIT_TIMEOUT_S)" in str(info.value)


# -- the page following a run ------------------------------------------------------------------


def test_following_page_picks_up_requests_soonest_due_first_and_hides_collected(
    tmp_path: Path,
) -> None:
    exchange = OnlineRequests.of_job(tmp_path)
    store = RankingStore(exchange.rankings)
    session = LabelSession([], store, GroupOrder([], "random"), "ann", exchange.requests)
    client = TestClient(create_app(session))
    state = client.get("/api/state").json()
    assert state["group"] is None and state["follow"] and state["total"] == 0
    late = [_group(f"late {i} ?") for i in range(3)]
    exchange.submit(late, step=4, due=9)
    soon = [_group("soon ?")]
    exchange.submit(soon, step=5, due=6)  # requested later, due sooner
    state = client.get("/api/state").json()
    assert state["total"] == 4
    assert state["group"]["prompt"] == "soon ?"
    assert (state["group"]["requested_at"], state["group"]["due"]) == (5, 6)
    # The run collects the soon-due group before anyone ranked it: it is no longer shown.
    exchange.collect(soon, 6)
    state = client.get("/api/state").json()
    assert state["group"]["due"] == 9 and state["total"] == 3
    refused = client.post(
        "/api/label",
        json={"annotator": "ann", "group_id": soon[0].extras["id"], "ranking": [0, 1, 2]},
    )
    assert refused.status_code == 409 and "collected by the run" in refused.json()["detail"]
    shown = {state["group"]["prompt"]}
    for _ in range(2):
        state = client.post(
            "/api/label",
            json={"annotator": "ann", "group_id": state["group"]["id"], "ranking": [2, 1, 0]},
        ).json()
        shown.add(state["group"]["prompt"])
    assert shown == {g.row["prompt"] for g in late}
    assert exchange.collect(late, 9).count(ranking_to_preference([2, 1, 0])) == 2


def test_follow_command_line(tmp_path: Path, capsys) -> None:
    """--follow on a folder without a page job is one line; without --follow, --out is needed."""
    assert main([str(tmp_path), "--follow"]) == 2
    assert "no feedback folder of a job with feedback=page" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path / "groups.jsonl")])
    assert "required: --out" in capsys.readouterr().err


def test_follow_command_serves_the_jobs_requests(tmp_path: Path, monkeypatch) -> None:
    """``python -m alignbench.label <job> --follow`` follows <job>/feedback/requests.jsonl and
    writes, by default, <job>/feedback/rankings.jsonl (the file the run reads)."""
    import alignbench.label.server as server

    exchange = OnlineRequests.of_job(tmp_path)
    exchange.submit([_group("q1 ?")], 2, 4)
    served: list[LabelSession] = []
    monkeypatch.setattr(server, "serve", lambda session, host, port: served.append(session))
    assert main([str(tmp_path), "--follow", "--port", "8799"]) == 0
    [session] = served
    session.store.release()
    assert session.follow == exchange.requests and session.store.out == exchange.rankings
    assert [g.due for g in session.groups.values()] == [4]


def test_follow_refuses_to_write_where_the_job_does_not_read(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """A job with feedback.rankings=<file> reads its online rankings there: a page following it
    with the default --out (<job>/feedback/rankings.jsonl) would rank for nothing, every group
    dropped as unlabelled; it is one line naming the file instead."""
    import alignbench.label.server as server

    monkeypatch.setattr(server, "serve", lambda session, host, port: session.store.release())
    OnlineRequests.of_job(tmp_path).submit([_group("q1 ?")], 2, 4)
    (tmp_path / ".hydra").mkdir()
    record = {"feedback": {"name": "page", "rankings": "online.jsonl"}}
    (tmp_path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(record))
    assert main([str(tmp_path), "--follow", "--port", "8799"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "feedback.rankings=online.jsonl — pass --out" in err[0]


@pytest.mark.parametrize("strategy", ["random", "file"])
def test_new_groups_join_the_order_after_the_others(tmp_path: Path, strategy: str) -> None:
    from alignbench.label.groups import LabelGroup

    def made(names: str) -> list[LabelGroup]:
        return [LabelGroup(n, f"{n} ?", ["a", "b"]) for n in names]

    order = GroupOrder(made("abc"), strategy, seed=1)
    before = [g.id for g in order.ordered()]
    order.extend(made("de"))
    after = [g.id for g in order.ordered()]
    assert after[:3] == before and sorted(after[3:]) == ["d", "e"]
    if strategy == "file":
        assert after == list("abcde")


# -- a tiny job labelled through the page while it runs ------------------------------------------


RM = ["reward=rm", "feedback.labels=6", "stage.rm.epochs=2", "feedback.k=2", "algo=rrhf"]


def _stage_2_rankings(path: Path) -> None:
    """A small rankings file for stage 2 (feedback.path), from the task's own RL prompts."""
    from alignbench_plugins.facts import FactsConfig, FactsTask

    task = FactsTask(FactsConfig(name="facts", num_entities=40))
    lines = [
        {"prompt": row["prompt"], "responses": [row["answer"], "i do not know"], "ranking": [0, 1]}
        for row in task.splits["rl"].to_list()[:8]
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


@pytest.mark.slow
def test_a_person_on_the_page_labels_online_rounds_that_arrive_at_t_plus_delay(
    tiny_job, tmp_path: Path, monkeypatch
) -> None:
    """rounds=1 over 6 steps requests groups at step 3, due at step 5 (delay=2). The page ranks
    half of them at once (they must not arrive before step 5) and the rest only once the run is
    waiting at step 5 (wait_s): all arrive at step 5 and retrain the reward model."""
    import alignbench.rm.model as model_module

    rankings = tmp_path / "stage2.jsonl"
    _stage_2_rankings(rankings)
    trainings: list[list[tuple[int, int, str, list[float]]]] = []
    original = model_module.retrain_reward_model

    def recording(model, tokenizer, groups, rm_cfg):
        trainings.append(
            [
                (g.extras["requested_at"], g.extras["arrived_at"], g.extras["id"], g.preference)
                for g in groups
                if "requested_at" in g.extras
            ]
        )
        return original(model, tokenizer, groups, rm_cfg)

    monkeypatch.setattr(model_module, "retrain_reward_model", recording)
    waiting = threading.Event()
    original_labels = OnlineRequests.labels

    def labels(self, groups):
        if groups:
            waiting.set()  # the run reads the rankings at a due step
        return original_labels(self, groups)

    monkeypatch.setattr(OnlineRequests, "labels", labels)
    folder = tmp_path / "out" / "feedback"
    made: dict[str, list[int]] = {}
    problems: list[BaseException] = []

    def person() -> None:
        try:
            deadline = time.monotonic() + 120
            while not (folder / "requests.jsonl").exists():
                assert time.monotonic() < deadline, "no requests came"
                time.sleep(0.05)
            store = RankingStore(folder / "rankings.jsonl")
            order = GroupOrder([], "file")
            session = LabelSession([], store, order, "ann", folder / "requests.jsonl")
            client = TestClient(create_app(session))
            total = client.get("/api/state").json()["total"]
            for part in range(2):
                if part == 1:
                    assert waiting.wait(120), "the run never collected"
                    time.sleep(0.3)  # the run is polling now
                for _ in range(total // 2 if part == 0 else total - total // 2):
                    group = client.get("/api/state").json()["group"]
                    ranking = [1, 0] if len(made) % 2 else [0, 1]
                    answer = client.post(
                        "/api/label",
                        json={"annotator": "ann", "group_id": group["id"], "ranking": ranking},
                    )
                    assert answer.status_code == 200, answer.text
                    made[group["id"]] = ranking
        except BaseException as exc:  # reported by the test's thread
            problems.append(exc)

    labeller = threading.Thread(target=person, daemon=True)
    labeller.start()
    summary = tiny_job(
        *RM,
        "feedback=page",
        f"feedback.path={rankings}",
        "feedback.rounds=1",
        "feedback.delay=2",
        "feedback.wait_s=60",
        "feedback.poll_s=0.05",
        "budget.amount=6",
    )
    labeller.join(10)
    assert problems == []
    assert summary["status"] == "finished"
    requests = read_requests(folder / "requests.jsonl")
    assert {(g.requested_at, g.due) for g in requests} == {(3, 5)}
    assert set(made) == {g.id for g in requests} and len(made) >= 2
    # One retraining, at step 5, on every requested group with the page's label.
    assert len(trainings) == 1
    online = trainings[0]
    assert {(r, a) for r, a, _, _ in online} == {(3, 5)}
    assert {gid for _, _, gid, _ in online} == set(made)
    assert all(p == ranking_to_preference(made[gid]) for _, _, gid, p in online)
    steps = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    arrived = [m for m in steps if "feedback/unlabelled" in m]
    assert len(arrived) == 1 and arrived[0]["step"] == 6  # logged at the end of step 5
    assert arrived[0]["feedback/unlabelled"] == 0 and arrived[0]["feedback/label_age"] == 2
    assert arrived[0]["feedback/wait_seconds"] > 0.2
    assert set(read_arrived(folder / "arrived.jsonl")) == set(made)


@pytest.mark.slow
def test_a_resumed_job_requests_no_group_twice_and_uses_rankings_made_meanwhile(
    tiny_job, tmp_path: Path, monkeypatch
) -> None:
    """A job that crashes after its online round (step 3) but before a checkpoint holds it
    resumes from step 3's start, requests the same groups again (nothing new is written), and at
    step 5 collects the rankings made between the two runs."""
    from alignbench import hookimpl

    rankings = tmp_path / "stage2.jsonl"
    _stage_2_rankings(rankings)
    written: list[int] = []
    original_submit = OnlineRequests.submit

    def submit(self, groups, step, due):
        written.append(original_submit(self, groups, step, due))
        return written[-1]

    monkeypatch.setattr(OnlineRequests, "submit", submit)
    args = [
        *RM,
        "feedback=page",
        f"feedback.path={rankings}",
        "feedback.rounds=1",
        "feedback.delay=2",
        "budget.amount=6",
        "checkpoint_every=3",
    ]

    class CrashAtStep4:
        @hookimpl(wrapper=True)
        def alignbench_update(self, run):
            if run.step == 4:
                raise RuntimeError("the machine went away")
            return (yield)

    registry = build_registry()
    registry.pm.register(CrashAtStep4(), name="crash")
    with pytest.raises(RuntimeError, match="went away"):
        tiny_job(*args, registry=registry)
    folder = tmp_path / "out" / "feedback"
    requested = read_requests(folder / "requests.jsonl")
    lines = (folder / "requests.jsonl").read_text().splitlines()
    assert len(lines) == len(requested) == written[0] > 0
    assert not (folder / "arrived.jsonl").exists()  # step 5 never came
    for group in requested:  # the person ranks every group while the job is down
        made = Group({"prompt": group.prompt}, group.responses, extras={"id": group.id})
        _rank(folder / "rankings.jsonl", made, [1, 0])
    summary = tiny_job(*args)
    assert summary["status"] == "finished"
    assert written[1:] == [0]  # the round was requested again, and nothing written twice
    assert (folder / "requests.jsonl").read_text().splitlines() == lines
    closed = read_arrived(folder / "arrived.jsonl")
    assert set(closed) == {g.id for g in requested}
    assert all(p == ranking_to_preference([1, 0]) for p in closed.values())


def test_a_file_has_no_online_rounds_before_anything_runs() -> None:
    """feedback=file with rounds would re-add the file's own groups (held-out ones too) each
    round; it is refused up front, pointing at feedback=page."""
    from alignbench.app import validate

    message = r"feedback=file with feedback.rounds=1 — .*feedback=page"
    with pytest.raises(ConfigError, match=message):
        validate(build_registry(), ["reward=rm", "feedback=file", "feedback.rounds=1"])
