"""One job: its config and folder, the plugin registry, and the steps that build its Run and train.

:func:`run_job` takes :class:`Job`'s steps in order: check, skip a finished result, claim the
folder (resume or start over), build the Run (task, reward, stage 1, what the reward prepares),
register the plugins, train. A test or a benchmark takes only the steps it needs: ``build()`` and
``start()`` give a Run whose hooks can be stepped by hand, without the loop; ``make_run()`` makes
the Run of models built by hand (a benchmark's), with no stage 1.
"""

from __future__ import annotations

import inspect
import logging
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from alignbench import checkpoint, distributed, jobdir
from alignbench.budget import Budget, FlopCounter, set_threads
from alignbench.checkpoint import config_fingerprint
from alignbench.config import BudgetConfig, to_object
from alignbench.defaults import DefaultScore
from alignbench.errors import ConfigError, DataError, Interrupted, PluginError
from alignbench.hardware import check_hardware, grad_scaler, model_device, place
from alignbench.loop import run_loop
from alignbench.lora import apply_lora, export_lora, is_lora
from alignbench.model_folders import check_model_folders, folder_fingerprints
from alignbench.model_options import apply_model_options, check_model_options
from alignbench.models import load_pretrained, save_pretrained
from alignbench.observers import ProgressBar, ResultsWriter, WandbLogger
from alignbench.placement import (
    apply_placement,
    check_placed_roles,
    check_placement,
    placed_models,
)
from alignbench.provenance import git_commit, sha256_file
from alignbench.registry import (
    Registry,
    build_registry,
    engine_implementations,
    engine_plugins,
    hook_typos,
    implementers,
    load_plugin_dirs,
)
from alignbench.reward import PrepareContext, Reward
from alignbench.rm.feedback import Group
from alignbench.rm.stage import stage_groups
from alignbench.run import Run
from alignbench.stages import sft_stage
from alignbench.task import Task
from alignbench.tuning import trial_pruner
from alignbench.validation import check_choices, check_plugin_configs, check_ranges

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger("alignbench")

RUN_HOOKS = ("alignbench_rollout", "alignbench_update", "alignbench_score", "alignbench_respond")


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


# -- the plugins' contracts, checked before stage 1 trains -----------------------------------------


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


def check_placed_models(registry: Registry, cfg: DictConfig) -> None:
    """``placement.<model>=<device>`` of a model this job will not have (RRHF's critic, a rule
    reward's model) is one line before stage 1, as the algorithm and reward classes declare it
    (``model_roles``); a model of a plugin that declares nothing is checked once it is built."""
    devices = check_placement(cfg.get("placement") or {})
    if not devices:
        return
    algorithm = registry.get("algo", cfg.algo.name).cls
    reward = registry.get("reward", cfg.reward.name).cls
    check_placed_roles(devices, algorithm, to_object(cfg.algo), reward, to_object(cfg.reward))


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


def check_engine(registry: Registry, task: str, device: str = "auto") -> None:
    """At most one plugin implements ``alignbench_generate`` (firstresult would let one of two
    answer silently), and none on a multi-turn task (it answers single turns); then the
    engine's own start-up check (``alignbench_engine_check``: its package, its device)."""
    names = engine_plugins(registry.pm)
    if len(names) > 1:
        raise PluginError(
            f"alignbench_generate is implemented by {', '.join(names)} — one external inference "
            "engine at a time: keep one of these plugins"
        )
    if names and getattr(registry.get("task", task).cls, "multi_turn", False):
        raise ConfigError(
            f"task={task} is multi-turn and {names[0]} (alignbench_generate, an external "
            "inference engine) samples single turns — remove the engine plugin or use a "
            "single-turn task"
        )
    if names:
        registry.pm.hook.alignbench_engine_check(device=str(device))


