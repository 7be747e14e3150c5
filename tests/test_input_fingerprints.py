"""The files a job reads are part of what it is: ``model.name_or_path``, ``task.path`` and
``feedback.path`` (fields marked ``metadata={"input": True}``) enter the job's fingerprint by
their contents, and a folder whose results were made from other contents behind the same names
is refused in one line instead of being reported as this job's result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import alignbench
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


class EditThenStop:
    """An observer that rewrites the data file after step 1 and stops the job at step 2 (after
    step 1's checkpoint), as a user regenerating the data while a job runs, then a crash."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @alignbench.hookimpl
    def alignbench_on_step_end(self, step: int) -> None:
        """Edit the data at step 1, stop at step 2."""
        if step == 1:
            rows = facts_rows()
            rows[0]["gold"], rows[1]["gold"] = rows[1]["gold"], rows[0]["gold"]
            write(self.folder, rows, "qa.jsonl")
        if step == 2:
            raise RuntimeError("killed by the test")


@pytest.mark.slow
def test_a_checkpoint_keeps_the_inputs_the_job_started_with(tmp_path: Path) -> None:
    """The data edited while a job runs, then the job killed (no summary): its checkpoint holds
    the fingerprint and inputs of the start, so the same command refuses to resume on the new
    data, in one line naming task.path (before, the checkpoint re-hashed the files at save time
    and the job resumed on other data without a word)."""
    data = write(tmp_path, facts_rows(), "qa.jsonl")
    small = [t for t in TINY if not t.startswith(("task.", "budget.amount"))]
    overrides = [*small, "task=dataset", f"task.path={data}", *COLUMNS, "algo=rrhf"]
    overrides += ["reward=exact_match", "budget.amount=3", "checkpoint_every=1"]
    overrides += [f"cache_dir={tmp_path / 'cache'}"]
    registry = build_registry()
    registry.pm.register(EditThenStop(tmp_path), name="test:edit")
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="killed by the test"):
        run_job(compose(overrides, registry), out, registry=registry)
    assert (out / "checkpoints" / "latest").is_file()
    (out / "summary.json").unlink()  # a kill leaves none
    registry = build_registry()
    with pytest.raises(ConfigError, match=r"checkpoint of a job made from other contents of task"):
        run_job(compose(overrides, registry), out, registry=registry)


@pytest.mark.slow
def test_finished_results_recorded_before_inputs_counted_are_not_run_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Results finished when input contents were not part of the fingerprint (older code: no
    ``inputs`` in the summary) are neither reported as this job's nor overwritten in place: one
    line asks for rerun=true."""
    from alignbench import checkpoint, job

    data = write(tmp_path, facts_rows(), "qa.jsonl")
    small = [t for t in TINY if not t.startswith("task.")]
    overrides = [*small, "task=dataset", f"task.path={data}", *COLUMNS, "algo=rrhf"]
    overrides += ["reward=exact_match", f"cache_dir={tmp_path / 'cache'}"]
    registry = build_registry()
    out = tmp_path / "out"
    with monkeypatch.context() as old_code:
        old_code.setattr(checkpoint, "folder_fingerprints", lambda cfg: {})
        old_code.setattr(job, "folder_fingerprints", lambda cfg: {})
        assert run_job(compose(overrides, registry), out, registry=registry)["status"] == (
            "finished"
        )
    metrics = (out / "metrics.jsonl").read_text()
    with pytest.raises(
        ConfigError, match=r"finished results of this config made from input files not recorded"
    ):
        run_job(compose(overrides, registry), out, registry=registry)
    assert (out / "metrics.jsonl").read_text() == metrics
    # The same inputs recorded, another fingerprint (a summary edited by hand, say): both named.
    summary = json.loads((out / "summary.json").read_text())
    summary["inputs"] = alignbench.model_folders.folder_fingerprints(compose(overrides, registry))
    summary["fingerprint"] = "0123456789abcdef"
    (out / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ConfigError, match=r"the same inputs but fingerprint 0123456789abcdef"):
        run_job(compose(overrides, registry), out, registry=registry)


def test_a_rewrite_that_puts_the_old_mtime_back_is_hashed_again(tmp_path: Path) -> None:
    """``cp -p``, ``rsync -t`` or ``tar x`` can rewrite a file with its old size and mtime: the
    remembered hash is not reused (the change time moved), in a file and in a folder."""
    import os

    from alignbench.model_folders import contents_hash, file_hash
    from alignbench.provenance import sha256_file

    path = tmp_path / "data.jsonl"
    path.write_text('{"gold": "aaaa"}\n')
    stat = path.stat()
    first, folder_first = file_hash(path), contents_hash(tmp_path)
    path.write_text('{"gold": "bbbb"}\n')  # the same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_mtime_ns == stat.st_mtime_ns
    assert file_hash(path) == sha256_file(path) != first
    assert contents_hash(tmp_path) != folder_first
