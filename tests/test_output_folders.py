"""Folders that cannot be written, and a full disk: one line, non-zero exit (issue 11.16)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from alignbench import checkpoint
from alignbench.app import main
from tests.conftest import TINY


def test_results_that_is_a_file_is_refused_before_anything_runs(capsys, tmp_path, monkeypatch):
    """A file named `results` in the way: one line naming it, exit 2, the file untouched."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").write_text("not a folder")
    assert main([*TINY, "algo=sft"]) == 2
    err = capsys.readouterr().err.strip()
    assert "results is a file, not a folder" in err and "\n" not in err
    assert (tmp_path / "results").read_text() == "not a folder"


def test_a_sweep_dir_under_a_file_is_refused(capsys, tmp_path, monkeypatch):
    """An explicit hydra.sweep.dir whose parent is a file: one line, before Hydra starts."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "blocker").write_text("x")
    assert main([*TINY, "algo=sft", "hydra.sweep.dir=blocker/sweep", "--multirun"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: hydra.sweep.dir: cannot write into blocker/sweep")
    assert not (tmp_path / "results").exists()


def test_a_read_only_output_folder_is_refused(capsys, tmp_path, monkeypatch):
    """A read-only hydra.run.dir (simulated: tests run as root, who may write anywhere)."""
    import alignbench.cli as cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ro").mkdir()
    real = cli.os.access
    monkeypatch.setattr(
        cli.os, "access", lambda path, mode: Path(path).name != "ro" and real(path, mode)
    )
    assert main([*TINY, "algo=sft", "hydra.run.dir=ro/job"]) == 2
    err = capsys.readouterr().err.strip()
    assert "hydra.run.dir: cannot write into ro/job" in err and "is not writable" in err
    assert list((tmp_path / "ro").iterdir()) == []


@pytest.mark.slow
def test_a_full_disk_fails_the_job_in_one_line_with_a_failed_summary(capsys, tmp_path, monkeypatch):
    """ENOSPC while saving a checkpoint: exit 1, one line, the summary records the error."""
    monkeypatch.chdir(tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save", full)
    args = [*TINY, "algo=sft", "checkpoint_every=1", "hydra.run.dir=job", "cache_dir=cache"]
    assert main(args) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1 and "No space left on device" in err[0]
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["status"] == "failed" and "No space left on device" in summary["error"]
