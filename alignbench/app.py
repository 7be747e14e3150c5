"""The ``python -m alignbench`` command: validate the command line, then run Hydra jobs.

Before Hydra composes anything, the plugins are loaded (so a plugin's ``algo=<name>`` is a
config option), group names are checked against what the plugins registered, and each job's
config is composed once, so that a typo is one line naming the problem instead of a traceback.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import logging
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, IntervalSweep, Override
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from alignbench import checkpoint, jobdir, signals, tuning
from alignbench.budget import Budget, FlopCounter, set_threads
from alignbench.checkpoint import config_fingerprint
from alignbench.config import CONF_PACKAGE, shipped_yaml_names, ships_yaml, to_object
from alignbench.defaults import DefaultScore
from alignbench.errors import (
    UNKNOWN_BY_GROUP,
    AlignbenchError,
    ConfigError,
    Interrupted,
    PluginError,
)
from alignbench.hardware import check_hardware, place
from alignbench.loop import run_loop
from alignbench.lora import apply_lora, export_lora, is_lora
from alignbench.models import check_loadable, load_pretrained, save_pretrained
from alignbench.observers import ProgressBar, ResultsWriter, WandbLogger, write_json_atomic
from alignbench.provenance import git_commit, sha256_file
from alignbench.registry import (
    Registry,
    build_registry,
    hook_typos,
    implementers,
    load_plugin_dirs,
)
from alignbench.reward import PrepareContext
from alignbench.rm.feedback import Group
from alignbench.rm.stage import stage_groups
from alignbench.run import Run
from alignbench.stages import model_source, sft_stage
from alignbench.validation import (
    check_choices,
    check_known_keys,
    check_plugin_configs,
    check_ranges,
)

log = logging.getLogger("alignbench")

#: The registry of the current process, built by :func:`main` before Hydra starts its jobs.
_REGISTRY: Registry | None = None
#: How many sweep combinations are composed up front to catch config errors early.
MAX_VALIDATED_COMBINATIONS = 64


def library_versions() -> dict[str, str]:
    """Versions of Python, torch, transformers and alignbench, recorded in every summary."""
    import platform

    import transformers

    from alignbench import __version__

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "alignbench": __version__,
    }


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU) so a job is reproducible."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


RUN_HOOKS = ("alignbench_rollout", "alignbench_update", "alignbench_score", "alignbench_respond")


def _check_run_hooks(pm: Any, algorithm_name: str | None, trains: bool = True) -> None:
    """Exactly one implementer of rollout and update (the algorithm), at most one score override,
    and respond answered by the algorithm or by no one.

    With ``algorithm_name=None`` (before the algorithm is registered) no plugin may implement them.
    An algorithm with ``trains = False`` (best-of-N) need not implement rollout and update.
    """
    for hook in RUN_HOOKS:
        names = implementers(pm, hook)
        if algorithm_name is None:
            if names:
                raise PluginError(
                    f"{hook} is implemented by {', '.join(names)} — run hooks belong to the "
                    "algorithm object, not to plugin modules"
                )
            continue
        required = trains and hook in ("alignbench_rollout", "alignbench_update")
        if names != [algorithm_name] and (required or names):
            raise PluginError(
                f"{hook} must be implemented by the algorithm alone, found: "
                f"{', '.join(names) or 'none'}"
                " — run hooks belong to the algorithm object, not to plugin modules"
            )


def _check_hook_names(registry: Registry, cls: type) -> None:
    """An algorithm class whose hook methods are misspelt fails before stage 1, in one line."""
    typos = hook_typos(registry.pm, cls)
    if typos:
        raise PluginError(f"{cls.__qualname__}: {typos[0]}")


def check_multi_turn(registry: Registry, algo: str, task: str, reward: str) -> None:
    """A multi-turn task runs only with a reward that scores dialogues and an algorithm that
    declares ``multi_turn = True`` (one that credits assistant tokens through ``response_mask``
    and reads turn ends from the batch) and answers no evaluation itself (``alignbench_respond``
    answers single questions); a multi-turn reward needs such a task. The fixes named are the
    registered plugins that fit."""

    def multi(group: str, name: str) -> bool:
        return bool(getattr(registry.get(group, name).cls, "multi_turn", False))

    def fitting(group: str, wanted: bool) -> str:
        names = [n for n in registry.names(group) if multi(group, n) == wanted]
        return ", ".join(f"{group}={n}" for n in names) or f"none is registered in {group}"

    task_multi, reward_multi = multi("task", task), multi("reward", reward)
    if task_multi and not reward_multi:
        raise ConfigError(
            f"task={task} is a multi-turn task and reward={reward} scores single responses — "
            f"use a reward that scores dialogues ({fitting('reward', True)})"
        )
    if reward_multi and not task_multi:
        raise ConfigError(
            f"reward={reward} scores dialogues and task={task} is single-turn — use a multi-turn "
            f"task ({fitting('task', True)}) or a single-turn reward"
        )
    if not task_multi:
        return
    cls = registry.get("algo", algo).cls
    if not multi("algo", algo):
        raise ConfigError(
            f"algo={algo} does not support multi-turn tasks (task={task}) — use one that does "
            f"({fitting('algo', True)}); a plugin declares multi_turn = True on its class "
            "(docs/plugins.md)"
        )
    if hasattr(cls, "alignbench_respond"):
        raise ConfigError(
            f"algo={algo} answers evaluation questions itself (alignbench_respond), which a "
            f"multi-turn task (task={task}) evaluates as whole greedy dialogues — drop "
            "multi_turn = True from it or its alignbench_respond"
        )


def plugin_code(registry: Registry, cfg: DictConfig) -> dict[str, str]:
    """``{role: "<file>:<sha256 prefix>"}`` of the plugins a job runs (algorithm, task, reward,
    and the feedback source where the reward uses it): a finished result or a checkpoint made by
    other plugin code is not this job's result."""
    classes = {
        "algo": registry.get("algo", cfg.algo.name).cls,
        "task": registry.get("task", cfg.task.name).cls,
        "reward": registry.get("reward", cfg.reward.name).cls,
    }
    if getattr(classes["reward"], "uses_feedback", False):
        classes["feedback"] = registry.get("feedback", cfg.feedback.name).cls
    out = {}
    for role, cls in classes.items():
        try:
            file = Path(inspect.getsourcefile(cls) or "")
        except TypeError:  # a class without a source file (built in C)
            file = Path("")
        digest = sha256_file(file)[:16] if file.is_file() else "unknown"
        out[role] = f"{file.name or cls.__qualname__}:{digest}"
    return out


