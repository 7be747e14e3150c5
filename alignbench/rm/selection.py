"""Choosing what to label (active learning) and collecting labelled groups from a source.

Under a label budget, ``feedback.selection`` decides which candidate groups a feedback source is
asked to rank: the first ones (``random``: the pool is already shuffled), those spread widest over
the prompts (``diversity``: greedy k-center on the trunk's embeddings), or those the current
reward model is least sure of (``uncertainty``).

What an active selection runs is compute like any other, charged to the FLOP counter it is given
(``flops``) under the reward model's name: the uncertainty probe's training and scoring (a
reward model, 2N per token forward and 4N backward) and diversity's embeddings (the trunk's
forward, 2N per token without the head). Random selection runs no model.
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from alignbench.budget import FlopCounter
from alignbench.config import FeedbackConfig, RMStageConfig, Selection
from alignbench.errors import ConfigError, PluginError
from alignbench.hardware import model_device
from alignbench.models import ScalarHeadModel, position_ids
from alignbench.rm.feedback import FeedbackSource, Group
from alignbench.rm.groups import check_vocabulary, generate_groups, group_batch
from alignbench.rm.training import score_groups, train_reward_model
from alignbench.task import Task

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


#: The counter's name for what selection runs: the probe is a reward model, the embeddings its
#: trunk's (the same name on every process, so per-model FLOPs sum over ranks).
CHARGED_AS = "reward_model"


def _confidence(scores: list[float]) -> float:
    """How sure the model is of a group's order: mean |sigmoid(s_i - s_j) - 1/2| over pairs."""
    s = np.asarray(scores)
    probs = 1.0 / (1.0 + np.exp(-(s[:, None] - s[None, :])))
    upper = np.triu_indices(len(s), k=1)
    return float(np.abs(probs[upper] - 0.5).mean()) if len(upper[0]) else 1.0


@torch.no_grad()
def _embeddings(
    model: ScalarHeadModel, tokenizer: PreTrainedTokenizerBase, groups: list[Group]
) -> np.ndarray:
    """A vector per group: the trunk's mean hidden state over the group's sequences."""
    vectors = []
    for g in groups:
        batch, _ = group_batch(tokenizer, [g])
        batch = batch.to(model_device(model))  # the stage's device (a no-op on the CPU)
        mask = batch.attention_mask
        hidden = model.trunk(
            input_ids=batch.input_ids, attention_mask=mask, position_ids=position_ids(mask)
        ).last_hidden_state
        mean = (hidden.float() * mask[..., None]).sum((0, 1)) / mask.sum()  # fp32 under autocast
        vectors.append(torch.nn.functional.normalize(mean, dim=0).cpu().numpy())
    return np.stack(vectors)


def _k_center(vectors: np.ndarray, count: int, rng: np.random.Generator) -> list[int]:
    """Greedy k-center: repeatedly take the group farthest from everything chosen so far."""
    chosen = [int(rng.integers(len(vectors)))]
    distance = np.linalg.norm(vectors - vectors[chosen[0]], axis=1)
    while len(chosen) < min(count, len(vectors)):
        pick = int(distance.argmax())
        chosen.append(pick)
        distance = np.minimum(distance, np.linalg.norm(vectors - vectors[pick], axis=1))
    return chosen


def checked_ranks(
    source: FeedbackSource, groups: list[Group], rng: np.random.Generator
) -> list[list[float] | None]:
    """``source.rank(groups, rng)``, checked: one preference vector (or None) per group, one
    finite number per response; else one line naming the source and the first bad group."""
    return checked_preferences(source, groups, source.rank(groups, rng), "rank")


def checked_preferences(
    source: FeedbackSource, groups: list[Group], ranks: Any, method: str
) -> list[list[float] | None]:
    """``ranks`` (what ``source.<method>`` gave for ``groups``) if it holds one preference vector
    (or None) per group, one finite number per response; else one line naming the source."""
    name = type(source).__name__
    if not isinstance(ranks, list) or len(ranks) != len(groups):
        size = len(ranks) if isinstance(ranks, list) else type(ranks).__name__
        raise PluginError(
            f"feedback source {name}: {method} gave {size} for {len(groups)} groups — it returns "
            "one preference vector (or None) per group, in order"
        )
    for i, (group, preference) in enumerate(zip(groups, ranks, strict=True)):
        if preference is None:
            continue
        values = list(preference) if isinstance(preference, list | tuple | np.ndarray) else None
        if values is None or len(values) != len(group.responses):
            raise PluginError(
                f"feedback source {name}: group {i} has {len(group.responses)} responses but "
                f"its preference is {preference!r} — one number per response (higher = better)"
            )
        if not all(
            isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_) and math.isfinite(v)
            for v in values
        ):
            raise PluginError(
                f"feedback source {name}: group {i}'s preference {values} holds a value that is "
                "not a finite number"
            )
    return ranks


