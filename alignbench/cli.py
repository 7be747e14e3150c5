"""The ``python -m alignbench`` command: validate the command line, then run Hydra jobs.

Before Hydra composes anything, the plugins are loaded (so a plugin's ``algo=<name>`` is a
config option), group names are checked against what the plugins registered, and each job's
config is composed once, so that a typo is one line naming the problem instead of a traceback.
Each job then runs through :func:`alignbench.job.run_job`; a failed one is one line here, its
summary and log say the rest. Also ``python -m alignbench.plugins``, the listing of the plugins
(:func:`list_plugins`).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import itertools
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, IntervalSweep, Override
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from alignbench import distributed, jobdir, signals, tuning
from alignbench.budget import Budget
from alignbench.checkpoint import config_fingerprint
from alignbench.config import CONF_PACKAGE, shipped_yaml_names, ships_yaml, to_object
from alignbench.errors import (
    UNKNOWN_BY_GROUP,
    AlignbenchError,
    ConfigError,
    Interrupted,
    UnknownName,
)
from alignbench.hardware import check_hardware
from alignbench.job import (
    _check_hook_names,
    check_data_parallel,
    check_engine,
    check_gold_answers,
    check_multi_turn,
    check_placed_models,
    run_job,
)
from alignbench.model_folders import check_model_folders
from alignbench.model_options import check_model_options
from alignbench.models import check_loadable
from alignbench.observers import WandbLogger, write_json_atomic
from alignbench.registry import Registry, build_registry, describe
from alignbench.stages import model_source
from alignbench.validation import (
    check_choices,
    check_known_keys,
    check_plugin_configs,
    check_ranges,
)

log = logging.getLogger("alignbench")

#: The registry of the command's process, built by :func:`main` before Hydra starts its jobs.
_REGISTRY: Registry | None = None
#: How many sweep combinations are composed up front to catch config errors early.
MAX_VALIDATED_COMBINATIONS = 64


#: Jobs of this process that failed (a multirun goes on; the exit code says something failed).
_FAILED: list[str] = []


class FailedJobs(Callback):
    """Finds the failed jobs of a multirun in the parent process, whatever the launcher.

    A parallel launcher (joblib, submitit) runs jobs in other processes, whose ``_FAILED`` the
    parent never sees; so at the end of the multirun the parent reads the status of every job
    folder written since the multirun started.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Note when the sweep started, and append its command to the sweep folder's
        ``commands.jsonl`` (Hydra's ``multirun.yaml`` keeps only the last command)."""
        self.started = time.time()
        from alignbench.label.store import append_records
        from alignbench.report.jobs import COMMANDS_FILE, command_args

        sweep = Path(config.hydra.sweep.dir)
        sweep.mkdir(parents=True, exist_ok=True)  # Hydra's sweeper creates it next anyway
        args = command_args(OmegaConf.to_container(config.hydra.overrides, resolve=False))
        record = {"args": args, "started": datetime.datetime.now().isoformat(timespec="seconds")}
        append_records(sweep / COMMANDS_FILE, [record])

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Add every job folder of the sweep whose summary says failed/interrupted to _FAILED."""
        sweep = Path(config.hydra.sweep.dir)
        for path in sorted(sweep.glob("*/summary.json")):
            if path.stat().st_mtime < getattr(self, "started", 0.0) - 1:
                continue  # an older run's folder (skipped this time)
            status = (jobdir.summary_status(path.parent) or {}).get("status")
            known = {str(Path(f).resolve()) for f in _FAILED}
            if status in ("failed", "interrupted") and str(path.parent.resolve()) not in known:
                _FAILED.append(str(path.parent))
        # The sweep's answer: its comparison table, plots and exported models.
        from alignbench.answer import print_answer  # compare and matplotlib only when needed

        print_answer(sweep)


def _record_failure(cfg: DictConfig, output_dir: Path, exc: BaseException) -> None:
    """A failed (or interrupted) summary.json for a job stopped before its loop wrote one."""
    if (output_dir / "summary.json").exists():
        return
    summary = {
        "status": "interrupted" if isinstance(exc, Interrupted) else "failed",
        "error": f"{type(exc).__name__}: {exc}",
        "algorithm": cfg.algo.name,
        "task": cfg.task.name,
        "seed": cfg.seed,
        "fingerprint": config_fingerprint(cfg),
    }
    try:
        write_json_atomic(output_dir / "summary.json", summary)
    except OSError as err:  # a full disk or a folder made read-only: the message still goes out
        log.warning("could not record the failure in %s: %s", output_dir, err)


def _job(cfg: DictConfig) -> float | None:
    """The Hydra task function: run one job in Hydra's output folder and say where it went.

    A failing job is reported in one line (its summary.json holds the error, its log the
    traceback) and does not stop the other jobs of a multirun; the command then exits non-zero.
    With ``optimized_metric`` set (a hyperparameter search), returns that metric to the sweeper
    (None for a failed job: a failed trial).
    """
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    group = Path(hydra_cfg.sweep.dir).name if hydra_cfg.mode == RunMode.MULTIRUN else None
    tags = WandbLogger.tags_from_overrides(list(hydra_cfg.overrides.task))
    claimed = False  # until the folder is ours, a failure writes nothing into it
    if signals.is_worker():
        # A parallel launcher's worker: its jobs stop cleanly too, for the worker's whole life.
        # Not otherwise: the command installs them itself, and a direct call (a test, a
        # library user) gets them around its loop only, instead of keeping them forever.
        signals.install()
    if signals.requested() is not None:
        # The sweep is stopping: a worker that was asked to stop starts no further job.
        print(f"[alignbench] {output_dir.name}: not started (the sweep is stopping)", flush=True)
        return
    try:
        # Join the job's ranks before asking which one this is: a SLURM task of
        # hydra/launcher=slurm_ddp has no process group yet (the command's process started none).
        distributed.setup()
        if not distributed.is_main_process():
            # Another rank of a multi-process job: rank 0 holds the folder and writes it.
            run_job(cfg, output_dir, _REGISTRY, group=group, tags=tags, claimed=True)
            return None
        with signals.busy(), jobdir.locked(output_dir):
            jobdir.check_free(cfg, output_dir)
            if cfg.rerun:
                jobdir.move_aside(output_dir)
            jobdir.write_hydra_record(output_dir, cfg, hydra_cfg, list(hydra_cfg.overrides.task))
            claimed = True
            summary = run_job(cfg, output_dir, _REGISTRY, group=group, tags=tags, claimed=True)
    except Interrupted as exc:
        _FAILED.append(str(output_dir))
        if claimed:
            _record_failure(cfg, output_dir, exc)  # stopped in stage 1: no summary yet
        print(f"error: {output_dir.name}: {exc}", file=sys.stderr, flush=True)
        if signals.orphaned():
            # The command was killed: no one will collect this result or send another job, and
            # a pool worker would otherwise wait for one forever.
            logging.shutdown()
            os._exit(signals.exit_code(exc.signum))
        if signals.is_worker():
            return  # the command's own process ends the sweep once every worker has stopped
        # Ctrl-C / SIGTERM stops the whole sweep, not just this job (its checkpoint is saved).
        raise SystemExit(signals.exit_code(exc.signum)) from None
    except AlignbenchError as exc:
        _FAILED.append(str(output_dir))
        if claimed:
            _record_failure(cfg, output_dir, exc)
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return
    except Exception as exc:
        _FAILED.append(str(output_dir))
        if claimed:
            _record_failure(cfg, output_dir, exc)
        log.exception("job failed")
        print(
            f"error: job {output_dir.name} failed: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''} (traceback in {output_dir}/app.log)",
            file=sys.stderr,
            flush=True,
        )
        return
    shown = ", ".join(
        f"{k.split('/', 1)[1]}={v:.3f}"
        for k, v in sorted(summary.items())
        if k.startswith("test/") and k.count("_") < 2  # overall metrics, not per-kind ones
    )
    note = " (already finished: skipped)" if summary.get("skipped") else ""
    model = f" (model: {summary['model_dir']})" if summary.get("model_dir") else ""
    print(
        f"[alignbench] {cfg.algo.name} seed={cfg.seed}{note}: {shown} → {output_dir}{model}",
        flush=True,
    )
    return tuning.objective(summary, cfg.optimized_metric) if cfg.optimized_metric else None


def _parse_overrides(overrides: list[str]) -> list[Override]:
    try:
        return OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise ConfigError(f"cannot parse the command line: {str(exc).splitlines()[0]}") from None


def _values(override: Override, registry: Registry, sampled: bool = False) -> list[str]:
    """The values a (sweep) override stands for, as strings; ConfigError where none can be listed.

    ``glob(...)`` is matched against the group's options; ``interval(...)`` is sampled by a
    sweeper (``sampled``: one was chosen), so its two bounds stand for it here.
    """
    value = override.value()
    key = override.key_or_group.lstrip("+~")
    if isinstance(value, IntervalSweep):
        if not sampled:
            raise ConfigError(
                f"{key}=interval(...) needs a sweeper that samples it (e.g. "
                "hydra/sweeper=optuna); the basic sweeper takes a list, range() or choice()"
            )
        # Hydra reads interval(1,3)'s bounds as floats; an integral bound is written as an
        # integer so that it also composes into an int key (a float key takes "1" as well).
        return [str(int(b)) if float(b).is_integer() else str(b) for b in (value.start, value.end)]
    if isinstance(value, Glob):
        if key not in UNKNOWN_BY_GROUP:
            raise ConfigError(
                f"{key}=glob(...) selects options of a config group (e.g. algo=glob(*)); "
                f"{key} is not a group — give a list of values instead"
            )
        options = sorted(set(registry.names(key)) | set(shipped_yaml_names(key)))
        picked = value.filter(options)
        if not picked:
            raise ConfigError(f"{key}={override.input_line.split('=', 1)[1]} matches no option")
        return picked
    if override.is_sweep_override():
        return [str(v) for v in override.sweep_string_iterator()]
    return [override.get_value_element_as_str()]


def _plugin_dirs(overrides: list[Override]) -> list[str]:
    dirs: list[str] = []
    for o in overrides:
        if o.key_or_group.lstrip("+~") == "plugin_dirs" and not o.is_delete():
            value = o.value()
            dirs += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return dirs


def _one_line(exc: BaseException) -> str:
    """The innermost OmegaConf/Hydra message of a composition error, as one line."""
    inner: BaseException | None = exc
    while inner is not None and not isinstance(inner, OmegaConfBaseException):
        inner = inner.__cause__ or inner.__context__
    if isinstance(inner, ConfigKeyError | ConfigAttributeError):
        key = getattr(inner, "full_key", "") or str(inner).split("'")[1]
        return (
            f"unknown config key '{key}' — check its spelling; "
            "`python -m alignbench --cfg job` lists every key"
        )
    if isinstance(inner, OmegaConfBaseException):
        key = getattr(inner, "full_key", "")
        message = str(inner).splitlines()[0]
        return f"{key}: {message}" if key else message
    return str(exc).splitlines()[0]


def _check_choices(registry: Registry, overrides: list[Override], sampled: bool) -> None:
    """Refuse any value of a group override (``algo=ppo,pp0``) that names no choice."""
    for o in overrides:
        group = o.key_or_group.lstrip("+")
        if group in UNKNOWN_BY_GROUP and o.package is None and not o.is_delete():
            for name in _values(o, registry, sampled):
                _check_choice(registry, group, name)


def _check_choice(registry: Registry, group: str, name: str) -> None:
    """Refuse a group choice that is neither a registered plugin nor a shipped YAML variant of
    one (e.g. algo=ppo_plain, whose `name` key says which plugin runs it), listing both."""
    if ships_yaml(group, name):
        return
    try:
        registry.get(group, name)
    except UnknownName as exc:
        variants = shipped_yaml_names(group)
        if not variants:
            raise
        raise type(exc)(name, [*exc.known, *variants]) from None


def _file_sweeps(registry: Registry, user: list[Override], sampled: bool) -> list[Override]:
    """The sweeps that the composed config's ``hydra.sweeper.params`` adds (an experiment or
    search file's), for keys the command line does not set."""
    plain = [f"{o.get_key_element()}={_values(o, registry, sampled)[0]}" for o in user]
    with hydra.initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        try:
            cfg = hydra.compose(config_name="config", overrides=plain, return_hydra_config=True)
        except (HydraException, OmegaConfBaseException, ValueError) as exc:
            raise ConfigError(_one_line(exc)) from None
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    given = {o.key_or_group.lstrip("+~") for o in user}
    lines = [f"{k}={v}" for k, v in params.items() if str(k).lstrip("+~") not in given]
    return _parse_overrides(lines)


def _covering(choices: list[list[str]]) -> Iterator[tuple[str, ...]]:
    """The combinations of swept values to compose: first a few that hold every value of every
    key at least once, then every combination of the config-group choices (algo x reward x
    task ..., where keys and rules differ), other keys at their first value. Seeds, worlds and
    numbers are not multiplied out: one value of theirs composes like any other."""
    seen: set[tuple[str, ...]] = set()
    width = max((len(c) for c in choices), default=1)
    diagonal = (tuple(c[i % len(c)] for c in choices) for i in range(width))
    grouped = [
        c if c[0].split("=", 1)[0].lstrip("+") in UNKNOWN_BY_GROUP else c[:1] for c in choices
    ]
    for combo in itertools.chain(diagonal, itertools.product(*grouped)):
        if combo not in seen:
            seen.add(combo)
            yield combo


def validate(registry: Registry, raw_overrides: list[str]) -> None:
    """Check group names against the registry and compose each job's config; raise ConfigError."""
    overrides = _parse_overrides(raw_overrides)
    # A sweeper other than the basic one (Optuna, Nevergrad, ...) samples interval(...) itself;
    # a search space (hparams_search=...) selects one.
    sampled = any(
        (o.key_or_group == "hydra/sweeper" and o.get_value_element_as_str() != "basic")
        or o.key_or_group == "hparams_search"
        for o in overrides
    )
    _check_choices(registry, overrides, sampled)
    user = [o for o in overrides if not o.key_or_group.startswith("hydra")]
    # An experiment or search file may sweep keys itself (hydra.sweeper.params): check those
    # values too, or a typo there fails job by job only after the sweep has started.
    extra = _file_sweeps(registry, user, sampled)
    _check_choices(registry, extra, sampled)
    user += extra
    choices = [[f"{o.get_key_element()}={v}" for v in _values(o, registry, sampled)] for o in user]
    loadable: set[str] = set()  # model folders / hub ids already checked
    with hydra.initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        for combo in itertools.islice(_covering(choices), MAX_VALIDATED_COMBINATIONS):
            try:
                cfg = hydra.compose(config_name="config", overrides=list(combo))
                typed = OmegaConf.to_object(cfg)  # every node typed: a wrong type fails here
            except (HydraException, OmegaConfBaseException, ValueError) as exc:
                raise ConfigError(_one_line(exc)) from None
            check_known_keys(typed)
            _check_hook_names(registry, registry.get("algo", typed.algo.name).cls)
            check_multi_turn(registry, typed.algo.name, typed.task.name, typed.reward.name)
            check_engine(registry, typed.task.name, str(getattr(typed, "device", "auto")))
            check_data_parallel(registry, cfg)
            check_choices(typed)
            check_ranges(cfg)
            check_hardware(cfg)
            check_placed_models(registry, cfg)
            check_model_options(cfg.model)
            tuning.check_metric(cfg.optimized_metric)
            tuning.check_pruning(cfg)
            if cfg.model.name_or_path and cfg.model.name_or_path not in loadable:
                # Before stage 1 and before any folder: not after SFT trained for nothing.
                check_loadable(model_source(cfg.model.name_or_path))
                loadable.add(cfg.model.name_or_path)
            check_plugin_configs([typed.algo, typed.task, typed.reward, typed.feedback])
            # reward.path / algo.critic_path: each folder usable, a critic on the policy's tokens.
            check_model_folders(cfg, lambda t=typed.task: registry.get("task", t.name).cls(t))
            # A reward or feedback source judging by gold answers on data without them: before stage
            # 1, not at the first evaluation or in stage 2.
            check_gold_answers(
                registry, cfg, lambda t=typed.task: registry.get("task", t.name).cls(t)
            )
            Budget.from_config(to_object(cfg.budget))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m alignbench``; returns the process exit code."""
    global _REGISTRY
    argv = list(sys.argv[1:] if argv is None else argv)
    from hydra._internal.utils import get_args_parser

    # argparse stops taking overrides after a flag (`algo=a --multirun seed=1`): put flags first.
    # A stable sort: flags keep their order, overrides keep theirs.
    argv = sorted(argv, key=lambda a: not a.startswith("-") and ("=" in a or a[:1] == "~"))
    args = get_args_parser().parse_args(argv)
    try:
        # Started by accelerate launch / torchrun: join the other ranks (nothing in one process).
        distributed.setup()
        if distributed.world_size() > 1 and args.multirun:
            raise ConfigError(
                f"--multirun on {distributed.world_size()} processes is not supported — launch "
                "one job per accelerate launch (or sweep in one process per job)"
            )
        overrides = _parse_overrides(args.overrides)
        _REGISTRY = build_registry(_plugin_dirs(overrides))
        if not (args.help or args.hydra_help or args.info or args.shell_completion):
            validate(_REGISTRY, args.overrides)
    except AlignbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        argv += _default_dirs(args.overrides)
    except AlignbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not distributed.is_main_process():
        argv.append("hydra/job_logging=none")  # rank 0 alone writes the job's app.log
    sys.argv = [sys.argv[0], *argv]
    _FAILED.clear()
    tuning.FAILURES.clear()
    # Workers of a parallel launcher inherit this, and so know they are workers (signals.py).
    os.environ[signals.MAIN_PID_ENV] = str(os.getpid())
    signals.install(forward=True)
    try:
        code = _launch()
        stopped = signals.requested()
    finally:
        signals.uninstall()
        os.environ.pop(signals.MAIN_PID_ENV, None)
    if stopped is not None:
        print(
            f"error: stopped by signal {stopped}: {len(_FAILED)} job(s) interrupted (each saved "
            "a checkpoint where it had one) — run the same command again to resume",
            file=sys.stderr,
        )
        return signals.exit_code(stopped)
    if code:
        return code
    if tuning.FAILURES:
        return 1
    if _FAILED:
        shown = ", ".join(_FAILED[:5]) + (
            f" (+{len(_FAILED) - 5} more)" if len(_FAILED) > 5 else ""
        )
        print(
            f"{len(_FAILED)} job(s) failed: {shown} — each folder's summary.json holds the error "
            "and app.log the traceback",
            file=sys.stderr,
        )
        return 1
    return 0


def _launch() -> int:
    """Run Hydra on ``sys.argv``; the exit code of its own exits, 0 when it returns."""
    try:
        hydra.main(config_path=f"pkg://{CONF_PACKAGE}", config_name="config", version_base="1.3")(
            _job
        )()
    except SystemExit as exc:
        # A launcher that fails while its workers stop (e.g. joblib losing an idle worker to
        # the signal) is part of the stop, which main() reports; not a second problem.
        return exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:
        print("error: stopped at once by a second signal (no checkpoint saved)", file=sys.stderr)
        return 130
    return 0


def _default_dirs(overrides: list[str]) -> list[str]:
    """Output folders named after the command line, so the same command finds its earlier jobs.

    ``results/runs/<overrides>_<hash>`` for one job, ``results/sweeps/<overrides>_<hash>`` for a
    sweep (unless ``hydra.run.dir`` / ``hydra.sweep.dir`` are given). Re-running a command skips
    its finished jobs and resumes its unfinished ones.
    """
    keys = [o.split("=", 1)[0] for o in overrides]
    user = sorted(o for o in overrides if not o.startswith(("hydra.", "hydra/", "rerun")))
    digest = hashlib.sha1("\x00".join(user).encode()).hexdigest()[:8]
    slug = re.sub(r"[^A-Za-z0-9._+-]+", "-", "_".join(user).replace(",", "+"))[:80].strip("-_")
    name = f"{slug or 'defaults'}_{digest}"
    extra = []
    if "hydra.run.dir" not in keys:
        extra.append(f"hydra.run.dir=results/runs/{name}")
    if "hydra.sweep.dir" not in keys:
        extra.append(f"hydra.sweep.dir=results/sweeps/{name}")
    for key, folder in _output_folders(overrides + extra):
        _check_writable(key, folder)
    return extra


def _output_folders(overrides: list[str]) -> list[tuple[str, Path]]:
    """The folders a command will write into: job folders and the stage cache (their fixed
    part: an interpolation such as ``${now:…}`` is left out)."""
    found = [("cache_dir", Path("results/cache"))]
    for override in overrides:
        key, _, value = override.partition("=")
        if key in ("hydra.run.dir", "hydra.sweep.dir", "cache_dir") and value:
            fixed = value.split("${", 1)[0]
            found = [f for f in found if f[0] != key]
            found.append((key, Path(fixed) if fixed else Path(".")))
    return found


def _check_writable(key: str, folder: Path) -> None:
    """Fail early, in one line, when a folder cannot be created or written (a file in its way,
    a read-only folder), before Hydra creates anything."""
    probe = folder.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(
            f"{key}: cannot write into {folder} — {probe} is a file, not a folder; move it "
            f"or set {key} to another folder"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{key}: cannot write into {folder} — {probe} is not writable; run from a writable "
            f"folder or set {key} to one"
        )


def list_plugins(argv: list[str] | None = None) -> int:
    """``python -m alignbench.plugins``: list the registered algorithms, rewards and tasks.

    Each name is shown with the plugin that registered it and where that plugin came from (a
    distribution's entry point, or a file of a ``plugin_dirs`` folder). Plugins that failed to load
    are listed too, with their error.
    """
    parser = argparse.ArgumentParser(
        prog="python -m alignbench.plugins", description=list_plugins.__doc__
    )
    parser.add_argument("--plugin-dir", action="append", default=[], help="also load this folder")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        info = describe(build_registry(args.plugin_dir))
    except AlignbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for group, entries in info["groups"].items():  # type: ignore[union-attr]
        print(f"{group}:")
        for e in entries:
            print(f"  {e['name']:<14} {e['class']:<40} from {e['plugin']} — {e['origin']}")
    for name, error in info["failed"].items():  # type: ignore[union-attr]
        print(f"failed to load: {name}: {error}", file=sys.stderr)
    return 0