def _code_changes(recorded: dict[str, str] | None, current: dict[str, str]) -> str | None:
    """What differs between the plugin code a result was made with and the current code."""
    if recorded is None:
        return "it records no plugin code (made by an older alignbench)"
    changed = [
        f"{role} {current.get(role, recorded.get(role, '?')).split(':')[0]}"
        for role in sorted(set(recorded) | set(current))
        if recorded.get(role) != current.get(role)
    ]
    return f"plugin code changed since: {', '.join(changed)}" if changed else None


def _finished_summary(
    output_dir: Path, fingerprint: str, code: dict[str, str] | None = None
) -> dict[str, Any] | None:
    """The summary of a finished job with the same config in ``output_dir``, if there is one.

    With ``code``: a finished result of the same config made by other plugin code is refused
    (fixed code must never reuse stale results, nor silently replace them).
    """
    summary = jobdir.summary_status(output_dir)
    if summary is None:
        return None
    same = summary.get("fingerprint") == fingerprint and summary.get("status") == "finished"
    if same and code is not None:
        changed = _code_changes(summary.get("code"), code)
        if changed:
            raise ConfigError(
                f"{output_dir} finished with this config but other code ({changed}) — pass "
                "rerun=true to run it again (the old results are moved aside)"
            )
    return summary if same else None


