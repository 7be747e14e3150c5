"""The run loop: rollout, score and update through the hooks until the budget is spent."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from alignbench.budget import StepTimer
from alignbench.config import to_object
from alignbench.errors import DataError
from alignbench.evaluation import evaluate
from alignbench.run import Run


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


def batch_statistics(batch: Any, task: Any = None) -> dict[str, float]:
    """Reward and length statistics of the policy's own samples (all sequences if none are)."""
    policy = [i for i, s in enumerate(batch.sources) if s == "policy"] or list(
        range(len(batch.sources))
    )
    index = torch.tensor(policy)
    stats: dict[str, float] = {}
    if batch.rewards is not None:
        rewards = batch.rewards[index].float()
        stats["objective/reward"] = float(rewards.mean())
        stats["objective/reward_std"] = float(rewards.std()) if len(policy) > 1 else 0.0
    stats["policy/response_length"] = float(batch.response_mask[index].sum(-1).float().mean())
    if task is not None:
        rows = batch.rows
        gold = [task.gold_utility(rows[i], batch.responses[i]) for i in policy]
        if gold and None not in gold:
            stats["objective/gold_reward"] = sum(gold) / len(gold)
    return stats


def run_eval(run: Run, step: int) -> dict[str, float]:
    """Evaluate the policy (not charged to the budget) and tell the observers."""
    with run.flops.paused():
        metrics = evaluate(run.policy, run.tokenizer, run.task, run.reward, to_object(run.cfg.eval))
    metrics.update(run.budget.metrics())
    run.pm.hook.alignbench_on_eval(run=run, step=step, metrics=metrics)
    return metrics


def run_loop(run: Run) -> dict[str, Any]:
    """Train until the budget is spent; returns the initial and final evaluation metrics."""
    hook = run.pm.hook
    stream = PromptStream(
        run.task.splits[run.config.prompt_split], run.config.prompts_per_step, run.cfg.seed
    )
    initial = run_eval(run, 0)
    rounds, refreshed = run.reward.rounds, 0
    while not run.budget.exhausted:
        prompts = stream.next()
        refresh_stats: dict[str, float] = {}
        with StepTimer() as timer:
            if refreshed < rounds and run.budget.fraction >= (refreshed + 1) / (rounds + 1):
                # Online feedback: part of the step's cost, charged like everything else.
                refresh_stats = run.reward.refresh(run)
                refreshed += 1
            batch = hook.alignbench_rollout(run=run, prompts=prompts)
            batch = hook.alignbench_score(run=run, batch=batch)
            stats = hook.alignbench_update(run=run, batch=batch)
        run.step += 1
        run.budget.charge(
            steps=1,
            samples=batch.num_sequences,
            tokens=batch.num_response_tokens,
            # Everything counted since the last charge (evaluation is paused, so never counted).
            flops=run.flops.total - run.budget.spent["flops"],
            seconds=timer.seconds,
        )
        metrics = {
            **batch_statistics(batch, run.task),
            **refresh_stats,
            **(stats or {}),
            **run.budget.metrics(),
        }
        # Per-model FLOPs, so a comparison shows where each algorithm's compute went.
        metrics.update({f"flops/{name}": value for name, value in run.flops.by_model.items()})
        bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"step {run.step}: non-finite {', '.join(bad)}")
        hook.alignbench_on_step_end(run=run, step=run.step, metrics=metrics)
        if run.cfg.eval_every and run.step % run.cfg.eval_every == 0 and not run.budget.exhausted:
            run_eval(run, run.step)
    final = run_eval(run, run.step)
    return {"initial": initial, "final": final}
