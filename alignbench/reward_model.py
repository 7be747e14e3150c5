"""Stage 2: a reward model trained from ranked groups of responses, cached like stage 1.

Groups of K responses are produced from a policy (sampling or beam search), a selection strategy
decides which are worth labelling under the label budget, a feedback source ranks them, and a
scalar-head model learns to respect the rankings with ``ops.ranking_rm_loss`` over every
ordered pair of each group. A share of the groups is held out to report pairwise accuracy
against the labels (noisy) and against the task's gold utility (the truth).
"""

from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignbench import ops
from alignbench.batch import Batch, collate, encode_responses
from alignbench.budget import FlopCounter
from alignbench.config import Decoding, FeedbackConfig, RMStageConfig, Selection, to_object
from alignbench.errors import DataError
from alignbench.feedback import FeedbackSource, Group, pairwise_agreement
from alignbench.models import ScalarHeadModel, build_model, freeze, load_pretrained, position_ids
from alignbench.sampling import SamplingParams, sample
from alignbench.stages import cached_stage, config_hash
from alignbench.task import Task

log = logging.getLogger(__name__)

#: Bump when this stage's code changes what it produces.
RM_STAGE_VERSION = 2


# -- producing groups ----------------------------------------------------------------------------


@torch.no_grad()
def beam_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[dict[str, Any]],
    k: int,
    max_new_tokens: int,
) -> list[list[str]]:
    """The K best beams for each row (beam search through ``generate``)."""
    batch = collate(tokenizer, rows, [[]] * len(rows), 1, ["prompt"] * len(rows))
    prompt_ids = batch.input_ids[:, : batch.prompt_length]
    mask = batch.attention_mask[:, : batch.prompt_length]
    out = model.generate(
        input_ids=prompt_ids,
        attention_mask=mask,
        num_beams=k,
        num_return_sequences=k,
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    texts = tokenizer.batch_decode(out[:, batch.prompt_length :], skip_special_tokens=True)
    return [[t.strip() for t in texts[i * k : (i + 1) * k]] for i in range(len(rows))]


def generate_groups(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    rows: list[dict[str, Any]],
    fb: FeedbackConfig,
    generator: torch.Generator,
) -> list[Group]:
    """K responses per row from ``model`` (sampled or beams), with their gold utilities."""
    model.eval()
    if fb.decoding == Decoding.beam:
        texts = beam_responses(model, tokenizer, rows, fb.k, fb.max_new_tokens)
    else:
        params = SamplingParams(max_new_tokens=fb.max_new_tokens, temperature=fb.temperature)
        sampled = sample(model, tokenizer, rows, fb.k, params, generator).responses
        texts = [sampled[i * fb.k : (i + 1) * fb.k] for i in range(len(rows))]
    groups = []
    for row, responses in zip(rows, texts, strict=True):
        gold = [task.gold_utility(row, r) for r in responses]
        groups.append(Group(row, responses, None if None in gold else gold))
    return groups


# -- the reward model ----------------------------------------------------------------------------


def group_batch(
    tokenizer: PreTrainedTokenizerBase, groups: list[Group]
) -> tuple[Batch, torch.Tensor]:
    """The groups as one Batch (padded to the largest K) and their preferences ``[B, K]``.

    Padding responses get a NaN preference, so they take part in no pair.
    """
    k = max(len(g.responses) for g in groups)
    responses, preference = [], torch.full((len(groups), k), float("nan"))
    for b, g in enumerate(groups):
        padded = g.responses + [""] * (k - len(g.responses))
        responses += padded
        if g.preference is not None:
            preference[b, : len(g.preference)] = torch.tensor(g.preference)
    ids = encode_responses(tokenizer, responses)
    batch = collate(tokenizer, [g.row for g in groups], ids, k, ["feedback"] * len(responses))
    return batch, preference


def sequence_rewards(
    model: ScalarHeadModel, input_ids: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """The reward model's score ``[N]`` of each sequence: its scalar at the last real token."""
    values = model(input_ids, mask)
    last = mask.shape[1] - 1 - mask.flip(1).argmax(1)
    return values[torch.arange(len(last)), last]


def train_reward_model(
    model: ScalarHeadModel,
    tokenizer: PreTrainedTokenizerBase,
    groups: list[Group],
    cfg: RMStageConfig,
    epochs: int | None = None,
) -> dict[str, float]:
    """Fit ``model`` to the groups' rankings with the pairwise Bradley-Terry loss."""
    labelled = [g for g in groups if g.preference is not None]
    if not labelled:
        raise DataError("no labelled group to train the reward model on — raise feedback.labels")
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    losses = []
    for _ in range(epochs if epochs is not None else cfg.epochs):
        order = rng.permutation(len(labelled))
        for start in range(0, len(labelled), cfg.batch_size):
            chunk = [labelled[i] for i in order[start : start + cfg.batch_size]]
            batch, preference = group_batch(tokenizer, chunk)
            scores = sequence_rewards(model, batch.input_ids, batch.attention_mask)
            loss = ops.ranking_rm_loss(batch.grouped(scores), preference)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
    model.eval()
    return {"final_loss": float(np.mean(losses[-max(1, len(losses) // 10) :])) if losses else 0.0}


@torch.no_grad()
def score_groups(
    model: ScalarHeadModel, tokenizer: PreTrainedTokenizerBase, groups: list[Group]
) -> list[list[float]]:
    """The reward model's score of every response of every group."""
    out = []
    for start in range(0, len(groups), 64):
        chunk = groups[start : start + 64]
        batch, _ = group_batch(tokenizer, chunk)
        scores = batch.grouped(sequence_rewards(model, batch.input_ids, batch.attention_mask))
        out += [row[: len(g.responses)].tolist() for row, g in zip(scores, chunk, strict=True)]
    return out


def ranking_accuracy(scores: list[list[float]], groups: list[Group]) -> dict[str, float]:
    """Pairwise accuracy of ``scores`` against the labels and against the gold utility."""
    labelled = [(s, g) for s, g in zip(scores, groups, strict=True) if g.preference is not None]
    golden = [(s, g) for s, g in zip(scores, groups, strict=True) if g.gold is not None]
    out = {}
    if labelled:
        out["accuracy_labels"] = pairwise_agreement(
            [s for s, _ in labelled], [g.preference for _, g in labelled]
        )
    if golden:
        out["accuracy_gold"] = pairwise_agreement(
            [s for s, _ in golden], [g.gold for _, g in golden]
        )
    return {k: v for k, v in out.items() if not math.isnan(v)}


def probe_accuracy(
    model: ScalarHeadModel, tokenizer: PreTrainedTokenizerBase, task: Task
) -> float | None:
    """Gold pairwise accuracy on the task's probe responses to its held-out evaluation questions.

    Groups of sampled responses are mostly gold ties (every sample right, or every one wrong), so
    they order few pairs; probes (for facts: right answer, abstention, wrong answer) order every
    pair, on questions no label was collected for.
    """
    groups = []
    for split in task.eval_sets.values():
        for row in task.splits[split].to_list():
            responses = task.probe_responses(row)
            gold = [task.gold_utility(row, r) for r in responses]
            if len(responses) >= 2 and None not in gold:
                groups.append(Group(row, responses, gold))
    if not groups:
        return None
    return ranking_accuracy(score_groups(model, tokenizer, groups), groups).get("accuracy_gold")


# -- choosing what to label ----------------------------------------------------------------------


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
        mask = batch.attention_mask
        hidden = model.trunk(
            input_ids=batch.input_ids, attention_mask=mask, position_ids=position_ids(mask)
        ).last_hidden_state
        mean = (hidden * mask[..., None]).sum((0, 1)) / mask.sum()
        vectors.append(torch.nn.functional.normalize(mean, dim=0).numpy())
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


def label_groups(
    pool: list[Group],
    source: FeedbackSource,
    fb: FeedbackConfig,
    rm_cfg: RMStageConfig,
    make_model: Any,
    tokenizer: PreTrainedTokenizerBase,
    rng: np.random.Generator,
) -> list[Group]:
    """Choose ``fb.labels`` groups of the pool by ``fb.selection``; the source ranks them."""
    budget = min(fb.labels, len(pool))

    def ask(groups: list[Group]) -> list[Group]:
        for group, preference in zip(groups, source.rank(groups, rng), strict=True):
            group.preference = preference
        return groups

    if fb.selection == Selection.random:
        return ask(pool[:budget])
    if fb.selection == Selection.diversity:
        chosen = _k_center(_embeddings(make_model(), tokenizer, pool), budget, rng)
        return ask([pool[i] for i in chosen])
    # Uncertainty: a quarter of the budget at random, a reward model on it, then its doubts.
    seed_count = max(2, budget // 4)
    seed, rest = ask(pool[:seed_count]), pool[seed_count:]
    probe = make_model()
    train_reward_model(probe, tokenizer, seed, rm_cfg, epochs=max(1, rm_cfg.epochs // 2))
    confidence = [_confidence(s) for s in score_groups(probe, tokenizer, rest)]
    doubtful = [rest[i] for i in np.argsort(confidence)[: budget - seed_count]]
    return seed + ask(doubtful)


# -- the stage -----------------------------------------------------------------------------------


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
) -> list[Group]:
    """Labelled groups: the source's own, or sampled from ``policy`` and selected for labelling."""
    own = source.load_groups()
    if own is not None:
        return own
    prompts = task.splits["rl"].to_list()
    size = min(
        len(prompts), fb.labels * (1 if fb.selection == Selection.random else fb.pool_factor)
    )
    rows = [prompts[i] for i in rng.permutation(len(prompts))[:size]]
    pool = generate_groups(policy, tokenizer, task, rows, fb, generator)
    groups = label_groups(pool, source, fb, rm_cfg, make_model, tokenizer, rng)
    return [g for g in groups if g.preference is not None]


def _save_groups(path: Path, groups: list[Group]) -> None:
    with open(path, "w") as f:
        for g in groups:
            f.write(
                json.dumps(
                    {
                        "row": g.row,
                        "responses": g.responses,
                        "gold": g.gold,
                        "preference": g.preference,
                    }
                )
                + "\n"
            )


def load_groups(path: Path) -> list[Group]:
    """Groups saved by the stage (its held-out set, for measuring other scorers)."""
    groups = []
    for line in path.read_text().splitlines():
        item = json.loads(line)
        groups.append(Group(item["row"], item["responses"], item["gold"], item["preference"]))
    return groups


def new_reward_model(
    sft_path: Path, cfg: DictConfig, tokenizer: PreTrainedTokenizerBase
) -> ScalarHeadModel:
    """An untrained reward model: the SFT trunk (``stage.rm.init=sft``) or a fresh one (scratch)."""
    torch.manual_seed(cfg.stage.rm.seed)
    if cfg.stage.rm.init == "scratch":
        return ScalarHeadModel(build_model(to_object(cfg.model), tokenizer))
    return ScalarHeadModel(load_pretrained(sft_path)[0])


def load_reward_model(path: Path, sft_path: Path) -> ScalarHeadModel:
    """A frozen trained reward model from the stage's cache folder."""
    model = ScalarHeadModel(load_pretrained(sft_path)[0])
    model.load_state_dict(load_file(path / "model.safetensors"))
    return freeze(model)


def reward_model_stage(
    cfg: DictConfig,
    task: Task,
    source: FeedbackSource,
    sft_path: Path,
    sft_key: str,
) -> tuple[Path, dict[str, Any]]:
    """The folder of the stage-2 reward model, trained unless the cache already holds it."""
    key = config_hash(sft_key, cfg.feedback, cfg.stage.rm, RM_STAGE_VERSION)

    def build(folder: Path) -> dict[str, Any]:
        fb, rm_cfg = to_object(cfg.feedback), to_object(cfg.stage.rm)
        policy, tokenizer = load_pretrained(sft_path)
        flops = FlopCounter()
        flops.track(policy, "sampler")
        rng = np.random.default_rng(fb.seed)
        generator = torch.Generator().manual_seed(fb.seed)

        def make_model() -> ScalarHeadModel:
            return flops.track(new_reward_model(sft_path, cfg, tokenizer), "reward_model")

        groups = collect_feedback(
            policy, tokenizer, task, source, fb, rm_cfg, make_model, rng, generator
        )
        order = rng.permutation(len(groups))
        held = max(1, round(len(groups) * rm_cfg.heldout_share)) if len(groups) > 1 else 0
        heldout = [groups[i] for i in order[:held]]
        train = [groups[i] for i in order[held:]]
        model = make_model()
        stats = train_reward_model(model, tokenizer, train, rm_cfg)
        accuracy = ranking_accuracy(score_groups(model, tokenizer, heldout), heldout)
        golden = [g for g in groups if g.gold is not None]
        label_accuracy = ranking_accuracy([g.preference for g in golden], golden)
        flops.close()
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()},
            folder / "model.safetensors",
        )
        _save_groups(folder / "heldout.jsonl", heldout)
        _save_groups(folder / "train.jsonl", train)
        return {
            "groups": len(groups),
            "train_groups": len(train),
            "heldout_groups": len(heldout),
            "flops": flops.total,
            "heldout_accuracy_labels": accuracy.get("accuracy_labels"),
            "heldout_accuracy_gold": accuracy.get("accuracy_gold"),
            "probe_accuracy_gold": probe_accuracy(model, tokenizer, task),
            # How good the labels themselves are, over all groups (what a reward model learns from).
            "labels_accuracy_gold": label_accuracy.get("accuracy_gold"),
            **stats,
        }

    return cached_stage(cfg.cache_dir, "rm", key, build)


def refresh_reward_model(
    model: ScalarHeadModel,
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    source: FeedbackSource,
    fb: FeedbackConfig,
    rm_cfg: RMStageConfig,
    groups: list[Group],
    rng: np.random.Generator,
    generator: torch.Generator,
) -> dict[str, float]:
    """Online feedback: rank fresh groups from the current policy; train on all groups so far."""
    fresh = collect_feedback(
        policy, tokenizer, task, source, fb, rm_cfg, lambda: copy.deepcopy(model), rng, generator
    )
    groups.extend(fresh)
    model.requires_grad_(True)
    stats = train_reward_model(model, tokenizer, groups, rm_cfg, epochs=max(1, rm_cfg.epochs // 4))
    freeze(model)
    return {"feedback/groups": float(len(groups)), "feedback/rm_loss": stats["final_loss"]}
