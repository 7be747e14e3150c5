"""The ranking page's file logic and API, the groups file, Label Studio / Argilla round trips."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from alignbench import DataError
from alignbench.errors import ConfigError
from alignbench.label.__main__ import main
from alignbench.label.formats import (
    export_groups,
    from_argilla,
    from_label_studio,
    to_argilla,
    to_label_studio,
)
from alignbench.label.groups import group_id, load_label_groups, read_groups
from alignbench.label.order import GroupOrder
from alignbench.label.server import LabelSession, create_app
from alignbench.label.store import RankingStore, unranked_path
from alignbench_plugins.facts import FactsConfig, FactsTask
from alignbench_plugins.feedback import FileConfig, FileFeedback

FIXTURES = Path(__file__).parent / "fixtures" / "label"


def _loaded_by_feedback_file(path: Path) -> list:
    """The project's own loader: what ``feedback=file feedback.path=<path>`` reads."""
    task = FactsTask(FactsConfig(name="facts", num_entities=40))
    return FileFeedback(FileConfig(name="file", path=str(path)), task).load_groups()


def _session(tmp_path: Path, order: str = "file", annotator: str = "ann") -> LabelSession:
    store = RankingStore(tmp_path / "rankings.jsonl")
    groups = read_groups(FIXTURES / "groups.jsonl")
    return LabelSession(groups, store, GroupOrder(groups, order), annotator)


# -- the groups file -----------------------------------------------------------------------------


def test_groups_file_forms(tmp_path: Path) -> None:
    """Own format (with or without id), the stage's saved groups and a rankings file all read."""
    lines = [
        {"id": "a", "prompt": "q1 ?", "responses": ["x", "y"]},
        {"prompt": "q2 ?", "responses": ["x", "y", "z"]},
        {"row": {"prompt": "q3 ?"}, "responses": ["x", "y"], "gold": [1, 0], "preference": None},
        {"prompt": "q4 ?", "responses": ["x", "y"], "ranking": [1, 0]},
        {"prompt": "q2 ?", "responses": ["x", "y", "z"]},  # the same group again: shown once
    ]
    path = tmp_path / "groups.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    groups = read_groups(path)
    assert [g.prompt for g in groups] == ["q1 ?", "q2 ?", "q3 ?", "q4 ?"]
    assert groups[0].id == "a" and groups[1].id == group_id("q2 ?", ["x", "y", "z"])
    assert groups[2].row == {"prompt": "q3 ?"}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{oops", ":2: not valid JSON"),
        ('["x"]', ":2: expected a JSON object"),
        ('{"prompt": "", "responses": ["a", "b"]}', ":2: 'prompt' must be"),
        ('{"prompt": "q", "responses": ["a"]}', ":2: 'responses' must be a list of at least 2"),
        ('{"id": "g", "prompt": "other", "responses": ["a", "b"]}', ":2: id 'g' is already used"),
        ('{"prompt": "q", "responses": ["a", "b"], "sources": ["policy"]}', ":2: 'sources' must"),
    ],
)
def test_groups_file_errors_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "groups.jsonl"
    path.write_text('{"id": "g", "prompt": "q", "responses": ["a", "b"]}\n' + line + "\n")
    with pytest.raises(DataError, match=f"groups.jsonl{message}"):
        read_groups(path)