def _asks_feedback(registry: Registry, cfg: DictConfig, kind: str) -> bool:
    """Whether the job's ``kind`` plugin (reward or algorithm) asks the feedback source for
    rankings: its ``asks_feedback(config)`` classmethod where it has one, else its
    ``uses_feedback`` flag."""
    name = OmegaConf.select(cfg, f"{kind}.name")
    if not name:
        return False
    cls = registry.get(kind, name).cls
    asks = getattr(cls, "asks_feedback", None)
    if callable(asks):
        return bool(asks(to_object(cfg[kind])))
    return bool(getattr(cls, "uses_feedback", False))


def _missing_rl_gold(task: Task) -> str | None:
    """``task.missing_gold`` for the RL prompts alone (what simulated annotators rank), where
    the task's method takes ``splits``; else for what it checks by default."""
    if "splits" in inspect.signature(task.missing_gold).parameters:
        return task.missing_gold(splits=("rl",))
    return task.missing_gold()


def check_gold_answers(registry: Registry, cfg: DictConfig, make_task: Callable[[], Task]) -> None:
    """A reward that judges against gold answers, or a feedback source that ranks by them
    (``needs_gold = True`` on its class; the source only where the reward or the algorithm
    asks it for rankings), on a task whose scored (for a source: RL) prompts lack them
    (``Task.missing_gold``) is one line before stage 1 (it failed at the first evaluation, or
    in stage 2). A reward, source or task that declares nothing is not checked."""
    reward_cls = registry.get("reward", cfg.reward.name).cls
    task_cls = registry.get("task", cfg.task.name).cls
    source = OmegaConf.select(cfg, "feedback.name")
    ranks_by_gold = bool(source) and getattr(
        registry.get("feedback", source).cls, "needs_gold", False
    )
    source_needs = ranks_by_gold and any(
        _asks_feedback(registry, cfg, kind) for kind in ("reward", "algo")
    )
    reward_needs = getattr(reward_cls, "needs_gold", False)
    if not (reward_needs or source_needs):
        return
    if getattr(task_cls, "missing_gold", Task.missing_gold) is Task.missing_gold:
        return  # the task cannot say: left to the judge, as before (nothing built here)
    task = make_task()
    reward_why = task.missing_gold() if reward_needs else None
    # Asked or not now: a refused rule reward's message must not send the user to a reward
    # model whose stage 2 this source would then fail.
    source_why = _missing_rl_gold(task) if ranks_by_gold else None
    people = ", ".join(
        f"feedback={name}"
        for name in registry.names("feedback")
        if not getattr(registry.get("feedback", name).cls, "needs_gold", False)
    )
    if not reward_why:
        if source_why and source_needs:
            raise DataError(
                f"feedback={source} ranks responses by their gold answers, but {source_why}; "
                f"or use rankings by people ({people or 'no such source is registered'})"
            )
        return
    multi = bool(getattr(task_cls, "multi_turn", False))
    fitting = [
        f"reward={name}"
        for name in registry.names("reward")
        if not getattr(registry.get("reward", name).cls, "needs_gold", False)
        and bool(getattr(registry.get("reward", name).cls, "multi_turn", False)) == multi
    ]
    also = (
        f" — and as feedback={source} ranks by gold answers too, a reward model or DPO needs "
        f"rankings by people ({people or 'no such source is registered'})"
        if source_why
        else ""
    )
    raise DataError(
        f"reward={cfg.reward.name} judges responses against gold answers, but {reward_why}; or "
        f"use a reward that needs none ({', '.join(fitting) or 'none is registered'}){also}"
    )


