"""Stage 2: a reward model trained from ranked groups of responses, cached like stage 1.

Groups of K responses are produced from a policy (sampling or beam search), a selection strategy
decides which are worth labelling under the label budget, a feedback source ranks them, and a
scalar-head model learns to respect the rankings with ``ops.ranking_rm_loss`` over every
ordered pair of each group. Declared sources add contrast to a group (the prompt's human
demonstration, the task's abstention phrase). A share of the groups is held out: the best epoch
on their labels is kept (early stopping), and pairwise accuracy is reported against the labels
(noisy) and the task's gold utility (the truth). The probe scores the model on held-out
questions beside reference scorers (always abstain, random, the gold utility itself).
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
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignbench import ops, provenance
from alignbench.batch import Batch, collate, encode_responses
from alignbench.budget import FlopCounter
from alignbench.config import Decoding, FeedbackConfig, RMStageConfig, Selection, to_object
from alignbench.errors import DataError
from alignbench.feedback import FeedbackSource, Group, pairwise_agreement
from alignbench.hardware import model_device
from alignbench.models import (
    ScalarHeadModel,
    build_model,
    freeze,
    load_pretrained,
    position_ids,
    random_like,
)
from alignbench.sampling import SamplingParams, sample
from alignbench.stages import cached_stage, config_hash
from alignbench.task import Task

log = logging.getLogger(__name__)

#: Bump when this stage's code changes what it produces.
RM_STAGE_VERSION = 3
#: Feedback keys that only matter during RL (online rounds), left out of the stage's key.
ONLINE_ONLY_KEYS = ("rounds", "delay")


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


def contrast_responses(task: Task, row: dict[str, Any], fb: FeedbackConfig) -> dict[str, str]:
    """The declared non-policy responses of a row's group: ``{source: text}``, at most K - 1.

    ``demonstration`` is the row's human demonstration (its ``response``, when non-empty);
    ``abstention`` is the task's abstention phrase (when it has one and the demonstration is not
    already that phrase). At least one policy response stays in every group.
    """
    extras: dict[str, str] = {}
    demonstration = str(row.get("response") or "").strip()
    if fb.include_demonstration and demonstration:
        extras["demonstration"] = demonstration
    if fb.include_abstention and task.abstention and demonstration != task.abstention:
        extras["abstention"] = task.abstention
    return dict(list(extras.items())[: max(0, fb.k - 1)])


def generate_groups(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    rows: list[dict[str, Any]],
    fb: FeedbackConfig,
    generator: torch.Generator,
) -> list[Group]:
    """K responses per row: policy samples (or beams), the last ones replaced by declared extras.

    Each group records where every response came from in ``extras["sources"]`` (``policy``,
    ``demonstration``, ``abstention``), so the contrast is reported, not hidden.
    """
    model.eval()
    if fb.decoding == Decoding.beam:
        texts = beam_responses(model, tokenizer, rows, fb.k, fb.max_new_tokens)
    else:
        params = SamplingParams(max_new_tokens=fb.max_new_tokens, temperature=fb.temperature)
        sampled = sample(model, tokenizer, rows, fb.k, params, generator).responses
        texts = [sampled[i * fb.k : (i + 1) * fb.k] for i in range(len(rows))]
    groups = []
    for row, policy_texts in zip(rows, texts, strict=True):
        extras = contrast_responses(task, row, fb)
        kept = len(policy_texts) - len(extras)
        responses = list(policy_texts[:kept]) + list(extras.values())
        sources = ["policy"] * kept + list(extras)
        gold = [task.gold_utility(row, r) for r in responses]
        groups.append(
            Group(row, responses, None if None in gold else gold, extras={"sources": sources})
        )
    return groups


def ordered_pairs(values: list[float] | None) -> int:
    """How many pairs of a group ``values`` orders strictly (0 for an unlabelled group)."""
    if values is None:
        return 0
    return sum(a > b for a in values for b in values)


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
    device = model_device(model)  # texts scored at evaluation are collated on the CPU
    input_ids, mask = input_ids.to(device), mask.to(device)
    values = model(input_ids, mask)
    last = mask.shape[1] - 1 - mask.flip(1).argmax(1)
    return values[torch.arange(len(last), device=device), last]


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
) -> dict[str, Any]:
    """Fit ``model`` to the groups' rankings with the pairwise Bradley-Terry loss.

    With ``heldout`` groups that order at least one pair and ``cfg.patience > 0``, their label
    loss is measured before training (epoch 0) and after every epoch; training stops after
    ``patience`` epochs without a lower one and the best epoch's weights are restored.
    """
    labelled = [g for g in groups if g.preference is not None]
    if not labelled:
        raise DataError("no labelled group to train the reward model on — raise feedback.labels")
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
        history.append(label_loss(score_groups(model, tokenizer, watch), watch))
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    losses = []
    total_epochs = epochs if epochs is not None else cfg.epochs
    epoch = 0
    for epoch in range(1, total_epochs + 1):
        model.train()
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
        if not stopping:
            continue
        model.eval()
        history.append(label_loss(score_groups(model, tokenizer, watch), watch))
        if history[-1] < history[best_epoch]:
            best_epoch = epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= cfg.patience:
            break
    if stopping and best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {
        "final_loss": float(np.mean(losses[-max(1, len(losses) // 10) :])) if losses else 0.0,
        "epochs_run": epoch,
        "best_epoch": best_epoch if stopping else epoch,
        "heldout_loss_by_epoch": history,
    }


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


def probe_groups(task: Task, exclude: set[str] | None = None) -> list[Group]:
    """The probe: the task's probe responses to each question of its ``probe_split``.

    Only held-out questions (``exclude`` drops any prompt the reward model was trained on, in
    case a source brought its own), and only the pairs :meth:`Task.probe_pairs` calls
    orderable, kept in ``extras["pairs"]``; questions without such a pair are left out.
    """
    if task.probe_split not in task.splits:
        return []
    groups = []
    for row in task.splits[task.probe_split].to_list():
        if exclude and row["prompt"] in exclude:
            continue
        responses = task.probe_responses(row)
        pairs = task.probe_pairs(row, responses) if len(responses) >= 2 else []
        if pairs:
            groups.append(Group(row, responses, extras={"pairs": pairs}))
    return groups


def pair_accuracy(scores: list[list[float]], groups: list[Group]) -> float:
    """Share of the groups' ``extras["pairs"]`` (i better than j) that ``scores`` order i > j.

    A tie counts as half right (a coin flip). NaN when there is no pair.
    """
    right, total = 0.0, 0
    for s, g in zip(scores, groups, strict=True):
        for i, j in g.extras["pairs"]:
            total += 1
            right += 1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0
    return right / total if total else float("nan")


def reference_scores(task: Task, groups: list[Group]) -> dict[str, list[list[float]]]:
    """Scores of the probe's reference scorers, to read a reward model's probe accuracy against.

    ``always_abstain`` puts the abstention phrase above everything else (all else tied);
    ``random`` scores everything equal, so every pair is a tie worth 1/2 — exactly what random
    scores achieve in expectation; ``gold`` is the gold utility itself, the ceiling (1.0).
    """
    out: dict[str, list[list[float]]] = {}
    if task.abstention:
        out["always_abstain"] = [
            [1.0 if " ".join(r.split()) == task.abstention else 0.0 for r in g.responses]
            for g in groups
        ]
    out["random"] = [[0.0] * len(g.responses) for g in groups]
    out["gold"] = [[float(task.gold_utility(g.row, r)) for r in g.responses] for g in groups]
    return out


def probe_metrics(scores: list[list[float]], groups: list[Group]) -> dict[str, float]:
    """Probe accuracy overall and, where rows say ``known``, on known and unknown questions."""
    out = {"accuracy": pair_accuracy(scores, groups)}
    for known, part in ((True, "known"), (False, "unknown")):
        picked = [
            (s, g) for s, g in zip(scores, groups, strict=True) if g.row.get("known") is known
        ]
        if picked:
            out[f"accuracy_{part}"] = pair_accuracy([s for s, _ in picked], [g for _, g in picked])
    return out


def probe_report(
    model: ScalarHeadModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    exclude: set[str] | None = None,
) -> dict[str, float]:
    """The reward model's probe accuracy, with the reference scorers' on the very same pairs.

    Keys: ``probe/accuracy`` (and ``_known`` / ``_unknown``), ``probe/<scorer>`` (and parts)
    for each reference scorer, ``probe/prompts`` and ``probe/pairs``. Empty if the task has no
    probe.
    """
    groups = probe_groups(task, exclude)
    if not groups:
        return {}
    out = {
        "probe/prompts": float(len(groups)),
        "probe/pairs": float(sum(len(g.extras["pairs"]) for g in groups)),
    }
    scored = {"": score_groups(model, tokenizer, groups), **reference_scores(task, groups)}
    for scorer, scores in scored.items():
        for key, value in probe_metrics(scores, groups).items():
            name = key if not scorer else key.replace("accuracy", scorer)
            out[f"probe/{name}"] = value
    return out


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


def check_vocabulary(tokenizer: PreTrainedTokenizerBase, groups: list[Group]) -> None:
    """Refuse groups whose words the tokenizer cannot represent (they would silently become
    ``<unk>``: "Dakar" is not "dakar" to a case-sensitive word tokenizer), naming where they are
    (``file:line`` for a file source) and the words."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return
    for group in groups:
        unknown: list[str] = []
        for text in [group.row["prompt"], *group.responses]:
            for word in text.split():
                if unk in tokenizer(word, add_special_tokens=False)["input_ids"]:
                    unknown.append(word)
        if unknown:
            where = group.extras.get("where", f"the group for {group.row['prompt']!r}")
            shown = ", ".join(repr(w) for w in dict.fromkeys(unknown))
            raise DataError(
                f"{where}: words the model's tokenizer does not know: {shown} — write them as the "
                "task does (its prompts and answers are lower case, e.g. 'i do not know')"
            )


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
        check_vocabulary(tokenizer, own)
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
                        "sources": g.extras.get("sources"),
                    }
                )
                + "\n"
            )


