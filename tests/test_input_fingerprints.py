"""The files a job reads are part of what it is: ``model.name_or_path``, ``task.path`` and
``feedback.path`` (fields marked ``metadata={"input": True}``) enter the job's fingerprint by
their contents, and a folder whose results were made from other contents behind the same names
is refused in one line instead of being reported as this job's result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from alignbench.checkpoint import config_fingerprint
from alignbench.errors import ConfigError
from alignbench.job import run_job
from alignbench.model_folders import input_keys
from alignbench.registry import build_registry
from tests.conftest import TINY, compose
from tests.test_dataset_task import COLUMNS, facts_rows, write


def test_input_files_enter_the_fingerprint_by_their_contents(tmp_path: Path) -> None:
    """The default names no input (its fingerprint is pinned elsewhere); each input key is found,
    and other bytes behind the same name give another fingerprint, the same bytes the same."""
    registry = build_registry()
    assert input_keys(compose([], registry)) == {}
    data = write(tmp_path, facts_rows(10), "qa.jsonl")
    rankings = tmp_path / "rankings.jsonl"
    rankings.write_text('{"prompt": "a", "responses": ["x", "y"], "ranking": [0, 1]}\n')
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"a": 1}')
    cfg = compose(
        ["task=dataset", f"task.path={data}", *COLUMNS, "feedback=file"]
        + [f"feedback.path={rankings}", f"model.name_or_path={model}"],
        registry,
    )
    assert set(input_keys(cfg)) == {"task.path", "feedback.path", "model.name_or_path"}
    first = config_fingerprint(cfg)
    assert config_fingerprint(cfg) == first
    for path, edit in (
        (data, lambda: write(tmp_path, facts_rows(11), "qa.jsonl")),
        (rankings, lambda: rankings.write_text(rankings.read_text().replace("[0, 1]", "[1, 0]"))),
        (model / "config.json", lambda: (model / "config.json").write_text('{"a": 2}')),
    ):
        before = config_fingerprint(cfg)
        edit()
        assert config_fingerprint(cfg) != before, path


@pytest.mark.slow
def test_results_from_other_data_are_refused_not_reported(tmp_path: Path) -> None:
    """A finished job is reported as finished while its data stay; after the data file changes
    the same command refuses in one line naming task.path (nothing overwritten), and
    ``rerun=true`` runs it on the new data."""
    registry = build_registry()
    data = write(tmp_path, facts_rows(), "qa.jsonl")
    out = tmp_path / "out"

    def job(*extra: str) -> dict[str, Any]:
        small = [t for t in TINY if not t.startswith("task.")]
        cfg = compose(
            [*small, "task=dataset", f"task.path={data}", *COLUMNS, "algo=rrhf"]
            + ["reward=exact_match", f"cache_dir={tmp_path / 'cache'}", *extra],
            registry,
        )
        return run_job(cfg, out, registry=registry)

    first = job()
    assert first["status"] == "finished" and set(first["inputs"]) == {"task.path"}
    assert job()["status"] == "finished"  # the same data: the finished result
    rows = facts_rows()
    rows[0]["gold"] = "another answer"
    write(tmp_path, rows, "qa.jsonl")
    summary = (out / "summary.json").read_text()
    with pytest.raises(ConfigError, match=r"other contents of task\.path .* rerun=true") as info:
        job()
    assert "\n" not in str(info.value)
    assert (out / "summary.json").read_text() == summary  # nothing overwritten
    again = job("rerun=true")
    assert again["status"] == "finished"
    assert again["inputs"] != json.loads(summary)["inputs"]