def check_data_parallel(registry: Registry, cfg: DictConfig) -> None:
    """On several processes (``accelerate launch`` / ``torchrun``): an algorithm that declares
    ``data_parallel = True``, prompts that split evenly over the ranks, ``on_nonfinite=stop``
    and a reward that does not change during training (``Reward.changes_during_training``);
    else one line naming the fix."""
    size = distributed.world_size()
    if size == 1:
        return
    algo = cfg.algo.name
    if not getattr(registry.get("algo", algo).cls, "data_parallel", False):
        fitting = [
            f"algo={n}"
            for n in registry.names("algo")
            if getattr(registry.get("algo", n).cls, "data_parallel", False)
        ]
        raise ConfigError(
            f"algo={algo} is not data-parallel (this job runs on {size} processes) — run it in "
            f"one process, or use one that is ({', '.join(fitting) or 'none is registered'}); "
            "a plugin declares data_parallel = True on its class (docs/plugins.md)"
        )
    per_step = int(cfg.algo.prompts_per_step)
    if per_step % size:
        raise ConfigError(
            f"algo.prompts_per_step={per_step} does not split evenly over {size} processes — "
            f"use a multiple of {size}"
        )
    if cfg.on_nonfinite == "skip":
        raise ConfigError(
            f"on_nonfinite=skip is not supported on {size} processes — use on_nonfinite=stop"
        )
    reward_cls = registry.get("reward", cfg.reward.name).cls
    changes = reward_cls.changes_during_training(cfg)
    if changes:
        raise ConfigError(
            f"reward={cfg.reward.name} cannot run on {size} processes ({changes}) — run it in "
            "one process, or use a reward that stays fixed during training (a rule reward, or "
            "reward=rm with feedback.rounds=0)"
        )


# -- what a result was made with ------------------------------------------------------------------


def plugin_code(registry: Registry, cfg: DictConfig) -> dict[str, str]:
    """``{role: "<file>:<sha256 prefix>"}`` of the plugins a job runs (algorithm, task, reward,
    and the feedback source where the reward or the algorithm uses it — ``uses_feedback`` on
    its class, e.g. DPO's ranked groups): a finished result or a checkpoint made by other
    plugin code is not this job's result."""
    classes = {
        "algo": registry.get("algo", cfg.algo.name).cls,
        "task": registry.get("task", cfg.task.name).cls,
        "reward": registry.get("reward", cfg.reward.name).cls,
    }
    if any(getattr(classes[role], "uses_feedback", False) for role in ("reward", "algo")):
        classes["feedback"] = registry.get("feedback", cfg.feedback.name).cls
    # An external inference engine samples the job's responses: its code is the job's too (a
    # result made with the built-in sampler is not one made through an engine, nor the
    # reverse). Only when there is one, so other jobs' records stay as they were.
    for name, plugin in engine_implementations(registry.pm):
        classes[f"engine:{name}"] = plugin if inspect.ismodule(plugin) else type(plugin)
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
    output_dir: Path,
    fingerprint: str,
    code: dict[str, str] | None = None,
    inputs: dict[str, str] | None = None,
) -> dict[str, Any] | None:
    """The summary of a finished job with the same config in ``output_dir``, if there is one.

    With ``code``: a finished result of the same config made by other plugin code is refused
    (fixed code must never reuse stale results, nor silently replace them); so is one with
    another fingerprint (other ``inputs``: the contents of the files the job reads).
    """
    summary = jobdir.summary_status(output_dir)
    if summary is None:
        return None
    finished = summary.get("status") == "finished"
    same = summary.get("fingerprint") == fingerprint and finished
    if finished and not same:
        # The config is this one (another was refused before: jobdir.check_free), so what
        # differs is what the fingerprint hashes besides it: the contents of the files it read
        # (or results recorded before those were part of it). Never run over them silently.
        recorded = summary.get("inputs")
        keys = sorted(
            k
            for k in set(recorded or {}) | set(inputs or {})
            if (recorded or {}).get(k) != (inputs or {}).get(k)
        )
        if recorded and keys:
            what = f"other contents of {', '.join(keys)}"
        elif not recorded and inputs:
            what = "input files not recorded (made before their contents were part of its identity)"
        else:  # the same inputs: only the recorded fingerprint says they differ
            what = (
                f"the same inputs but fingerprint {summary.get('fingerprint')} (this job's: "
                f"{fingerprint})"
            )
        raise ConfigError(
            f"{output_dir} holds finished results of this config made from {what} — pass "
            "rerun=true to run it again (the old results are moved aside), or choose another "
            "output folder"
        )
    if same and code is not None:
        changed = _code_changes(summary.get("code"), code)
        if changed:
            raise ConfigError(
                f"{output_dir} finished with this config but other code ({changed}) — pass "
                "rerun=true to run it again (the old results are moved aside)"
            )
    return summary if same else None