def test_groups_from_a_job_and_a_sweep_folder(tmp_path: Path) -> None:
    """A job's summary names its stage-2 cache folder; a sweep's jobs sharing it read it once."""
    cache = tmp_path / "cache"
    stage = cache / "rm" / "abc123"
    stage.mkdir(parents=True)
    saved = {"row": {"prompt": "q ?", "answer": "x"}, "responses": ["x", "y"], "gold": [1, 0]}
    (stage / "train.jsonl").write_text(json.dumps({**saved, "preference": [1.0, 0.0]}) + "\n")
    other = {**saved, "responses": ["y", "i do not know"]}
    (stage / "heldout.jsonl").write_text(json.dumps(other) + "\n")
    for name in ("0_ppo", "1_rrhf"):
        job = tmp_path / "sweep" / name
        (job / ".hydra").mkdir(parents=True)
        (job / "summary.json").write_text(json.dumps({"stage/rm": {"key": "abc123"}}))
        (job / ".hydra" / "config.yaml").write_text(f"cache_dir: {cache}\n")
    from_sweep = load_label_groups(tmp_path / "sweep")
    assert [g.responses for g in from_sweep] == [["x", "y"], ["y", "i do not know"]]
    assert len(load_label_groups(tmp_path / "sweep" / "0_ppo")) == 2
    assert len(load_label_groups(stage)) == 2
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="no reward-model stage found"):
        load_label_groups(tmp_path / "plain")


# -- the output file -----------------------------------------------------------------------------


def test_store_appends_rankings_feedback_file_reads(tmp_path: Path) -> None:
    store = RankingStore(tmp_path / "rankings.jsonl")
    store.load()
    store.append("q ?", ["a", "b", "c"], "g1", "ann", "rank", [2, 0, 1], 1.5)
    store.append("q2 ?", ["a", "b"], "g2", "ann", "skip", seconds=0.4)
    store.append("q3 ?", ["a", "b"], "g3", "ann", "flag", reason="unsafe")
    ranked = [json.loads(x) for x in store.out.read_text().splitlines()]
    assert len(ranked) == 1 and ranked[0]["ranking"] == [2, 0, 1] and ranked[0]["seconds"] == 1.5
    unranked = [json.loads(x) for x in unranked_path(store.out).read_text().splitlines()]
    assert [u["decision"] for u in unranked] == ["skip", "flag"]
    assert unranked[1]["reason"] == "unsafe"
    groups = _loaded_by_feedback_file(store.out)
    assert groups[0].preference == [1.0, 0.0, 2.0]
    # Resume: a new store reads back every decision, in the order made.
    again = RankingStore(store.out)
    again.load()
    assert again.done("ann") == {"g1", "g2", "g3"} and again.done("other") == set()
    with pytest.raises(DataError, match="'ranking' must list"):
        store.append("q ?", ["a", "b"], "g9", "ann", "rank", [0, 0])


def test_undo_rewrites_the_file_without_the_last_decision(tmp_path: Path) -> None:
    store = RankingStore(tmp_path / "rankings.jsonl")
    store.load()
    store.append("q ?", ["a", "b"], "g1", "ann", "rank", [1, 0])
    store.append("q ?", ["a", "b"], "g1", "bob", "rank", [0, 1])
    store.append("q2 ?", ["a", "b"], "g2", "ann", "tie")
    assert store.undo("ann").group_id == "g2"  # the tie, in the sidecar
    assert unranked_path(store.out).read_text() == ""
    assert store.undo("ann").group_id == "g1"
    assert [json.loads(x)["annotator"] for x in store.out.read_text().splitlines()] == ["bob"]
    assert store.undo("ann") is None
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed into place


def test_a_line_cut_by_a_crash_is_dropped_and_bad_lines_are_named(tmp_path: Path) -> None:
    out = tmp_path / "rankings.jsonl"
    good = json.dumps({"prompt": "q", "responses": ["a", "b"], "ranking": [1, 0]})
    out.write_text(good + "\n" + '{"prompt": "q", "respo')
    warnings = tmp_path / "warn.txt"
    with open(warnings, "w") as warn:
        decisions = RankingStore(out, warn=warn).load()
    assert len(decisions) == 1 and out.read_text() == good + "\n"
    assert "dropped an unfinished last line" in warnings.read_text()
    out.write_text(good + "\n" + json.dumps({"prompt": "q", "responses": ["a"], "ranking": [3]}))
    out.write_text(out.read_text() + "\n")
    with pytest.raises(DataError, match="rankings.jsonl:2: 'ranking' must list"):
        RankingStore(out).load()