def load_groups(path: Path) -> list[Group]:
    """Groups saved by the stage (its held-out set, for measuring other scorers)."""
    groups = []
    for line in path.read_text().splitlines():
        item = json.loads(line)
        extras = {"sources": item["sources"]} if item.get("sources") else {}
        groups.append(
            Group(item["row"], item["responses"], item["gold"], item["preference"], extras)
        )
    return groups


def new_reward_model(
    sft_path: Path, cfg: DictConfig, tokenizer: PreTrainedTokenizerBase
) -> ScalarHeadModel:
    """An untrained reward model: the SFT trunk (``stage.rm.init=sft``) or a fresh one (scratch)."""
    torch.manual_seed(cfg.stage.rm.seed)
    if cfg.stage.rm.init == "scratch":
        if cfg.model.name_or_path:  # the same architecture as the SFT model, fresh weights
            return ScalarHeadModel(random_like(sft_path))
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
    # The SFT model's weights (as verified by stage 1), the plugins' sources and the contents of
    # their input files (a rankings file) are keyed, not only their names.
    sft_files = json.loads((sft_path / "stage.json").read_text())["provenance"]["files"]
    plugins = {"task": task, "feedback": source}
    # Online-round keys (rounds, delay) change RL, not this stage: a sweep over them shares one
    # reward model.
    feedback = OmegaConf.to_container(cfg.feedback, resolve=True, enum_to_str=True)
    key = config_hash(
        sft_key,
        {k: v for k, v in feedback.items() if k not in ONLINE_ONLY_KEYS},
        cfg.stage.rm,
        RM_STAGE_VERSION,
        sft_files,
        provenance.key_parts(plugins),
        provenance.STAGE_THREADS,
    )

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
        stats = train_reward_model(model, tokenizer, train, rm_cfg, heldout=heldout)
        accuracy = ranking_accuracy(score_groups(model, tokenizer, heldout), heldout)
        golden = [g for g in groups if g.gold is not None]
        label_accuracy = ranking_accuracy([g.preference for g in golden], golden)
        probe = probe_report(model, tokenizer, task, exclude={g.row["prompt"] for g in groups})
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
            # How good the labels themselves are, over all groups (what a reward model learns from).
            "labels_accuracy_gold": label_accuracy.get("accuracy_gold"),
            # Contrast: which declared sources entered the groups, and how many pairs they order.
            **{
                f"groups_with_{name}": sum(name in g.extras.get("sources", []) for g in groups)
                for name in ("demonstration", "abstention")
            },
            "ordered_gold_pairs": sum(ordered_pairs(g.gold) for g in groups),
            "ordered_label_pairs": sum(ordered_pairs(g.preference) for g in groups),
            **source.statistics(),
            **probe,
            **stats,
        }

    return cached_stage(
        cfg.cache_dir,
        "rm",
        key,
        build,
        sources=provenance.RM_SOURCES,
        plugins=plugins,
        rebuild=cfg.cache_rebuild,
    )