def run_job(
    cfg: DictConfig,
    output_dir: Path,
    registry: Registry | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    claimed: bool = False,
) -> dict[str, Any]:
    """Run one job (stage 1 if not cached, then the algorithm's loop); returns its summary.

    ``claimed``: the caller already locked the folder, checked it and moved old results aside
    (the command line does, see :mod:`alignbench.jobdir`); library callers leave it False.
    """
    registry = registry or _REGISTRY or build_registry()
    if cfg.plugin_dirs:
        load_plugin_dirs(registry, list(cfg.plugin_dirs))
    check_ranges(cfg)  # the command line checked this already; library callers need it too
    check_choices(to_object(cfg))
    device = check_hardware(cfg)
    if not claimed:
        jobdir.check_free(cfg, output_dir)
    fingerprint = config_fingerprint(cfg)
    code = plugin_code(registry, cfg)
    finished = None if cfg.rerun else _finished_summary(output_dir, fingerprint, code)
    if finished is not None:
        log.info(
            "%s already finished with this config: skipped (rerun=true runs it again)", output_dir
        )
        return {**finished, "skipped": True}
    resume_from = None if cfg.rerun else checkpoint.latest(output_dir)
    kept_lines = 0  # lines of metrics.jsonl written up to the checkpoint we resume from
    if cfg.rerun and not claimed:
        jobdir.move_aside(output_dir)
    elif resume_from is not None:
        saved = checkpoint.verify(resume_from)  # a damaged checkpoint is refused here, whole
        kept_lines = int(saved["metrics_lines"])
        if saved["fingerprint"] != fingerprint:
            raise ConfigError(
                f"{output_dir} holds a checkpoint of a different config — pass rerun=true to "
                "start over (the old results are moved aside, not deleted)"
            )
        changed = _code_changes(saved.get("code"), code)
        if changed:
            # Resuming under other code would not give the numbers of either version.
            raise ConfigError(
                f"{output_dir} holds a checkpoint made by other code ({changed}) — pass "
                "rerun=true to start over (the old results are moved aside, not deleted)"
            )
    if not claimed:  # library use: record the config the folder's results come from
        jobdir.write_hydra_record(output_dir, cfg, None, None)
    started = time.perf_counter()
    set_threads(cfg.threads)
    seed_everything(cfg.seed)
    task = registry.get("task", cfg.task.name).cls(to_object(cfg.task))
    reward = registry.get("reward", cfg.reward.name).cls(to_object(cfg.reward), task)
    algo_entry = registry.get("algo", cfg.algo.name)
    _check_hook_names(registry, algo_entry.cls)
    check_multi_turn(registry, cfg.algo.name, cfg.task.name, cfg.reward.name)
    budget = Budget.from_config(to_object(cfg.budget))
    _check_run_hooks(registry.pm, None)  # before any training, not after stage 1
    sft_path, stage_info = sft_stage(cfg, task)
    policy, tokenizer = load_pretrained(sft_path)
    # LoRA after stage 1 (only the adapters train); every model lives on `device=`.
    policy = apply_lora(policy.to(device), cfg.model.lora)
    stages: dict[str, Any] = {"stage/sft": stage_info}
    context = PrepareContext(
        cfg=cfg,
        task=task,
        tokenizer=tokenizer,
        sft_path=sft_path,
        sft_key=stage_info["key"],
        device=device,
        feedback=lambda: registry.get("feedback", cfg.feedback.name).cls(
            to_object(cfg.feedback), task
        ),
    )
    stages.update(reward.prepare(context))  # what the reward needs (a learned one: stage 2)

    def ranked_groups(split: str) -> list[Group]:
        # Stage 2 on demand (an offline algorithm's data), cached like the reward model's.
        groups, stages["stage/rm"] = stage_groups(context, split)
        return groups

    policy.eval()
    flops = FlopCounter()
    flops.track(policy, "policy")
    seed_everything(cfg.seed)
    run = Run(
        cfg=cfg,
        config=to_object(cfg.algo),
        task=task,
        reward=reward,
        tokenizer=tokenizer,
        policy=policy,
        sft_path=sft_path,
        budget=budget,
        flops=flops,
        generator=torch.Generator().manual_seed(cfg.seed),
        output_dir=output_dir,
        pm=registry.pm,
        groups_loader=ranked_groups,
        code=code,
        precision=cfg.precision,
    )
    pm = registry.pm
    reward.setup(run)
    algorithm = algo_entry.cls(run, run.config)
    place(algorithm, device)  # a critic or value head the algorithm built on the CPU
    plugins: dict[str, Any] = {
        f"algorithm:{cfg.algo.name}": algorithm,
        "core:default-score": DefaultScore(),
        "core:results": ResultsWriter(output_dir, keep_lines=kept_lines),
    }
    if cfg.logger.wandb.enabled:
        plugins["core:wandb"] = WandbLogger(run, group, tags=tags)
    if cfg.logger.progress_bar:
        plugins["core:progress"] = ProgressBar(run)
    for name, plugin in plugins.items():
        pm.register(plugin, name=name)
    summary: dict[str, Any] = {
        "status": "running",
        "algorithm": cfg.algo.name,
        "task": cfg.task.name,
        "reward": cfg.reward.name,
        "seed": cfg.seed,
        "world": cfg.world,
        "fingerprint": fingerprint,
        # What the compare report shows for this task by default (Task.headline_metrics).
        "headline_metrics": list(task.headline_metrics),
        "code": code,
        # What produced these numbers: the code and the libraries.
        "git_commit": git_commit(),
        "versions": library_versions(),
        "output_dir": str(output_dir),
        **stages,
    }
    try:
        _check_run_hooks(pm, f"algorithm:{cfg.algo.name}", getattr(algorithm, "trains", True))
        result = run_loop(run, algorithm, resume_from)
        summary.update(result["final"])
        summary.update(reward.final_metrics(run))  # e.g. the policy read as a reward model
        summary["initial"] = result["initial"]
        summary["model_dir"] = str(export_policy(run, output_dir / "model"))
        summary["status"] = "finished"
    except BaseException as exc:
        summary["status"] = "interrupted" if isinstance(exc, Interrupted) else "failed"
        summary["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        summary.update(run.budget.metrics())
        summary["steps"] = run.step
        summary["wall_time"] = time.perf_counter() - started
        summary["flops_by_model"] = dict(run.flops.by_model)
        try:
            pm.hook.alignbench_on_run_end(run=run, summary=summary)
        finally:
            for name in plugins:
                pm.unregister(name=name)
            flops.close()
    return summary


def export_policy(run: Run, folder: Path) -> Path:
    """Write the trained policy and its tokenizer as a Hugging Face folder (what a user takes
    home: ``AutoModelForCausalLM.from_pretrained(folder)``), atomically: temp folder, rename."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if is_lora(run.policy):  # the adapter (and, if asked, the merged model)
        export_lora(run.policy, run.tokenizer, tmp, run.cfg.model.lora.merge_on_export)
    else:
        save_pretrained(run.policy, run.tokenizer, tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


#: Jobs of this process that failed (a multirun goes on; the exit code says something failed).
_FAILED: list[str] = []


class FailedJobs(Callback):
    """Finds the failed jobs of a multirun in the parent process, whatever the launcher.

    A parallel launcher (joblib, submitit) runs jobs in other processes, whose ``_FAILED`` the
    parent never sees; so at the end of the multirun the parent reads the status of every job
    folder written since the multirun started.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Note when the sweep started."""
        self.started = time.time()

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
    signals.install()  # a parallel launcher's worker: its jobs stop cleanly too
    if signals.requested() is not None:
        # The sweep is stopping: a worker that was asked to stop starts no further job.
        print(f"[alignbench] {output_dir.name}: not started (the sweep is stopping)", flush=True)
        return
    try:
        with signals.busy(), jobdir.locked(output_dir):
            jobdir.check_free(cfg, output_dir)
            if cfg.rerun:
                jobdir.move_aside(output_dir)
            jobdir.write_hydra_record(output_dir, cfg, hydra_cfg, list(hydra_cfg.overrides.task))
            claimed = True
            summary = run_job(cfg, output_dir, group=group, tags=tags, claimed=True)
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
    for o in overrides:
        group = o.key_or_group.lstrip("+")
        if group in UNKNOWN_BY_GROUP and o.package is None and not o.is_delete():
            for name in _values(o, registry, sampled):
                # A shipped YAML variant of a registered plugin (e.g. algo=ppo_plain) is a choice
                # too; its `name` key says which plugin runs it.
                if not ships_yaml(group, name):
                    registry.get(group, name)
    user = [o for o in overrides if not o.key_or_group.startswith("hydra")]
    choices = [[f"{o.get_key_element()}={v}" for v in _values(o, registry, sampled)] for o in user]
    loadable: set[str] = set()  # model folders / hub ids already checked
    with hydra.initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        for combo in itertools.islice(itertools.product(*choices), MAX_VALIDATED_COMBINATIONS):
            try:
                cfg = hydra.compose(config_name="config", overrides=list(combo))
                typed = OmegaConf.to_object(cfg)  # every node typed: a wrong type fails here
            except (HydraException, OmegaConfBaseException, ValueError) as exc:
                raise ConfigError(_one_line(exc)) from None
            check_known_keys(typed)
            _check_hook_names(registry, registry.get("algo", typed.algo.name).cls)
            check_multi_turn(registry, typed.algo.name, typed.task.name, typed.reward.name)
            check_choices(typed)
            check_ranges(cfg)
            check_hardware(cfg)
            tuning.check_metric(cfg.optimized_metric)
            if cfg.model.name_or_path and cfg.model.name_or_path not in loadable:
                # Before stage 1 and before any folder: not after SFT trained for nothing.
                check_loadable(model_source(cfg.model.name_or_path))
                loadable.add(cfg.model.name_or_path)
            check_plugin_configs([typed.algo, typed.task, typed.reward, typed.feedback])
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
    sys.argv = [sys.argv[0], *argv]
    _FAILED.clear()
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