def test_a_second_page_on_the_same_output_is_refused(tmp_path: Path, capsys) -> None:
    first = RankingStore(tmp_path / "rankings.jsonl")
    first.acquire(owner="http://127.0.0.1:1/")
    try:
        with pytest.raises(ConfigError, match="already open in another labelling page"):
            RankingStore(tmp_path / "rankings.jsonl").acquire()
        code = main([str(FIXTURES / "groups.jsonl"), "--out", str(tmp_path / "rankings.jsonl")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "already open" in err and "pid" in err
    finally:
        first.release()
    other = RankingStore(tmp_path / "rankings.jsonl")
    other.acquire()  # free again once the first page is gone
    other.release()


def test_a_malformed_groups_file_is_one_line_naming_file_and_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "groups.jsonl"
    bad.write_text('{"prompt": "q", "responses": ["a", "b"]}\n{"prompt": "q"}\n')
    code = main([str(bad), "--out", str(tmp_path / "r.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().endswith("'responses' must be a list of at least 2 strings")
    assert f"{bad}:2:" in err and err.count("\n") == 1
    assert not (tmp_path / "r.jsonl").exists()


# -- the API -------------------------------------------------------------------------------------


def test_api_ranks_skips_undoes_and_resumes(tmp_path: Path) -> None:
    client = TestClient(create_app(_session(tmp_path)))
    assert "rank the responses" in client.get("/").text
    state = client.get("/api/state").json()
    assert (state["annotator"], state["done"], state["total"]) == ("ann", 0, 3)
    assert state["group"]["id"] == "g1" and state["group"]["responses"][1] == "dakar"
    body = {"annotator": "ann", "group_id": "g1", "ranking": [1, 2, 0], "seconds": 2.0}
    state = client.post("/api/label", json=body).json()
    assert state["done"] == 1 and state["group"]["id"] == "g2" and state["mean_seconds"] == 2.0
    # The same group again (a stale tab) and a bad ranking are refused; nothing is written.
    assert client.post("/api/label", json=body).status_code == 409
    bad = {"annotator": "ann", "group_id": "g2", "ranking": [0, 0, 1]}
    assert client.post("/api/label", json=bad).status_code == 409
    skip = {"annotator": "ann", "group_id": "g2", "decision": "skip", "seconds": 1.0}
    assert client.post("/api/label", json=skip).json()["group"]["id"] == "g3"
    state = client.post("/api/undo", json={"annotator": "ann"}).json()
    assert state["undone"] == "g2" and state["group"]["id"] == "g2" and state["done"] == 1
    # Another annotator has their own progress over the same groups.
    assert client.get("/api/state?annotator=bob").json()["done"] == 0
    # A new page on the same file (after a restart) continues where the file stops.
    resumed = TestClient(create_app(_session(tmp_path))).get("/api/state").json()
    assert resumed["done"] == 1 and resumed["group"]["id"] == "g2"
    [group] = _loaded_by_feedback_file(tmp_path / "rankings.jsonl")
    assert group.responses == ["paris", "dakar", "i do not know"]
    assert group.preference == [0.0, 2.0, 1.0]


def test_orders_random_is_seeded_and_active_ones_need_a_model(tmp_path: Path) -> None:
    groups = read_groups(FIXTURES / "groups.jsonl")
    first = [g.id for g in GroupOrder(groups, "random", seed=3).ordered()]
    assert first == [g.id for g in GroupOrder(groups, "random", seed=3).ordered()]
    assert sorted(first) == ["g1", "g2", "g3"]
    with pytest.raises(ConfigError, match="--order uncertainty needs a model"):
        GroupOrder(groups, "uncertainty")


def test_active_orders_with_a_tiny_model(tmp_path: Path) -> None:
    """diversity orders once by k-center; uncertainty refits on the labels made and reorders."""
    import torch

    from alignbench.config import ModelConfig
    from alignbench.models import build_model, build_tokenizer, save_pretrained

    task = FactsTask(FactsConfig(name="facts", num_entities=40))
    tokenizer = build_tokenizer(task.vocabulary())
    torch.manual_seed(0)
    config = ModelConfig(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2)
    save_pretrained(build_model(config, tokenizer), tokenizer, tmp_path / "job" / "model")
    groups = read_groups(FIXTURES / "groups.jsonl")
    diverse = GroupOrder(groups, "diversity", model=tmp_path / "job")
    assert sorted(g.id for g in diverse.ordered()) == ["g1", "g2", "g3"]
    active = GroupOrder(groups, "uncertainty", model=tmp_path / "job", refit_every=1)
    active.ranked([(groups[0], [1, 2, 0]), (groups[1], [2, 1, 0])])
    active.wait(timeout=120)
    assert active.fits == 1 and sorted(g.id for g in active.ordered()) == ["g1", "g2", "g3"]


# -- Label Studio and Argilla --------------------------------------------------------------------


def test_label_studio_export_fixture_imports_as_rankings(tmp_path: Path) -> None:
    imported = from_label_studio(FIXTURES / "labelstudio_export.json")
    assert [r["ranking"] for r in imported.rankings] == [[1, 2, 0], [1, 0, 2]]
    assert [r["annotator"] for r in imported.rankings] == ["1", "second@example.org"]
    assert imported.rankings[0]["seconds"] == 12.5 and imported.rankings[0]["group_id"] == "g1"
    assert imported.left_out == {"cancelled (skipped) annotation": 1, "task without annotation": 1}
    pairwise = from_label_studio(FIXTURES / "labelstudio_pairwise_export.json")
    assert [r["ranking"] for r in pairwise.rankings] == [[1, 0], [0, 1]]


def test_argilla_records_fixture_imports_as_rankings() -> None:
    imported = from_argilla(FIXTURES / "argilla_records.json")
    assert [r["ranking"] for r in imported.rankings] == [[1, 2, 0], [2, 1, 0]]
    assert imported.rankings[0]["annotator"] == "1f8a3c52-2f4e-4f43-9d55-6c0f1c0b2a11"
    assert imported.left_out == {
        "draft response": 1,
        "tie (two options at one rank)": 1,
        "discarded response": 1,
    }


@pytest.mark.parametrize("fmt", ["labelstudio", "argilla"])
def test_round_trip_through_the_tools_formats(tmp_path: Path, fmt: str, capsys) -> None:
    """Export groups, label them as the tool records labels, import: the rankings come back."""
    groups_file = FIXTURES / "groups.jsonl"
    out = tmp_path / "tasks.json"
    assert main(["export", "--format", fmt, str(groups_file), "--out", str(out)]) == 0
    exported = json.loads(out.read_text())
    wanted = {"g1": [2, 0, 1], "g2": [0, 1, 2], "g3": [1, 2, 0]}
    for entry in exported:
        if fmt == "labelstudio":
            ids = [f"response_{i + 1}" for i in wanted[entry["data"]["group_id"]]]
            value = {"ranker": {"rank": ids}}
            entry["annotations"] = [
                {"completed_by": 5, "result": [{"type": "ranker", "value": value}]}
            ]
        else:
            ids = [f"response_{i + 1}" for i in wanted[entry["id"]]]
            entry["responses"] = {"ranking": [{"value": ids, "user_id": "u-5"}]}
    out.write_text(json.dumps(exported))
    rankings = tmp_path / "rankings.jsonl"
    assert main(["import", "--format", fmt, str(out), "--out", str(rankings)]) == 0
    lines = [json.loads(x) for x in rankings.read_text().splitlines()]
    assert {x["group_id"]: x["ranking"] for x in lines} == wanted
    groups = {g.id: g for g in read_groups(groups_file)}
    assert all(groups[x["group_id"]].responses == x["responses"] for x in lines)
    assert len(_loaded_by_feedback_file(rankings)) == 3
    # Nothing is overwritten: the same --out again is refused in one line.
    assert main(["import", "--format", fmt, str(out), "--out", str(rankings)]) == 2
    assert "already exists" in capsys.readouterr().err
    if fmt == "labelstudio":
        assert "<Ranker" in (tmp_path / "tasks.label_config.xml").read_text()


def test_format_errors_are_one_line(tmp_path: Path) -> None:
    groups = read_groups(FIXTURES / "groups.jsonl")
    with pytest.raises(DataError, match="pairwise interface compares 2"):
        to_label_studio(groups, "pairwise")
    uneven = [*groups, groups[0].__class__("x", "q", ["a", "b"])]
    with pytest.raises(DataError, match="export groups of one K"):
        to_argilla(uneven)
    tasks = to_label_studio(groups)
    tasks[0]["annotations"] = [
        {"result": [{"type": "ranker", "value": {"ranker": {"best": ["response_1"], "_": []}}}]}
    ]
    path = tmp_path / "ls.json"
    path.write_text(json.dumps(tasks))
    with pytest.raises(DataError, match="task 1: the ranker result sorts items into buckets"):
        from_label_studio(path)
    path.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        from_label_studio(path)
    written = export_groups(groups, "argilla", tmp_path / "records.json")
    assert written == [tmp_path / "records.json"]
    shutil.copy(FIXTURES / "groups.jsonl", tmp_path / "g.jsonl")


@pytest.mark.slow
def test_export_groups_samples_from_the_sft_model(tmp_path: Path) -> None:
    """``export-groups --sample`` trains (or reuses) stage 1 and samples K responses per prompt."""
    from tests.conftest import TINY

    out = tmp_path / "groups.jsonl"
    overrides = [x for x in TINY if x.startswith(("task.", "model.", "stage."))]
    argv = ["export-groups", "--sample", "--count", "5", "--out", str(out), *overrides]
    assert main([*argv, f"cache_dir={tmp_path / 'cache'}", "feedback.k=3", "threads=1"]) == 0
    groups = read_groups(out)
    assert len(groups) == 5 and all(len(g.responses) == 3 for g in groups)
    assert all(g.sources is not None and g.row["prompt"] == g.prompt for g in groups)


def test_the_page_shows_a_conversations_every_message_system_prompt_first(
    tmp_path: Path,
) -> None:
    """A group whose row is a conversation (task=dataset: messages, task.system_prompt) is shown
    as the policy was given it, one `Role: content` line per message; a plain prompt as it is."""
    conversation = [
        {"role": "system", "content": "answer in one word"},
        {"role": "user", "content": "i am kemi ."},
        {"role": "assistant", "content": "hello kemi ."},
        {"role": "user", "content": "what colour is my car ?"},
    ]
    chat = {"id": "c", "prompt": "user: i am kemi . | …", "responses": ["red", "blue"]}
    plain = {"id": "p", "prompt": "what colour is zorbia ?", "responses": ["red", "blue"]}
    path = tmp_path / "groups.jsonl"
    lines = [{**chat, "row": {"prompt": chat["prompt"], "conversation": conversation}}, plain]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    groups = read_groups(path)
    session = LabelSession(
        groups, RankingStore(tmp_path / "r.jsonl"), GroupOrder(groups, "file"), "ann"
    )
    assert session.state("ann")["group"]["prompt"] == (
        "System: answer in one word\nUser: i am kemi .\nAssistant: hello kemi .\n"
        "User: what colour is my car ?"
    )
    session.decide("ann", "c", "rank", [0, 1], 1.0, "")
    assert session.state("ann")["group"]["prompt"] == plain["prompt"]
