"""The run loop: rollout, score and update through the hooks until the budget is spent."""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from alignbench import checkpoint, distributed, signals
from alignbench.batch import Batch
from alignbench.budget import StepTimer
from alignbench.config import to_object
from alignbench.errors import DataError, Interrupted, NonFiniteError, PluginError
from alignbench.evaluation import evaluate
from alignbench.reward import checked_rewards
from alignbench.run import Run

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger(__name__)


#: With on_nonfinite=skip, this many non-finite batches in a row end the run with an error.
MAX_SKIPPED_IN_A_ROW = 20


class PromptStream:
    """Endless shuffled passes over a split, ``size`` rows at a time, from a seeded RNG."""

    def __init__(self, dataset: Dataset, size: int, seed: int) -> None:
        if len(dataset) == 0:
            raise DataError("the prompt split is empty — the task produced no prompts to train on")
        self.rows = dataset.to_list()
        self.size = size
        self.rng = np.random.default_rng(seed)
        self.order: list[int] = []

    def next(self) -> list[dict[str, Any]]:
        """The next ``size`` prompt rows (a new shuffled pass starts when one runs out)."""
        while len(self.order) < self.size:
            self.order += self.rng.permutation(len(self.rows)).tolist()
        picked, self.order = self.order[: self.size], self.order[self.size :]
        return [self.rows[i] for i in picked]

    def state_dict(self) -> dict[str, Any]:
        """The stream's position: its RNG state and what is left of the current pass."""
        return {"rng": self.rng.bit_generator.state, "order": list(self.order)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position."""
        self.rng.bit_generator.state = state["rng"]
        self.order = list(state["order"])


def check_rollout(batch: Any) -> Batch:
    """The rollout hook's answer must be a Batch (else one line naming what came back)."""
    if not isinstance(batch, Batch):
        raise PluginError(
            f"alignbench_rollout returned {type(batch).__name__}, not a Batch — a rollout hook "
            "returns the step's sequences (run.sample, run.demonstrations, run.join)"
        )
    return batch


def check_scored(run: Run, batch: Any) -> Batch:
    """The score hook's answer must be the batch with one reward per sequence (else one line)."""
    if not isinstance(batch, Batch):
        raise PluginError(
            f"alignbench_score returned {type(batch).__name__}, not the Batch — a score hook "
            "must set batch.rewards and return the batch"
        )
    checked_rewards(batch.rewards, batch.num_sequences, "set by the score hook")
    return batch


def check_stats(stats: Any, source: str = "alignbench_update") -> dict[str, float]:
    """A hook's statistics must be a dict of finite numbers (its metrics); NaN is an error (the
    run's on_nonfinite policy applies), anything else one line naming ``source`` and what came
    back. Checks the update hook's answer and a reward's ``before_step``."""
    if not isinstance(stats, dict):
        raise PluginError(
            f"{source} returned {type(stats).__name__} — it must return a dict of "
            "metrics (name -> number), e.g. {'loss/total': 0.3}"
        )
    for name, value in stats.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PluginError(
                f"{source} returned {name!r}: {value!r} — every metric must be a number"
            )
        if not math.isfinite(value):
            what = "update statistic" if source == "alignbench_update" else f"{source} statistic"
            raise NonFiniteError(f"{what} {name} is not finite ({value})")
    return stats


def snapshot(run: Run, algorithm: Any) -> dict[str, Any]:
    """In-memory copy of everything an update may change: the policy and the algorithm's
    trainable modules, optimisers and stateful helpers (as a checkpoint would save them)."""
    parts: dict[str, tuple[str, Any]] = {"policy": ("module", run.policy)}
    parts.update(checkpoint.stateful_parts(algorithm) if algorithm is not None else {})
    if getattr(run, "scaler", None) is not None:  # fp16: the loss scale and the skipped steps
        parts["precision"] = ("scaler", _ScalerState(run))
    return {
        name: (kind, value, copy.deepcopy(value.state_dict()))
        for name, (kind, value) in parts.items()
    }


class _ScalerState:
    """fp16's loss scaler and the run's count of skipped steps, as one state dict (what a
    checkpoint saves of them), so that a skipped batch puts them back too."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def state_dict(self) -> dict[str, Any]:
        """The scaler's state and ``skipped_steps``."""
        return {**self.run.scaler.state_dict(), "skipped_steps": self.run.skipped_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put back what :meth:`state_dict` gave."""
        state = dict(state)
        self.run.skipped_steps = int(state.pop("skipped_steps"))
        self.run.scaler.load_state_dict(state)


def restore(run: Run, algorithm: Any, saved: dict[str, Any]) -> None:
    """Put back what :func:`snapshot` copied (a skipped batch then changed nothing)."""
    for _, value, state in saved.values():
        value.load_state_dict(state)


def batch_statistics(batch: Any, task: Any = None) -> dict[str, float]:
    """Reward and length statistics of the policy's own samples (all sequences if none are);
    with several processes, of every rank's samples (their per-sequence values gathered, then
    the same formulas on all of them)."""
    policy = [i for i, s in enumerate(batch.sources) if s == "policy"] or list(
        range(len(batch.sources))
    )
    local: dict[str, list[Any]] = {
        "rewards": batch.rewards[policy].float().tolist() if batch.rewards is not None else [],
        "lengths": batch.response_mask[policy].sum(-1).float().tolist(),
        "turns": batch.turns.count[policy].float().tolist() if batch.turns is not None else [],
        "gold": [],
    }
    if task is not None:
        if batch.turns is not None:  # a conversation's truth is the whole dialogue's utility
            dialogues = batch.turns.dialogues
            local["gold"] = [task.dialogue_utility(batch.rows[i], dialogues[i]) for i in policy]
        else:
            local["gold"] = [task.gold_utility(batch.rows[i], batch.responses[i]) for i in policy]
    every = local
    if distributed.world_size() > 1:
        parts = distributed.gather(local)
        every = {key: [v for part in parts for v in part[key]] for key in local}
    stats: dict[str, float] = {}
    if batch.rewards is not None:
        rewards = torch.tensor(every["rewards"])
        stats["objective/reward"] = float(rewards.mean())
        stats["objective/reward_std"] = float(rewards.std()) if len(rewards) > 1 else 0.0
    stats["policy/response_length"] = float(torch.tensor(every["lengths"]).mean())
    if batch.turns is not None:
        stats["policy/turns"] = float(torch.tensor(every["turns"]).mean())
    gold = every["gold"]
    if gold and None not in gold:
        stats["objective/gold_reward"] = sum(gold) / len(gold)
    return stats


def run_eval(run: Run, step: int, initial: bool = False) -> dict[str, float]:
    """Evaluate the policy (not charged to the budget) and tell the observers.

    The algorithm's ``alignbench_respond`` answers, when it implements it, every evaluation but
    the ``initial`` one: that is the stage-1 model's greedy answers, every comparison's start.
    With several processes only rank 0 evaluates (the weights are the same on every rank); the
    others return no metrics. A data-parallel ``alignbench_respond`` (best-of-N) is called on
    every rank with the same questions (rank 0 hands them over), so that each can answer its
    shard; the FLOPs every rank spends answering count in ``flops_per_question``.
    """
    together = (
        distributed.world_size() > 1
        and not initial
        and bool(run.pm.hook.alignbench_respond.get_hookimpls())
    )
    # Every rank waits for rank 0's evaluation on the waiting group (an evaluation may outlast
    # NCCL's ten-minute watchdog, which the next step's all-reduce would meet), and raises its
    # error if it failed; with best-of-N the others answer their shards meanwhile.
    metrics = distributed.decided_on_main(
        lambda: _evaluate(run, step, initial, together),
        meanwhile=(lambda: _respond_with_rank_0(run)) if together else None,
    )
    return metrics if distributed.is_main_process() else {}


def _evaluate(run: Run, step: int, initial: bool, together: bool) -> dict[str, float]:
    """Rank 0's (or the one process's) evaluation: :func:`run_eval`'s work."""

    def respond(rows: list[dict[str, Any]]) -> list[str] | None:
        if not together:
            return run.pm.hook.alignbench_respond(run=run, rows=rows)
        distributed.broadcast(rows)  # the others answer these questions with rank 0
        answers = run.pm.hook.alignbench_respond(run=run, rows=rows)
        # What the others spent answering, counted with rank 0's own (inside evaluate's tally).
        for tally in distributed.gather({})[1:]:
            for name, flops in tally.items():
                run.flops.charge(name, flops)
        return answers

    samples: dict[str, list[dict[str, Any]]] = {}  # the completions behind the metrics

    try:
        with run.autocast():
            metrics = evaluate(
                run.policy,
                run.tokenizer,
                run.task,
                run.reward,
                to_object(run.cfg.eval),
                respond=None if initial else respond,
                flops=run.flops,
                samples=samples,
            )
    finally:
        if together:
            distributed.broadcast(None)  # no more questions: the others go on
    metrics.update(run.budget.metrics())
    run.pm.hook.alignbench_on_eval(run=run, step=step, metrics=metrics, samples=samples)
    return metrics