def request_feedback(
    model: ScalarHeadModel,
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    source: FeedbackSource,
    fb: FeedbackConfig,
    rm_cfg: RMStageConfig,
    rng: np.random.Generator,
    generator: torch.Generator,
) -> list[Group]:
    """Online feedback: fresh groups from the current policy, ranked by the source (not yet
    trained on: with ``feedback.delay`` they arrive later)."""
    return collect_feedback(
        policy, tokenizer, task, source, fb, rm_cfg, lambda: copy.deepcopy(model), rng, generator
    )


def retrain_reward_model(
    model: ScalarHeadModel,
    tokenizer: PreTrainedTokenizerBase,
    groups: list[Group],
    rm_cfg: RMStageConfig,
) -> dict[str, float]:
    """Online feedback: keep training the reward model on all groups so far (a quarter of the
    stage's epochs), then freeze it again."""
    model.requires_grad_(True)
    stats = train_reward_model(model, tokenizer, groups, rm_cfg, epochs=max(1, rm_cfg.epochs // 4))
    freeze(model)
    return {"feedback/groups": float(len(groups)), "feedback/rm_loss": stats["final_loss"]}


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
    fresh = request_feedback(model, policy, tokenizer, task, source, fb, rm_cfg, rng, generator)
    groups.extend(fresh)
    return retrain_reward_model(model, tokenizer, groups, rm_cfg)
