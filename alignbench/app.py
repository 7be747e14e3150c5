"""The names that lived here before the command line and the job were split (kept importable:
tests, docs and configs written against ``alignbench.app`` keep working).

The command line is :mod:`alignbench.cli` (argv, validation, the Hydra entry, one-line errors);
one job is :mod:`alignbench.job` (:class:`~alignbench.job.Job` and :func:`~alignbench.job.run_job`).
"""

from __future__ import annotations

from alignbench.cli import _FAILED as _FAILED
from alignbench.cli import (
    MAX_VALIDATED_COMBINATIONS,
    FailedJobs,
    main,
    validate,
)
from alignbench.cli import _check_writable as _check_writable
from alignbench.cli import _default_dirs as _default_dirs
from alignbench.cli import _job as _job
from alignbench.cli import _launch as _launch
from alignbench.cli import _one_line as _one_line
from alignbench.cli import _output_folders as _output_folders
from alignbench.cli import _parse_overrides as _parse_overrides
from alignbench.cli import _plugin_dirs as _plugin_dirs
from alignbench.cli import _record_failure as _record_failure
from alignbench.cli import _values as _values
from alignbench.job import (
    RUN_HOOKS,
    Job,
    check_multi_turn,
    export_policy,
    library_versions,
    plugin_code,
    run_job,
    seed_everything,
)
from alignbench.job import _check_hook_names as _check_hook_names
from alignbench.job import _check_run_hooks as _check_run_hooks
from alignbench.job import _code_changes as _code_changes
from alignbench.job import _finished_summary as _finished_summary

__all__ = [
    "MAX_VALIDATED_COMBINATIONS",
    "RUN_HOOKS",
    "FailedJobs",
    "Job",
    "check_multi_turn",
    "export_policy",
    "library_versions",
    "main",
    "plugin_code",
    "run_job",
    "seed_everything",
    "validate",
]