def _respond_with_rank_0(run: Run) -> None:
    """On a rank but 0: answer each set of questions rank 0 hands over (``alignbench_respond``,
    which answers this rank's shard) until it hands over None; report the FLOPs spent."""
    while (rows := distributed.broadcast(None)) is not None:
        with run.flops.measured() as tally, run.autocast():
            run.pm.hook.alignbench_respond(run=run, rows=rows)
        distributed.gather(dict(tally))


class StopRequested:
    """SIGTERM / SIGINT as a flag the loop checks after each step (then checkpoints).

    The handlers come from :mod:`alignbench.signals` (the command installs them for its whole
    life; a job run from Python gets them for the loop's duration).
    """

    def __enter__(self) -> StopRequested:
        self._handled = signals.handled()
        self._handled.__enter__()
        return self

    @property
    def signal(self) -> int | None:
        """The signal that asked the run to stop, or None."""
        return signals.requested()

    def __exit__(self, *exc: object) -> None:
        self._handled.__exit__(*exc)


def run_loop(
    run: Run, algorithm: Any = None, resume_from: Path | None = None, pruner: Any = None
) -> dict[str, Any]:
    """Train until the budget is spent; returns the initial and final evaluation metrics.

    With ``resume_from`` the run continues from that checkpoint exactly where it stopped. A
    ``pruner`` (:class:`alignbench.tuning.TrialPruner`, a search's trial) may end the run at an
    intermediate evaluation; the result then says ``pruned_at`` (the evaluation point).
    """
    hook, cfg = run.pm.hook, run.cfg
    reward_name = str(getattr(getattr(run.reward, "config", None), "name", "?"))
    stream = PromptStream(
        run.task.splits[run.config.prompt_split], run.config.prompts_per_step, cfg.seed
    )
    # "evals": budget points evaluated so far (the loop state is checkpointed, so a resumed run
    # evaluates at the same points).
    state: dict[str, Any] = {"skipped": 0, "evals": 0}
    if resume_from is not None:
        state = checkpoint.load(run, algorithm, resume_from)
        stream.load_state_dict(state["stream"])
        log.info("resumed from %s at step %d", resume_from, run.step)
    else:
        state["initial"] = run_eval(run, 0, initial=True)
    # An inference-time method (best-of-N) declares `trains = False`: no step, no budget spent.
    trains = getattr(algorithm, "trains", True)

    def save() -> None:
        # Every rank takes part (its random state goes into rank 0's checkpoint); rank 0 writes.
        if algorithm is not None:
            checkpoint.save(run, algorithm, {**state, "stream": stream.state_dict()})

    with StopRequested() as stop:
        while trains and not run.budget.exhausted:
            # Every rank draws the same global prompts and keeps its shard of them.
            prompts = distributed.shard(stream.next())
            reward_stats: dict[str, float] = {}
            flops_before = run.flops.total
            try:
                with StepTimer() as timer:
                    # The reward's own business (a learned reward's online feedback rounds and
                    # delayed labels): part of the step's cost, charged like everything else.
                    reward_stats = check_stats(
                        run.reward.before_step(run), f"reward {reward_name}: before_step"
                    )
                    # precision=bf16/fp16: autocast around the hooks (weights stay fp32).
                    with run.autocast():
                        batch = check_rollout(hook.alignbench_rollout(run=run, prompts=prompts))
                        batch = check_scored(run, hook.alignbench_score(run=run, batch=batch))
                    run.check_finite(**{"objective/reward": batch.rewards})
                    # Skip mode: an update that fails half-way (PPO steps once per mini-batch)
                    # must leave no trace, so what it may change is copied first.
                    before = snapshot(run, algorithm) if cfg.on_nonfinite == "skip" else None
                    try:
                        with run.autocast():
                            stats = check_stats(hook.alignbench_update(run=run, batch=batch))
                    except NonFiniteError:
                        if before is not None:
                            restore(run, algorithm, before)
                        raise
            except NonFiniteError as exc:
                if cfg.on_nonfinite != "skip":
                    raise
                log.warning("%s — batch skipped (on_nonfinite=skip)", exc)
                state["skipped"] += 1
                state["skipped_in_a_row"] = state.get("skipped_in_a_row", 0) + 1
                run.step += 1
                run.budget.charge(steps=1, flops=run.flops.total - flops_before)
                if state["skipped_in_a_row"] >= MAX_SKIPPED_IN_A_ROW:
                    # A reward or loss that stays non-finite would otherwise loop forever on a
                    # budget that skipped batches barely spend (tokens, samples, seconds).
                    raise NonFiniteError(
                        f"{MAX_SKIPPED_IN_A_ROW} batches in a row were skipped as non-finite "
                        f"(last: {exc}) — the run cannot make progress; fix the reward or "
                        "lower the learning rate, or use on_nonfinite=stop"
                    ) from None
                if stop.signal is not None:  # a skipped batch still honours SIGTERM / Ctrl-C
                    save()
                    raise Interrupted(
                        f"stopped by signal {stop.signal} at step {run.step}; checkpoint saved — "
                        "run the same command again to resume",
                        signum=stop.signal,
                    ) from None
                continue
            state["skipped_in_a_row"] = 0
            run.step += 1
            if distributed.world_size() == 1:
                run.budget.charge(
                    steps=1,
                    samples=batch.num_sequences,
                    tokens=batch.num_response_tokens,
                    # Everything counted since the last charge (evaluation is paused: never
                    # counted).
                    flops=run.flops.total - run.budget.spent["flops"],
                    seconds=timer.seconds,
                )
            else:
                # The global batch's spending, the same on every rank (so all stop together):
                # samples, tokens and FLOPs summed over ranks, the slowest rank's seconds.
                spent = distributed.sum_values(
                    {
                        "samples": float(batch.num_sequences),
                        "tokens": float(batch.num_response_tokens),
                        "flops": float(run.flops.total - flops_before),
                    }
                )
                run.budget.charge(
                    steps=1,
                    samples=int(spent["samples"]),
                    tokens=int(spent["tokens"]),
                    flops=spent["flops"],
                    seconds=distributed.maximum(timer.seconds),
                )
            metrics = {
                **batch_statistics(batch, run.task),
                **reward_stats,
                **(stats or {}),
                **run.budget.metrics(),
                "health/skipped_batches": float(state["skipped"]),
                # fp16: the loss scale and the optimiser steps skipped on overflow (else none).
                **run.precision_metrics(),
            }
            # Per-model FLOPs, so a comparison shows where each algorithm's compute went.
            by_model = distributed.sum_values(dict(run.flops.by_model))
            metrics.update({f"flops/{name}": value for name, value in by_model.items()})
            hook.alignbench_on_step_end(run=run, step=run.step, metrics=metrics)
            # Evaluate at each of `eval.points` evenly spaced budget points (FLOPs by default),
            # the same points for every algorithm; the final evaluation comes after the loop.
            due = int(run.budget.fraction * cfg.eval.points)
            if due > state.get("evals", 0) and not run.budget.exhausted:
                evaluated = run_eval(run, run.step)
                state["evals"] = due
                if pruner is not None:
                    # Intermediate evaluations are numbered 1, 2, ... as in every trial's
                    # metrics.jsonl; rank 0 decides (the others have no metrics) for all ranks.
                    state["pruning_points"] = state.get("pruning_points", 0) + 1
                    pruned = pruner.should_prune(state["pruning_points"], evaluated)
                    if distributed.world_size() > 1:
                        pruned = bool(distributed.maximum(float(pruned)))
                    if pruned:
                        state["pruned_at"] = state["pruning_points"]
                        break
            if cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0:
                save()
            # With several processes, a signal to any rank stops them all at the same step.
            signum = stop.signal
            if distributed.world_size() > 1:
                signum = int(distributed.maximum(float(signum or 0))) or None
            if signum is not None:
                save()
                raise Interrupted(
                    f"stopped by signal {signum} at step {run.step}; checkpoint saved — "
                    "run the same command again to resume",
                    signum=signum,
                )
    final = run_eval(run, run.step)
    return {"initial": state["initial"], "final": final, "pruned_at": state.get("pruned_at")}