# -- the job --------------------------------------------------------------------------------------


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
    job = Job(cfg, output_dir, registry or build_registry(), claimed=claimed)
    job.check()
    finished = job.finished()
    if finished is not None:
        log.info(
            "%s already finished with this config: skipped (rerun=true runs it again)", output_dir
        )
        return {**finished, "skipped": True}
    job.claim()
    job.build()
    job.register(group, tags)
    return job.train()


class Job:
    """One job: the composed config, its output folder and the plugin registry, and what the
    steps build (the task, the reward, the Run, the algorithm and the plugins registered for it).

    ``claimed``: the caller already locked the folder, checked it and moved old results aside.
    """

    def __init__(
        self,
        cfg: DictConfig,
        output_dir: Path,
        registry: Registry | None = None,
        claimed: bool = False,
    ) -> None:
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.registry = registry or build_registry()
        self.claimed = claimed
        self.device: torch.device | None = None
        self.fingerprint = ""
        self.inputs: dict[str, str] = {}
        self.code: dict[str, str] = {}
        self.resume_from: Path | None = None
        self.kept_lines = 0  # lines of metrics.jsonl written up to the checkpoint resumed from
        self.started = time.perf_counter()
        self.task: Task | None = None
        self.reward: Reward | None = None
        self.context: PrepareContext | None = None
        self.stages: dict[str, Any] = {}
        self.run: Run | None = None
        self.algorithm: Any = None
        self.plugins: dict[str, Any] = {}

    def check(self) -> None:
        """The config's values, the job folder, and the fingerprint of the config and of the
        plugin code (before anything is written or trained)."""
        cfg = self.cfg
        if cfg.plugin_dirs:
            load_plugin_dirs(self.registry, list(cfg.plugin_dirs))
        check_ranges(cfg)  # the command line checked this already; library callers need it too
        check_choices(to_object(cfg))
        distributed.setup()  # a job started by accelerate launch / torchrun joins its ranks
        # Each plugin config's own validate(), as the command line runs it: library callers and
        # the ranks a launcher starts (which know the world size) get the same one-line refusals.
        check_plugin_configs(
            [to_object(cfg[group]) for group in ("algo", "task", "reward", "feedback")]
        )
        check_data_parallel(self.registry, cfg)
        # After plugin_dirs: its engine is loaded.
        check_engine(self.registry, cfg.task.name, str(OmegaConf.select(cfg, "device") or "auto"))
        self.device = check_hardware(cfg)
        check_placed_models(self.registry, cfg)  # not when the algorithm is built, after stage 1
        check_model_options(cfg.get("model") or {})  # before stage 1 (the command line did too)
        # reward.path / algo.critic_path: each folder usable, a critic on the policy's tokens.
        check_model_folders(
            cfg, lambda: self.registry.get("task", cfg.task.name).cls(to_object(cfg.task))
        )
        check_gold_answers(  # gold-judging reward or feedback on data without gold
            self.registry,
            cfg,
            lambda: self.registry.get("task", cfg.task.name).cls(to_object(cfg.task)),
        )
        if not self.claimed:
            jobdir.check_free(cfg, self.output_dir)
        # The files it reads, hashed once now: the fingerprint, the summary and every
        # checkpoint record these, so a file edited while the job runs is not taken for them.
        self.inputs = folder_fingerprints(cfg)
        self.fingerprint = config_fingerprint(cfg)
        self.code = plugin_code(self.registry, cfg)

    def finished(self) -> dict[str, Any] | None:
        """The summary of a finished job of this config and code in the folder (None: run it)."""
        if self.cfg.rerun:
            return None
        # Rank 0's reading, on every rank: all of them skip the job, or none.
        return distributed.decided_on_main(
            lambda: _finished_summary(self.output_dir, self.fingerprint, self.code, self.inputs)
        )

    def claim(self) -> None:
        """Start over (``rerun=true``: old results moved aside) or find the checkpoint to resume
        from, refusing one of another config or code; a library caller's folder gets the record
        of its config. With several processes rank 0 does it and every rank resumes from the
        checkpoint it found."""

        def claimed() -> tuple[Path | None, int]:
            self._claim()
            return self.resume_from, self.kept_lines

        self.resume_from, self.kept_lines = distributed.decided_on_main(claimed)

    def _claim(self) -> None:
        cfg, output_dir = self.cfg, self.output_dir
        self.resume_from = None if cfg.rerun else checkpoint.latest(output_dir)
        if cfg.rerun and not self.claimed:
            jobdir.move_aside(output_dir)
        elif self.resume_from is not None:
            saved = checkpoint.verify(self.resume_from)  # a damaged checkpoint is refused whole
            self.kept_lines = int(saved["metrics_lines"])
            if saved["fingerprint"] != self.fingerprint:
                recorded = saved.get("inputs")
                changed = sorted(
                    k
                    for k in set(recorded or {}) | set(self.inputs)
                    if (recorded or {}).get(k) != self.inputs.get(k)
                )
                if recorded is not None and changed:
                    raise ConfigError(
                        f"{output_dir} holds a checkpoint of a job made from other contents of "
                        f"{', '.join(changed)} (the same names, other files) — pass rerun=true "
                        "to start over (the old results are moved aside, not deleted)"
                    )
                raise ConfigError(
                    f"{output_dir} holds a checkpoint of a different config — pass rerun=true to "
                    "start over (the old results are moved aside, not deleted)"
                )
            changed = _code_changes(saved.get("code"), self.code)
            if changed:
                # Resuming under other code would not give the numbers of either version.
                raise ConfigError(
                    f"{output_dir} holds a checkpoint made by other code ({changed}) — pass "
                    "rerun=true to start over (the old results are moved aside, not deleted)"
                )
        if not self.claimed:  # library use: record the config the folder's results come from
            jobdir.write_hydra_record(output_dir, cfg, None, None)

    def build(self) -> Run:
        """The task and the reward, the algorithm's contracts checked (before stage 1 trains),
        stage 1 and what the reward prepares (stage 2 for a learned reward), then the Run."""
        if self.device is None:  # a caller that goes straight to the Run
            self.check()
        cfg, registry = self.cfg, self.registry
        self.started = time.perf_counter()
        set_threads(cfg.threads)
        seed_everything(cfg.seed)
        self.task = registry.get("task", cfg.task.name).cls(to_object(cfg.task))
        self.reward = registry.get("reward", cfg.reward.name).cls(to_object(cfg.reward), self.task)
        _check_hook_names(registry, registry.get("algo", cfg.algo.name).cls)
        check_multi_turn(registry, cfg.algo.name, cfg.task.name, cfg.reward.name)
        budget = Budget.from_config(to_object(cfg.budget))
        _check_run_hooks(registry.pm, None)  # before any training, not after stage 1
        policy, tokenizer, sft_path = self.prepare_models()
        policy.eval()
        seed_everything(cfg.seed)
        return self.make_run(
            config=to_object(cfg.algo),
            task=self.task,
            reward=self.reward,
            tokenizer=tokenizer,
            policy=policy,
            sft_path=sft_path,
            budget=budget,
            groups_loader=self.ranked_groups,
            precision=cfg.precision,
        )

    def prepare_models(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Path]:
        """Stage 1 (SFT, cached) and the policy it starts (with LoRA after it: only the adapters
        train) on ``device=``; then what the reward prepares (a learned reward: stage 2)."""
        cfg, task = self.cfg, self.task
        # Several processes: rank 0 builds (or finds) the cached stage, the others then find it.
        with distributed.main_process_first():
            sft_path, stage_info = sft_stage(cfg, task, self.device)  # each rank's own device
        policy, tokenizer = load_pretrained(sft_path)
        policy = apply_lora(policy.to(self.device), cfg.model.lora)
        # model.gradient_checkpointing / model.compile (off by default): the policy now, the
        # algorithm's models when it has built them.
        apply_model_options({"policy": policy}, cfg.model, trained=("policy",))
        self.stages = {"stage/sft": stage_info}
        self.context = PrepareContext(
            cfg=cfg,
            task=task,
            tokenizer=tokenizer,
            sft_path=sft_path,
            sft_key=stage_info["key"],
            device=self.device,
            feedback=lambda: self.registry.get("feedback", cfg.feedback.name).cls(
                to_object(cfg.feedback), task
            ),
        )
        with distributed.main_process_first():
            self.stages.update(self.reward.prepare(self.context))
        return policy, tokenizer, sft_path

    def ranked_groups(self, split: str) -> list[Group]:
        """Stage 2's ranked groups on demand (an offline algorithm's data), cached like the
        reward model's."""
        groups, self.stages["stage/rm"] = stage_groups(self.context, split)
        return groups

    def make_run(
        self,
        *,
        config: Any,
        task: Task | None,
        reward: Reward,
        tokenizer: PreTrainedTokenizerBase,
        policy: PreTrainedModel,
        sft_path: Path,
        budget: Budget | None = None,
        groups_loader: Callable[[str], list[Group]] | None = None,
        precision: str = "fp32",
    ) -> Run:
        """The Run of these models: the policy's FLOPs counted, sampling seeded by ``cfg.seed``
        (the default budget where none is given)."""
        flops = FlopCounter()
        flops.track(policy, "policy")
        self.run = Run(
            cfg=self.cfg,
            config=config,
            task=task,
            reward=reward,
            tokenizer=tokenizer,
            policy=policy,
            sft_path=sft_path,
            budget=Budget.from_config(BudgetConfig()) if budget is None else budget,
            flops=flops,
            # Each rank samples its own stream (rank 0's is the one-process stream).
            generator=torch.Generator().manual_seed(self.cfg.seed + 1_000_003 * distributed.rank()),
            output_dir=self.output_dir,
            pm=self.registry.pm,
            groups_loader=groups_loader,
            code=self.code,
            fingerprint=self.fingerprint,
            inputs=self.inputs,
            precision=precision,
            # fp16's loss scaler (None for fp32 and bf16: their steps are untouched).
            scaler=grad_scaler(self.device or model_device(policy), precision),
        )
        return self.run

    def start(self, name: str | None = None) -> Any:
        """Set the reward up on the Run, make the algorithm ``name`` (``cfg.algo.name`` by default)
        on the Run's device and register it with the default score: the run hooks answer, no
        observer records. Returns the algorithm."""
        self._register(self._algorithm(name))
        return self.algorithm

    def register(self, group: str | None = None, tags: list[str] | None = None) -> None:
        """Every plugin of the job: the algorithm (as :meth:`start`), the results writer and the
        observers the config asks for (W&B with the sweep's ``group`` and ``tags``, progress)."""
        cfg = self.cfg
        plugins = self._algorithm(None)
        if not distributed.is_main_process():  # rank 0 alone writes results, W&B and progress
            self._register(plugins)
            return
        plugins["core:results"] = ResultsWriter(self.output_dir, keep_lines=self.kept_lines)
        if cfg.logger.wandb.enabled:
            plugins["core:wandb"] = WandbLogger(self.run, group, tags=tags)
        if cfg.logger.progress_bar:
            plugins["core:progress"] = ProgressBar(self.run)
        self._register(plugins)

    def _algorithm(self, name: str | None) -> dict[str, Any]:
        name = name or self.cfg.algo.name
        run = self.run
        run.reward.setup(run)
        self.algorithm = self.registry.get("algo", name).cls(run, run.config)
        # A critic or value head the algorithm built on the CPU goes to the job's device.
        place(self.algorithm, self.device or run.device)
        # placement.<model>=<device>: the reference, reward model or critic elsewhere (off: none).
        apply_placement(run, self.algorithm, check_placement(self.cfg.get("placement") or {}))
        models = placed_models(run, self.algorithm)  # reference, critic, reward model
        # A Job built from Python with a partial config (the benchmarks do) has no model node.
        apply_model_options(models, self.cfg.get("model") or {}, trained=("critic",))
        return {f"algorithm:{name}": self.algorithm, "core:default-score": DefaultScore()}

    def _register(self, plugins: dict[str, Any]) -> None:
        for name, plugin in plugins.items():
            self.registry.pm.register(plugin, name=name)
        self.plugins.update(plugins)

    def close(self) -> None:
        """Unregister the job's plugins and stop counting FLOPs."""
        for name in self.plugins:
            self.registry.pm.unregister(name=name)
        self.plugins = {}
        if self.run is not None:
            self.run.flops.close()

    def train(self) -> dict[str, Any]:
        """The loop, from the start or from the checkpoint, and the final evaluation; returns the
        summary (the observers get it at the run's end, a failed one too, then re-raised)."""
        run, cfg = self.run, self.cfg
        summary = self._summary()
        try:
            trains = getattr(self.algorithm, "trains", True)
            _check_run_hooks(self.registry.pm, f"algorithm:{cfg.algo.name}", trains)
            pruner = trial_pruner(cfg, self.output_dir) if cfg.optimized_metric else None
            result = run_loop(run, self.algorithm, self.resume_from, pruner)
            summary.update(result["final"])
            if result.get("pruned_at") is not None:
                # A search's trial stopped early (prune.pruner): its final evaluation is where
                # it stopped, and the best-trial writer never picks it.
                summary["tuning/pruned_at"] = result["pruned_at"]
            summary.update(self.reward.final_metrics(run))  # e.g. the policy read as a reward model
            summary["initial"] = result["initial"]
            # Rank 0 exports while the others wait on the waiting group (see distributed).
            model_dir = distributed.decided_on_main(
                lambda: str(export_policy(run, self.output_dir / "model"))
            )
            if distributed.is_main_process():
                summary["model_dir"] = model_dir
            summary["status"] = "finished"
            if distributed.world_size() > 1:  # every rank's passes (as the budget counts them)
                summary["flops_by_model"] = distributed.sum_values(dict(run.flops.by_model))
        except BaseException as exc:
            summary["status"] = "interrupted" if isinstance(exc, Interrupted) else "failed"
            summary["error"] = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            summary.update(run.budget.metrics())
            summary["steps"] = run.step
            summary["wall_time"] = time.perf_counter() - self.started
            summary.setdefault("flops_by_model", dict(run.flops.by_model))
            try:
                self.registry.pm.hook.alignbench_on_run_end(run=run, summary=summary)
            finally:
                self.close()
        return summary

    def _summary(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "status": "running",
            "algorithm": cfg.algo.name,
            "task": cfg.task.name,
            "reward": cfg.reward.name,
            "seed": cfg.seed,
            "world": cfg.world,
            "fingerprint": self.fingerprint,
            # The contents hashes of the files and folders it read (model.name_or_path, task.path,
            # a model folder, ...), so that other contents behind the same names are named.
            **({"inputs": self.inputs} if self.inputs else {}),
            # What the compare report shows for this task by default (Task.headline_metrics).
            "headline_metrics": list(self.task.headline_metrics),
            "code": self.code,
            # What produced these numbers: the code and the libraries.
            "git_commit": git_commit(),
            "versions": library_versions(),
            "output_dir": str(self.output_dir),
            **self.stages,
        }


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
