"""Fitting a scalar-head model to ranked groups: the pairwise Bradley-Terry loss, early stopping on
held-out labels, and scoring groups with the result."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from alignbench import ops
from alignbench.config import RMStageConfig
from alignbench.errors import DataError
from alignbench.hardware import (
    active_precision,
    autocast,
    grad_scaler,
    model_device,
    scaled_step,
)
from alignbench.lora import make_trainable
from alignbench.models import ScalarHeadModel, freeze
from alignbench.rm.feedback import Group
from alignbench.rm.groups import group_batch, ordered_pairs

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def sequence_rewards(
    model: ScalarHeadModel, input_ids: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """The reward model's score ``[N]`` of each sequence: its scalar at the last real token."""
    device = model_device(model)  # texts scored at evaluation are collated on the CPU
    input_ids, mask = input_ids.to(device), mask.to(device)
    return ops.gather_last(model(input_ids, mask), mask)


def label_loss(scores: list[list[float]], groups: list[Group]) -> float:
    """Bradley-Terry loss of ``scores`` over every pair the groups' labels order (NaN if none).

    The mean of ``-log sigmoid(s_i - s_j)`` over all label-ordered pairs (i preferred to j) of
    all groups, pooled — the quantity early stopping watches on the held-out groups.
    """
    total, count = 0.0, 0
    for s, g in zip(scores, groups, strict=True):
        if g.preference is None:
            continue
        for i, p_i in enumerate(g.preference):
            for j, p_j in enumerate(g.preference):
                if p_i > p_j:
                    total += float(np.logaddexp(0.0, -(s[i] - s[j])))
                    count += 1
    return total / count if count else float("nan")


def train_reward_model(
    model: ScalarHeadModel,
    tokenizer: PreTrainedTokenizerBase,
    groups: list[Group],
    cfg: RMStageConfig,
    epochs: int | None = None,
    heldout: list[Group] | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    """Fit ``model`` to the groups' rankings with the pairwise Bradley-Terry loss.

    With ``heldout`` groups that order at least one pair and ``cfg.patience > 0``, their label
    loss is measured before training (epoch 0) and after every epoch; training stops after
    ``patience`` epochs without a lower one and the best epoch's weights are restored.

    It runs on the model's device under autocast to ``precision`` (None: the autocast around
    the call, fp32 without one); fp16 adds a loss scaler, and the stats then count the overflow
    steps it skipped (``skipped_steps``).
    """
    labelled = [g for g in groups if g.preference is not None]
    if not labelled:
        raise DataError("no labelled group to train the reward model on — raise feedback.labels")
    device = model_device(model)
    precision = precision or active_precision(device)
    scaler = grad_scaler(device, precision)
    skipped = 0
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    # foreach: one fused kernel per step instead of a loop over tensors (same numbers).
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True
    )
    watch = [g for g in heldout or [] if ordered_pairs(g.preference)]
    stopping = cfg.patience > 0 and bool(watch)
    history: list[float] = []
    best_epoch, best_state = 0, None
    if stopping:
        model.eval()
        history.append(label_loss(score_groups(model, tokenizer, watch, precision), watch))
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    losses = []
    total_epochs = epochs if epochs is not None else cfg.epochs
    epoch = 0
    parameters = list(model.parameters())
    for epoch in range(1, total_epochs + 1):
        model.train()
        order = rng.permutation(len(labelled))
        for start in range(0, len(labelled), cfg.batch_size):
            chunk = [labelled[i] for i in order[start : start + cfg.batch_size]]
            batch, preference = group_batch(tokenizer, chunk)
            with autocast(device, precision):
                scores = sequence_rewards(model, batch.input_ids, batch.attention_mask)
                # The pairwise loss in fp32 (a no-op in fp32): bf16 differences of close scores
                # would round to 0.
                scores = scores.float()
                loss = ops.ranking_rm_loss(batch.grouped(scores), preference.to(device))
            optimizer.zero_grad(set_to_none=True)
            skipped += not scaled_step(loss, optimizer, parameters, 1.0, scaler)
            losses.append(loss.item())
        if not stopping:
            continue
        model.eval()
        history.append(label_loss(score_groups(model, tokenizer, watch, precision), watch))
        if history[-1] < history[best_epoch]:
            best_epoch = epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= cfg.patience:
            break
    if stopping and best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    stats = {
        "final_loss": float(np.mean(losses[-max(1, len(losses) // 10) :])) if losses else 0.0,
        "epochs_run": epoch,
        "best_epoch": best_epoch if stopping else epoch,
        "heldout_loss_by_epoch": history,
    }
    if scaler is not None:
        stats["skipped_steps"] = skipped
    return stats


def retrain_reward_model(
    model: ScalarHeadModel,
    tokenizer: PreTrainedTokenizerBase,
    groups: list[Group],
    rm_cfg: RMStageConfig,
    precision: str | None = None,
) -> dict[str, float]:
    """Online feedback: keep training the reward model on all groups so far (a quarter of the
    stage's epochs), then freeze it again; in ``precision`` (None: the autocast around the
    call), fp16's skipped overflow steps as ``feedback/skipped_steps``. A reward model with
    online adapters trains them and its head only (the trunk's base weights never change)."""
    make_trainable(model)
    stats = train_reward_model(
        model, tokenizer, groups, rm_cfg, epochs=max(1, rm_cfg.epochs // 4), precision=precision
    )
    freeze(model)
    out = {"feedback/groups": float(len(groups)), "feedback/rm_loss": stats["final_loss"]}
    if "skipped_steps" in stats:
        out["feedback/skipped_steps"] = float(stats["skipped_steps"])
    return out


@torch.no_grad()
def score_groups(
    model: ScalarHeadModel,
    tokenizer: PreTrainedTokenizerBase,
    groups: list[Group],
    precision: str | None = None,
) -> list[list[float]]:
    """The reward model's score of every response of every group, under autocast to
    ``precision`` on the model's device (None: the autocast around the call)."""
    device = model_device(model)
    precision = precision or active_precision(device)
    out = []
    for start in range(0, len(groups), 64):
        chunk = groups[start : start + 64]
        batch, _ = group_batch(tokenizer, chunk)
        with autocast(device, precision):
            rewards = sequence_rewards(model, batch.input_ids, batch.attention_mask)
        scores = batch.grouped(rewards.float())
        out += [row[: len(g.responses)].tolist() for row, g in zip(scores, chunk, strict=True)]
    return out