def label_groups(
    pool: list[Group],
    source: FeedbackSource | None,
    fb: FeedbackConfig,
    rm_cfg: RMStageConfig,
    make_model: Any,
    tokenizer: PreTrainedTokenizerBase,
    rng: np.random.Generator,
    flops: FlopCounter | None = None,
) -> list[Group]:
    """Choose ``fb.labels`` groups of the pool by ``fb.selection``; the source ranks them
    (``source=None``: chosen only, left unlabelled, for a deferred source to label later).

    ``make_model`` gives a reward model of its own (not tracked by any counter); the passes the
    selection runs on it are charged to ``flops`` as ``reward_model`` (None: not charged)."""
    budget = min(fb.labels, len(pool))

    def charged(model: torch.nn.Module) -> torch.nn.Module:
        return flops.track(model, CHARGED_AS) if flops is not None else model

    def ask(groups: list[Group]) -> list[Group]:
        if source is None:
            return groups
        for group, preference in zip(groups, checked_ranks(source, groups, rng), strict=True):
            group.preference = preference
        return groups

    if fb.selection == Selection.random:
        return ask(pool[:budget])
    if fb.selection == Selection.diversity:
        model = make_model()
        # The embeddings are the trunk's forward alone (no head): it is the part charged.
        charged(model.trunk)
        chosen = _k_center(_embeddings(model, tokenizer, pool), budget, rng)
        return ask([pool[i] for i in chosen])
    if source is None:  # validation refuses this first (the page source's config)
        raise ConfigError(
            "feedback.selection=uncertainty needs labels while choosing groups — use random or "
            "diversity with a deferred feedback source"
        )
    # Uncertainty: a quarter of the budget at random, a reward model on it, then its doubts.
    seed_count = max(2, budget // 4)
    seed, rest = ask(pool[:seed_count]), pool[seed_count:]
    probe = charged(make_model())
    train_reward_model(probe, tokenizer, seed, rm_cfg, epochs=max(1, rm_cfg.epochs // 2))
    confidence = [_confidence(s) for s in score_groups(probe, tokenizer, rest)]
    doubtful = [rest[i] for i in np.argsort(confidence)[: budget - seed_count]]
    return seed + ask(doubtful)


def collect_feedback(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    source: FeedbackSource,
    fb: FeedbackConfig,
    rm_cfg: RMStageConfig,
    make_model: Any,
    rng: np.random.Generator,
    generator: torch.Generator,
    flops: FlopCounter | None = None,
) -> list[Group]:
    """Labelled groups: the source's own, or sampled from ``policy`` and selected for labelling
    (the selection's passes charged to ``flops``: :func:`label_groups`)."""
    own = source.load_groups()
    if own is not None:
        check_vocabulary(tokenizer, own)
        return own
    return choose_groups(
        policy, tokenizer, task, source, fb, rm_cfg, make_model, rng, generator, flops
    )


def candidate_groups(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    fb: FeedbackConfig,
    rng: np.random.Generator,
    generator: torch.Generator,
) -> list[Group]:
    """The pool selection chooses from: groups of ``policy``'s responses to random RL prompts
    (``feedback.labels`` of them, ``pool_factor`` times more for an active selection)."""
    prompts = task.splits["rl"].to_list()
    size = min(
        len(prompts), fb.labels * (1 if fb.selection == Selection.random else fb.pool_factor)
    )
    rows = [prompts[i] for i in rng.permutation(len(prompts))[:size]]
    return generate_groups(policy, tokenizer, task, rows, fb, generator)


def choose_groups(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    source: FeedbackSource | None,
    fb: FeedbackConfig,
    rm_cfg: RMStageConfig,
    make_model: Any,
    rng: np.random.Generator,
    generator: torch.Generator,
    flops: FlopCounter | None = None,
) -> list[Group]:
    """Groups sampled from ``policy`` and selected for labelling: ranked by ``source`` (the
    groups it left unlabelled dropped), or still unlabelled with ``source=None`` (a deferred
    source's online round: the labels come later); the selection's passes charged to
    ``flops`` (:func:`label_groups`)."""
    pool = candidate_groups(policy, tokenizer, task, fb, rng, generator)
    groups = label_groups(pool, source, fb, rm_cfg, make_model, tokenizer, rng, flops)
    return groups if source is None else [g for g in groups if g.preference is not None]
