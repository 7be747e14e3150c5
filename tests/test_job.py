"""alignbench.job: a Job's steps taken one at a time, and what the command line keeps of the split
of app.py (the job's log file name, the old import path)."""

from __future__ import annotations

from pathlib import Path

from alignbench.cli import main
from alignbench.job import Job
from alignbench.registry import Registry
from tests.conftest import TINY, compose


def test_a_job_builds_a_run_whose_hooks_step_by_hand(
    tmp_path: Path, cache_dir: Path, registry: Registry
) -> None:
    """build() and start() give a Run and its algorithm behind the hooks, without the loop;
    close() leaves the registry as it was."""
    cfg = compose([*TINY, f"cache_dir={cache_dir}", "algo=ppo"], registry)
    job = Job(cfg, tmp_path / "job", registry)
    run = job.build()
    algorithm = job.start()
    try:
        assert registry.pm.get_plugin("algorithm:ppo") is algorithm
        prompts = run.task.splits["rl"].to_list()[:2]
        hook = run.pm.hook
        with run.autocast():
            batch = hook.alignbench_rollout(run=run, prompts=prompts)
            batch = hook.alignbench_score(run=run, batch=batch)
            stats = hook.alignbench_update(run=run, batch=batch)
    finally:
        job.close()
    assert batch.rewards is not None and batch.rewards.shape == (batch.num_sequences,)
    assert "loss/policy" in stats and run.flops.by_model["policy"] > 0
    assert not registry.pm.has_plugin("algorithm:ppo")
    assert not registry.pm.has_plugin("core:default-score")
    assert not (tmp_path / "job" / "metrics.jsonl").exists()  # no loop, no results writer


def test_the_job_log_keeps_its_name_and_the_old_module_its_names(
    tmp_path: Path, cache_dir: Path, monkeypatch
) -> None:
    """The job's log is still app.log (Hydra would name it after cli.py); alignbench.app still
    hands out what code imported from it."""
    import alignbench.app as app
    import alignbench.cli as cli
    import alignbench.job as job

    monkeypatch.chdir(tmp_path)
    assert main([*TINY, f"cache_dir={cache_dir}", "algo=sft", "hydra.run.dir=out"]) == 0
    assert (tmp_path / "out" / "app.log").is_file()
    assert not (tmp_path / "out" / "cli.log").exists()
    assert app.main is cli.main and app.FailedJobs is cli.FailedJobs
    assert app.run_job is job.run_job and app._check_run_hooks is job._check_run_hooks
