"""The hooks of alignbench: the whole plugin API in one module.

Three kinds of hooks, in the order a run calls them:

* **Registration** (once, at start-up; every plugin may answer): hand the core a class and its
  config dataclass through the ``register`` callback. The hook itself does no work.
* **Per step** (``firstresult``): ``rollout`` → ``score`` → ``update``, answered by the one
  algorithm instance registered for the run (the core asserts there is exactly one).
* **Observers** (every implementer is called): step ends, evaluations, the end of the run.
* **Inference engine** (``firstresult``, optional, one plugin at most): ``generate`` answers
  :meth:`alignbench.Run.sample`'s decoding with an external engine (vLLM, ...).

Implement a hook with ``@alignbench.hookimpl`` on a function of a module or a method of an
object, with the same name and any subset of the arguments. ``docs/plugins.md`` is the guide.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import torch

    from alignbench.batch import Batch
    from alignbench.run import Run
    from alignbench.sampling import SamplingParams

PROJECT = "alignbench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: ``register(name, cls, config_cls)``: ``name`` is what the user types (``algo=<name>``), ``cls``
#: the class the core instantiates, ``config_cls`` a dataclass subclassing the group's base config.
Register = Callable[[str, type, type], None]


# ---------------------------------------------------------------------------------------------
# Registration hooks: called once when the plugin manager is built, before Hydra composes the
# config, so that every registered name is a selectable config group option.
# ---------------------------------------------------------------------------------------------


@hookspec
def alignbench_register_algorithms(register: Register) -> None:
    """Register algorithms: call ``register(name, AlgorithmClass, AlgorithmConfigSubclass)``.

    Called once at start-up. The core stores the config dataclass as ``algo/<name>`` so
    ``algo=<name>`` works without YAML, and for a run instantiates
    ``AlgorithmClass(run, config)``; that instance answers the per-step hooks. Returns nothing.
    """


@hookspec
def alignbench_register_rewards(register: Register) -> None:
    """Register rewards: call ``register(name, RewardClass, RewardConfigSubclass)``.

    Called once at start-up. For a run the core instantiates ``RewardClass(config, task)``, a
    callable ``(rows, responses) -> Tensor[N]`` giving one scalar reward per response. Returns
    nothing.
    """


@hookspec
def alignbench_register_tasks(register: Register) -> None:
    """Register tasks: call ``register(name, TaskClass, TaskConfigSubclass)``.

    Called once at start-up. For a run the core instantiates ``TaskClass(config)``, an
    :class:`alignbench.Task` (data splits, vocabulary, gold judge, evaluation metrics). Returns
    nothing.
    """


@hookspec
def alignbench_register_feedback(register: Register) -> None:
    """Register feedback sources: call ``register(name, SourceClass, FeedbackConfigSubclass)``.

    Called once at start-up. When a stage needs rankings (the reward model of ``reward=rm``), the
    core instantiates ``SourceClass(config, task)``, an :class:`alignbench.FeedbackSource` that
    ranks groups of K responses (or brings its own ranked groups). Returns nothing.
    """


# ---------------------------------------------------------------------------------------------
# Per-step hooks: firstresult, answered by the run's algorithm instance. The core registers one
# instance of the chosen algorithm for the run and refuses to start if another plugin also
# implements rollout or update (or a second plugin overrides score).
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def alignbench_rollout(run: Run, prompts: list[dict[str, Any]]) -> Batch:
    """Produce the step's sequences: called once per step with the prompts drawn for it.

    ``prompts`` are rows of the task split named by ``algo.prompt_split``
    (``algo.prompts_per_step`` of them). Return a :class:`alignbench.Batch` of K sequences per
    prompt (sampled with ``run.sample``, or demonstrations and other sources via
    ``run.collate``). Sampling happens under ``torch.no_grad``.
    """


@hookspec(firstresult=True)
def alignbench_score(run: Run, batch: Batch) -> Batch:
    """Attach rewards to the step's batch: called once per step, after rollout.

    Returns the batch with ``batch.rewards`` (one scalar per sequence) and any per-token shaping
    the algorithm needs in ``batch.extras``. The core's default (``trylast``) calls the configured
    reward; an algorithm overrides it when it needs more (for example PPO's KL shaping).
    """


@hookspec(firstresult=True)
def alignbench_update(run: Run, batch: Batch) -> dict[str, float]:
    """Optimise: called once per step with the scored batch; returns the step's statistics.

    Runs the algorithm's optimisation step(s) on ``run.policy`` (and any other trained model).
    Return a flat ``{metric name: float}`` dict named the TRL way (``loss/…``, ``objective/…``,
    ``policy/…``); the core adds the ``budget/…`` keys and hands it to the observers.
    """


@hookspec(firstresult=True)
def alignbench_respond(run: Run, rows: list[dict[str, Any]]) -> list[str] | None:
    """Answer evaluation questions: called for each eval set at every evaluation but step 0.

    Optional, answered by the algorithm alone (an inference-time method such as best-of-N).
    ``rows`` are the eval split's rows; return one response text per row, in order. Without an
    implementation the core decodes ``run.policy`` greedily. The FLOPs spent here are measured
    (``<prefix>/flops_per_question``), never charged to the training budget. On several
    processes (a ``data_parallel`` algorithm) it is called on every rank with the same ``rows``:
    answer ``distributed.shard(rows)`` and return every rank's answers
    (``distributed.gather``), in order; the FLOPs of every rank are counted.
    """


# ---------------------------------------------------------------------------------------------
# Inference-engine hook: firstresult, optional, implemented by at most one plugin module (the
# core refuses two at start-up). Without it the built-in sampler decodes, as if it did not exist.
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def alignbench_generate(
    run: Run,
    model: torch.nn.Module,
    prompt_ids: list[list[int]],
    num_samples: int,
    params: SamplingParams,
    source: str,
) -> list[list[int]] | None:
    """Decode with an external inference engine: called by every ``run.sample`` (single-turn).

    ``prompt_ids`` are the token ids of each prompt row (chat template applied, unpadded);
    return ``num_samples`` response token-id lists per prompt, prompt-major (``len(prompt_ids)
    * num_samples`` lists), each ending at its first id of ``alignbench.eos_ids(model,
    run.tokenizer)`` or at ``params.max_new_tokens`` tokens, with no eos before
    ``params.min_new_tokens``; sample with ``params`` (``greedy``, ``temperature``, ``top_k``,
    ``top_p``). Return None to let the built-in sampler decode. The core builds the Batch, with
    log-probs from ``model``'s own forward, and charges the budget what the built-in sampler
    would have spent on the same tokens; a wrong answer is one PluginError naming the plugin.
    ``model`` is the live model being sampled (``run.policy`` changes every step): the engine
    must load its current weights before generating, or it samples a stale policy. The engine's
    own random state is outside ``seed=``. Not called on a multi-turn task (refused at start-up).
    """


@hookspec
def alignbench_engine_check(device: str) -> None:
    """Before anything is built (no folder, no stage), for a job an ``alignbench_generate``
    engine will serve: raise :class:`alignbench.PluginError` (or ``ConfigError``) in one line
    naming what the engine lacks (its package, a GPU for ``device``, the job's ``device=``
    value), instead of failing at the first rollout after stage 1 has trained. Called on every
    implementer; return value ignored."""


# ---------------------------------------------------------------------------------------------
# Observer hooks: every implementer is called (results writer, W&B, progress bar, user plugins).
# ---------------------------------------------------------------------------------------------


@hookspec
def alignbench_on_step_end(run: Run, step: int, metrics: dict[str, float]) -> None:
    """Observe a finished step: called after every update with the step's metrics.

    ``step`` counts from 1; ``metrics`` holds the update's statistics, the reward statistics and
    every ``budget/…`` counter spent so far. Return value ignored.
    """


@hookspec
def alignbench_on_eval(
    run: Run, step: int, metrics: dict[str, float], samples: dict[str, list[dict[str, Any]]]
) -> None:
    """Observe an evaluation: at step 0, at each of ``eval.points`` budget points, and at the end.

    ``metrics`` are keyed by the task's eval sets (for ``facts``: ``dev/…`` for tuning, ``test/…``
    for reports, ``eval_rl/…`` on RL prompts) plus the ``budget/…`` counters. ``samples`` maps
    each eval set's prefix to the completions the metrics were computed from, one dict per row:
    ``prompt``, ``response``, ``reward``, ``gold_reward``, ``verdict`` and, where the task's rows
    have them, ``kind``, ``known``, ``answer`` (the results writer saves them as
    ``completions/<prefix>_step<N>.jsonl``). Return value ignored.
    """


@hookspec
def alignbench_on_run_end(run: Run, summary: dict[str, Any]) -> None:
    """Observe the end of a run: called once with the summary written to ``summary.json``.

    Called also when the run fails (``summary["status"] == "failed"``), so observers can close
    their files and W&B runs. Return value ignored.
    """
